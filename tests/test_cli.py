"""The command line end to end: training, resume, eval/sample/tune, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli, train_until_crash

TINY = ["--model", "ladder", "--sampler", "shortrun", "--tuner", "kl-grid",
        "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8",
        "--sampler-opt", "num_steps=4", "--tuner-opt", "grid=0.01,0.02", "--tuner-opt", "batch_size=2",
        "--data-opt", "num_train=64", "--data-opt", "num_test=16", "--data-opt", "image_size=16",
        "--batch-size", "8", "--quiet",
        "--train-opt", "log_every=1", "--train-opt", "checkpoint_every=3", "--train-opt", "image_every=3",
        "--train-opt", "eval_examples=16"]


@pytest.mark.slow
def test_run_writes_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *TINY, "--iterations", "6", "--tune-every", "3", "--out", out], capsys)
    assert code == 0, err
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "tuner.jsonl", "summary.json",
                 "samples_000003.png", "reconstructions_final.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["options"]["nf"] == 8 and config["model"]["options"]["image_size"] == 16
    assert config["sampler"]["options"]["num_steps"] == 4
    tuner = [json.loads(line) for line in (out / "tuner.jsonl").read_text().splitlines()]
    assert [t["iteration"] for t in tuner] == [0, 3]
    assert [p["step_size"] for p in tuner[0]["history"]][:2] == [0.01, 0.02]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 6 and summary["test_mse_start"] > 0


@pytest.mark.slow
def test_same_seed_gives_the_same_numbers(tmp_path, capsys):
    first, second, other = tmp_path / "first", tmp_path / "second", tmp_path / "other"
    for folder, seed in ((first, 0), (second, 0), (other, 1)):
        args = ["run", *TINY, "--iterations", "4", "--tune-every", "2", "--seed", seed, "--out", folder]
        assert run_cli(args, capsys)[0] == 0
    a, b, c = (torch.load(f / "checkpoint.pt", weights_only=True)["model"] for f in (first, second, other))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)
    assert (first / "metrics.jsonl").read_text().count("loss") == 4


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, capsys):
    from inferkit.runs import RunSpec
    full = tmp_path / "full"
    assert run_cli(["run", *TINY, "--iterations", "6", "--tune-every", "3", "--out", full], capsys)[0] == 0
    # The same run, stopped right after its iteration-3 checkpoint (a crash), then resumed.
    stopped = tmp_path / "stopped"
    train_until_crash(RunSpec.load(full), stopped, 3)
    code, _, err = run_cli(["run", "--resume", stopped, "--quiet"], capsys)
    assert code == 0, err
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert b["iteration"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["sampler"]["step_size"], b["sampler"]["step_size"])
    lines_a = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x)["loss"] for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert lines_a == lines_b


def test_eval_sample_tune_on_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["run", *TINY, "--iterations", "3", "--tune-every", "0", "--out", out], capsys)[0] == 0
    code, _, err = run_cli(["eval", out, "--num-examples", "8", "--reference-steps", "0", "--inpaint-examples", "0",
                            "--ais-examples", "0", "--fd-samples", "0", "--no-figures"], capsys)
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    assert result["test_examples"] == 8 and result["test_reconstruction_mse"] > 0
    assert run_cli(["sample", out, "--num", "4", "--output", tmp_path / "s.png"], capsys)[0] == 0
    assert (tmp_path / "s.png").is_file()
    code, _, err = run_cli(["tune", out, "--num-examples", "2"], capsys)
    assert code == 0, err
    tuned = json.loads((out / "tune.json").read_text())
    assert [p["step_size"] for p in tuned["history"]][:2] == [0.01, 0.02]


def test_list_shows_plugins(capsys):
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    for name in ("ladder", "linear-gaussian", "shortrun", "langevin", "kl-grid", "fixed", "shapes", "mnist"):
        assert name in out


def _write_idx_images(path: Path, n: int, truncate: bool = False) -> None:
    header = (0x00000803).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    body = bytes(n * 28 * 28)
    data = header + (body[: len(body) // 2] if truncate else body)
    path.write_bytes(data)


@pytest.mark.parametrize("args, fragment", [
    (["run", "--model", "ladderr"], "did you mean ladder"),
    (["run", "--model", "ladder", "--sampler", "shortrn"], "did you mean shortrun"),
    (["run", "--model", "ladder", "--model-opt", "nff=3"], "did you mean nf"),
    (["run", "--model", "ladder", "--model-opt", "nf"], "key=value"),
    (["run", "--model", "ladder", "--model-opt", "nf=abc"], "not valid"),
    (["run", "--model", "ladder", "--sampler-opt", "step_size=-0.1"], "step_size must be positive"),
    (["run", "--model", "ladder", "--sampler-opt", "step_size=nan"], "not valid"),
    (["run", "--model", "ladder", "--sampler-opt", "num_steps=0"], "num_steps must be a positive integer"),
    (["run", "--model", "ladder", "--data", "mnist", "--data-dir", "/nonexistent/dir"], "--data-dir"),
    (["run", "--model", "ladder", "--device", "cuda"], "no CUDA"),
    (["run", "--model", "ladder", "--data-opt", "image_size=28", "--model-opt", "image_size=32"], "shape"),
    (["run", "--model", "ladder", "--iterations", "0"], "iterations"),
    (["run", "--bogus-flag"], "bogus"),
    (["run", "--sampler", "shortrun"], "give a model with --model"),
    (["eval", "/nonexistent/run"], "no inferkit run"),
])
def test_user_mistakes_are_one_line_errors(args, fragment, capsys, tmp_path, monkeypatch):
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # nothing written


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    code, _, err = run_cli(["run", "--resume", tmp_path], capsys)
    assert code == 2 and err.startswith("error: ") and "no inferkit run" in err


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["run", *TINY, "--iterations", "1", "--out", out, "--tune-every", "0"], capsys)[0] == 0
    before = (out / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(["run", *TINY, "--iterations", "1", "--out", out], capsys)
    assert code == 2 and "already exists" in err
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "corrupt-gzip"])
def test_bad_mnist_files_are_one_line_errors(tmp_path, capsys, damage):
    data = tmp_path / "mnist"
    data.mkdir()
    images = data / "t10k-images-idx3-ubyte"
    _write_idx_images(images, 10, truncate=damage == "truncated")
    labels = data / "t10k-labels-idx1-ubyte"
    labels.write_bytes((0x00000801).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(10))
    if damage == "corrupt-gzip":
        (data / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
        images.unlink()
    code, _, err = run_cli(["run", "--model", "ladder", "--data", "mnist", "--data-dir", data, "--out", tmp_path / "r"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_console_script_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "inferkit", "run", "--model", "nosuchmodel"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown model 'nosuchmodel'")
    assert "Traceback" not in result.stderr


def test_toml_config_file(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nname = "ladder"\n[model.options]\nnum_layers = 1\nlatent_dims = [3]\nnf = 8\n'
                      '[sampler.options]\nnum_steps = 2\n[tuner]\nname = "fixed"\n'
                      '[data.options]\nnum_train = 32\nnum_test = 8\nimage_size = 16\n'
                      '[train]\niterations = 2\nbatch_size = 8\neval_examples = 8\n')
    out = tmp_path / "run"
    code, _, err = run_cli(["run", "--config", config, "--out", out, "--quiet"], capsys)
    assert code == 0, err
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["model"]["options"]["latent_dims"] == [3]
    assert resolved["tuner"]["name"] == "fixed" and resolved["train"]["iterations"] == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    code, _, err = run_cli(["run", "--config", bad], capsys)
    assert code == 2 and "not valid TOML" in err



@pytest.mark.slow
def test_resume_restores_the_tuners_state(tmp_path, capsys):
    """``kl-grid`` with ``memory`` counts its tunings; the checkpoint keeps the count, so a resumed run
    averages its later choices exactly as the uninterrupted one, and a damaged count is one user error."""
    from inferkit.runs import RunSpec
    options = [*TINY, "--tuner-opt", "memory=0.5", "--iterations", "6", "--tune-every", "2"]
    full = tmp_path / "full"
    assert run_cli(["run", *options, "--out", full], capsys)[0] == 0
    stopped = tmp_path / "stopped"
    train_until_crash(RunSpec.load(full), stopped, 3)
    assert torch.load(stopped / "checkpoint.pt", weights_only=True)["tuner"] == {"tunings": 2}
    code, _, err = run_cli(["run", "--resume", stopped, "--quiet"], capsys)
    assert code == 0, err
    a, b = (torch.load(f / "checkpoint.pt", weights_only=True) for f in (full, stopped))
    assert a["tuner"] == b["tuner"] == {"tunings": 3}
    assert torch.equal(a["sampler"]["step_size"], b["sampler"]["step_size"])
    tunings = [[json.loads(x)["hyperparameters"] for x in (f / "tuner.jsonl").read_text().splitlines()]
               for f in (full, stopped)]
    assert tunings[0] == tunings[1]
    damaged = tmp_path / "damaged"
    train_until_crash(RunSpec.load(full), damaged, 3)
    state = torch.load(damaged / "checkpoint.pt", weights_only=True)
    torch.save({**state, "tuner": {"tunings": -1}}, damaged / "checkpoint.pt")
    code, _, err = run_cli(["run", "--resume", damaged, "--quiet"], capsys)
    assert code == 2 and err.strip().startswith("error:") and "tunings must be a count" in err
    assert len(err.strip().splitlines()) == 1
