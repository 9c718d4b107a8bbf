"""Every user mistake found so far ends as one ``error: ...`` line, exit code 2, and nothing written:
output paths, disk full, out-of-range numbers, config files, MNIST files and broken plugins."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from cli_helpers import one_line_error, run_cli
from rich.console import Console

from inferkit import cli
from inferkit.errors import UserError

TINY = ["--model", "ladder", "--model-opt", "num_layers=1", "--model-opt", "latent_dims=2", "--model-opt", "nf=4",
        "--sampler", "shortrun", "--sampler-opt", "num_steps=2", "--tuner", "fixed",
        "--data-opt", "num_train=16", "--data-opt", "num_test=8", "--data-opt", "image_size=8",
        "--iterations", "2", "--batch-size", "4", "--quiet", "--train-opt", "eval_examples=4"]
EVAL_FAST = ["--num-examples", "2", "--reference-steps", "0", "--inpaint-examples", "0", "--ais-examples", "0",
             "--iwae-samples", "0", "--fd-samples", "0", "--no-figures", "--quiet"]


def refused(args, capsys) -> str:
    """The one ``error:`` line of ``inferkit ARGS`` (exit code 2, no traceback)."""
    code, _, err = run_cli(args, capsys)
    assert "Traceback" not in err
    return one_line_error(code, err)


def tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny trained run folder (shared: tests copy it when they change it)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["run", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only (mode 0o555). Root writes into it anyway, so as root ``os.access``
    also answers for it as it would for a user."""
    made = []

    def make(folder: Path) -> Path:
        folder.chmod(0o555)
        made.append(folder)
        if os.geteuid() == 0:
            real = os.access
            target = folder.resolve()

            def access(path, mode, *args, **kwargs):
                if mode & os.W_OK and Path(path).resolve() == target:
                    return False
                return real(path, mode, *args, **kwargs)

            monkeypatch.setattr(os, "access", access)
        return folder

    yield make
    for folder in made:
        folder.chmod(0o755)


def full_disk_at(path: Path) -> None:
    """Make writes to ``path``'s temporary file fail as on a full disk: ``PATH.tmp`` links to /dev/full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    path.with_name(path.name + ".tmp").symlink_to("/dev/full")


# ---- output paths -----------------------------------------------------------------------------------
def test_out_naming_an_existing_file(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    line = refused(["run", *TINY, "--out", target], capsys)
    assert "is a file" in line and target.read_text() == "keep me"


def test_out_inside_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    line = refused(["run", *TINY, "--out", tmp_path / "f" / "run"], capsys)
    assert "not a folder" in line


@pytest.mark.parametrize("existing", [False, True])
def test_out_in_a_read_only_folder(tmp_path, capsys, read_only, existing):
    parent = tmp_path / "locked"
    parent.mkdir()
    out = parent if existing else parent / "run"
    read_only(parent)
    line = refused(["run", *TINY, "--out", out], capsys)
    assert "cannot write into" in line
    assert list(parent.iterdir()) == []


def test_writable_sees_a_read_only_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may write into a folder of mode 0o555")
    tmp_path.chmod(0o555)
    try:
        assert not cli.writable(tmp_path)
    finally:
        tmp_path.chmod(0o755)
    assert cli.writable(tmp_path)


def test_output_checks_name_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "writable", lambda folder: folder != tmp_path)
    with pytest.raises(UserError, match="cannot write into"):
        cli.check_output_folder(tmp_path / "a" / "b", "--out")
    with pytest.raises(UserError, match="cannot write into"):
        cli.check_output_file(tmp_path / "x.png", "--output")
    cli.check_output_folder(tmp_path.parent / "elsewhere", "--out")


def test_eval_checks_the_run_folder_before_computing(run_copy, capsys, read_only, monkeypatch):
    import inferkit.evaluation

    def must_not_run(*args, **kwargs):
        raise AssertionError("evaluated a run whose results cannot be written")

    monkeypatch.setattr(inferkit.evaluation, "evaluate", must_not_run)
    read_only(run_copy)
    line = refused(["eval", run_copy, *EVAL_FAST], capsys)
    assert "cannot write into" in line and not (run_copy / "eval.json").exists()


def test_sample_output_in_a_missing_folder(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(["sample", trained, "--num", "4", "--output", "missing/dir/x.png"], capsys)
    assert "does not exist" in line
    assert not (tmp_path / "missing").exists()


def test_sample_output_naming_a_folder(trained, tmp_path, capsys):
    line = refused(["sample", trained, "--num", "4", "--output", tmp_path], capsys)
    assert "is a folder" in line


# ---- disk full --------------------------------------------------------------------------------------
def test_disk_full_while_writing_eval_json(run_copy, capsys):
    full_disk_at(run_copy / "eval.json")
    line = refused(["eval", run_copy, *EVAL_FAST], capsys)
    assert line.startswith(f"error: cannot write {run_copy / 'eval.json'} (No space left on device)")
    assert tmp_files(run_copy) == [] and not (run_copy / "eval.json").exists()


def test_disk_full_while_writing_samples(run_copy, capsys):
    full_disk_at(run_copy / "samples.png")
    line = refused(["sample", run_copy, "--num", "4"], capsys)
    assert "cannot write" in line and "No space left on device" in line
    assert tmp_files(run_copy) == [] and not (run_copy / "samples.png").exists()


@pytest.mark.parametrize("writer", ["save_atomic", "write_json_atomic"])
def test_disk_full_in_the_atomic_writers(tmp_path, writer):
    from inferkit import runs

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"previous")
    full_disk_at(path)
    with pytest.raises(UserError, match=r"cannot write .*checkpoint\.pt \(No space left on device\)"):
        if writer == "save_atomic":
            runs.save_atomic({"weights": list(range(100_000))}, path)
        else:
            runs.write_json_atomic(path, {"weights": list(range(100_000))})
    assert tmp_files(tmp_path) == [] and path.read_bytes() == b"previous"


# ---- numbers out of range ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra, fragment", [
    (["--seed", str(2**64 + 1)], "64-bit"),
    (["--train-opt", "learning_rate=1e308"], "learning_rate"),
    (["--sampler-opt", "num_steps=99999999999999999999"], "64-bit"),
    (["--sampler-opt", "num_steps=999999999999"], "at most 100000"),
    (["--model-opt", "nf=100000000"], "at most 1024"),
    (["--model", ""], "--model is empty"),
])
def test_run_options_out_of_range(extra, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(["run", *TINY, *extra, "--out", tmp_path / "run"], capsys)
    assert fragment in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, fragment", [
    (["--num", "99999999999"], "--num must be between 1 and"),
    (["--num", str(2**70)], "--num must be between 1 and"),
    (["--seed", str(2**64 + 1)], "--seed must fit in 64 bits"),
])
def test_sample_options_out_of_range(trained, extra, fragment, tmp_path, capsys):
    line = refused(["sample", trained, *extra, "--output", tmp_path / "s.png"], capsys)
    assert fragment in line and list(tmp_path.iterdir()) == []


def test_samples_that_cannot_be_allocated(trained, tmp_path, capsys, monkeypatch):
    from inferkit_ladder import LadderModel

    def no_memory(self, n, *, generator=None):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8000000000 bytes")

    monkeypatch.setattr(LadderModel, "sample", no_memory)
    line = refused(["sample", trained, "--num", "4096", "--output", tmp_path / "s.png"], capsys)
    assert "cannot allocate 4096 samples" in line and "lower --num" in line
    assert list(tmp_path.iterdir()) == []


# ---- config files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, fragment", [
    ('[model]\nname = 5\n', "name must be a plugin name"),
    ('[model]\nname = ""\n', "name must be a plugin name"),
    ('[model]\noptions = 3\n', "options must be a table"),
    ('[modle]\nname = "ladder"\n', "'modle' (did you mean model"),
    ('seed = 3\n', "'seed'"),
    ('train = 3\n', "train must be a table"),
    ('[model]\nname = "ladder"\nnf = 8\n', "key 'nf' in [model] is not read"),
    ('[data]\nnum_train = 8\n', "key 'num_train' in [data] is not read"),
])
def test_config_file_mistakes(text, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(text)
    line = refused(["run", "--config", config, "--out", tmp_path / "run", "--iterations", "1", "--quiet"], capsys)
    assert fragment in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_config_file_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_bytes('[model]\nname = "lädder"\n'.encode("latin-1"))
    line = refused(["run", "--config", config, "--out", tmp_path / "run"], capsys)
    assert "is not UTF-8" in line and not (tmp_path / "run").exists()


# ---- MNIST files --------------------------------------------------------------------------------------
def _mnist(folder: Path, *, dims=(10, 28, 28), labels=bytes(10)) -> Path:
    folder.mkdir()
    header = (0x00000803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    body = bytes(10 * 28 * 28) if dims == (10, 28, 28) else b""
    (folder / "t10k-images-idx3-ubyte").write_bytes(header + body)
    (folder / "t10k-labels-idx1-ubyte").write_bytes((0x00000801).to_bytes(4, "big")
                                                    + len(labels).to_bytes(4, "big") + labels)
    return folder


@pytest.mark.parametrize("damage, fragment", [
    ({"dims": (2**31, 2**31, 4)}, "truncated"),
    ({"labels": bytes(9) + b"\xff"}, "label 255"),
])
def test_bad_mnist_headers_and_labels(damage, fragment, tmp_path, capsys):
    data = _mnist(tmp_path / "mnist", **damage)
    line = refused(["run", "--model", "ladder", "--data", "mnist", "--data-dir", data, "--out", tmp_path / "run", "--quiet"], capsys)
    assert fragment in line, line
    assert not (tmp_path / "run").exists()


# ---- broken plugins ----------------------------------------------------------------------------------
def install_plugins(root: Path, monkeypatch, distribution: str, groups: dict[str, dict[str, str]]) -> None:
    """Make ``distribution`` look installed (a ``.dist-info`` on ``sys.path``) with these entry points."""
    info = root / "site" / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = []
    for group, entries in groups.items():
        lines += [f"[{group}]", *(f"{name} = {target}" for name, target in entries.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    monkeypatch.syspath_prepend(str(root / "site"))


@pytest.mark.parametrize("target, fragment", [
    ("broken_plugins:MissingMethods", "does not implement decode, log_joint, log_prior, sample_prior"),
    ("broken_plugins:RaisingConstructor", "failed to build (KeyError: 'weights')"),
    ("broken_plugins:OutOfMemory", "cannot allocate its memory"),
    ("broken_plugins:NotAPlugin", "is not an inferkit.Model"),
    ("broken_plugins:LONG_IMPORT_ERROR", "not a class"),
    ("exiting_plugin:Model", "failed to import (SystemExit: 3)"),
])
def test_broken_model_plugins(target, fragment, tmp_path, capsys, monkeypatch):
    install_plugins(tmp_path, monkeypatch, "broken-plugins", {"inferkit.models": {"broken": target}})
    line = refused(["run", "--model", "broken", "--tuner", "fixed", "--out", tmp_path / "run"], capsys)
    assert fragment in line, line
    assert not (tmp_path / "run").exists()


def test_a_sampler_that_is_not_a_sampler(tmp_path, capsys, monkeypatch):
    install_plugins(tmp_path, monkeypatch, "broken-plugins",
                    {"inferkit.samplers": {"broken": "broken_plugins:NotAPlugin"}})
    line = refused(["run", *TINY, "--sampler", "broken", "--out", tmp_path / "run"], capsys)
    assert "is not an inferkit.Sampler" in line


def test_list_survives_a_plugin_that_exits(tmp_path, capsys, monkeypatch):
    install_plugins(tmp_path, monkeypatch, "broken-plugins", {"inferkit.models": {"exits": "exiting_plugin:M"}})
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0 and "SystemExit: 3" in out and "shortrun" in out


def test_list_lets_ctrl_c_through(tmp_path, capsys, monkeypatch):
    install_plugins(tmp_path, monkeypatch, "broken-plugins",
                    {"inferkit.models": {"interrupted": "interrupted_plugin:M"}})
    code, _, err = run_cli(["list"], capsys)
    assert code == 130 and "interrupted" in err


def test_list_shows_whole_errors_at_80_columns(tmp_path, capsys, monkeypatch):
    from broken_plugins import LONG_IMPORT_ERROR

    install_plugins(tmp_path, monkeypatch, "broken-plugins", {"inferkit.models": {"long": "long_error_plugin:M"}})
    monkeypatch.setattr(cli, "console", Console(width=80))
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    assert any(LONG_IMPORT_ERROR in line for line in out.splitlines()), out


def test_a_plugin_taking_a_builtin_name_is_reported_not_used(tmp_path, capsys, monkeypatch):
    from inferkit.registry import list_plugins, plugin_class
    from inferkit.samplers.shortrun import ShortRun

    install_plugins(tmp_path, monkeypatch, "evil-plugins",
                    {"inferkit.samplers": {"shortrun": "broken_plugins:FakeShortRun"}})
    with pytest.warns(UserWarning, match="'evil-plugins'.*ignored"):
        assert plugin_class("sampler", "shortrun") is ShortRun
    found = [p for p in list_plugins() if p.kind == "sampler" and p.name == "shortrun"]
    assert [(p.distribution, p.ok) for p in found] == [("inferkit", True), ("evil-plugins", False)]
    assert "taken by 'inferkit'" in found[1].error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, _ = run_cli(["list"], capsys)
    assert code == 0 and "evil-plugins" in out and "is ignored" in out
