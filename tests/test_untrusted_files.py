"""A run folder is data, never code: pickled Python objects in its ``.pt`` files and ``pyro:`` models
named by its ``config.json`` are refused with one line, and nothing in them runs."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error, run_cli

from inferkit.cli import main

LADDER = ["--model", "ladder", "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8"]
RBM = ["--model", "rbm-prior", "--model-opt", "num_latents=4", "--model-opt", "num_hidden=3", "--model-opt",
       "binarize=threshold"]  # shapes has grey levels
EBM = ["--model", "ladder-ebm", "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8",
       "--model-opt", "energy_hidden=16", "--model-opt", "prior_steps=3"]
SMALL = ["--data", "shapes", "--data-opt", "num_train=32", "--data-opt", "num_test=16", "--data-opt", "image_size=16",
         "--batch-size", "8", "--quiet", "--train-opt", "log_every=1", "--train-opt", "checkpoint_every=1",
         "--train-opt", "image_every=100", "--train-opt", "eval_examples=8"]
EVAL_FAST = ["--num-examples", "4", "--reference-steps", "0", "--inpaint-examples", "0", "--ais-examples", "0",
             "--iwae-samples", "0", "--no-figures", "--quiet"]
REFUSED = "is not a plain inferkit checkpoint (it holds Python objects); refusing to load it"


class Payload:
    """Unpickled, it would create ``marker`` (any code could run there instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny ladder run of 2 iterations (shortrun, kl-grid), its checkpoint at iteration 2."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["run", *LADDER, *SMALL, "--sampler", "shortrun", "--sampler-opt", "num_steps=3", "--tuner",
                 "kl-grid", "--tuner-opt", "grid=0.01,0.02", "--tuner-opt", "batch_size=2", "--iterations", "2",
                 "--tune-every", "1", "--out", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _with_payload(path: Path, marker: Path) -> None:
    """Rewrite the ``.pt`` file at ``path`` with a pickled object next to its tensors."""
    state = torch.load(path, weights_only=True)
    state["note"] = Payload(marker)
    torch.save(state, path)


@pytest.mark.parametrize("command", [
    ["eval", "{run}", *EVAL_FAST, "--fd-samples", "0"],
    ["sample", "{run}", "--num", "4"],
    ["tune", "{run}", "--num-examples", "2"],
    ["run", "--resume", "{run}", "--iterations", "3", "--quiet"],
])
def test_a_checkpoint_holding_python_objects_is_refused(command, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    marker = tmp_path / "marker"
    _with_payload(run / "checkpoint.pt", marker)
    before = sorted(p.name for p in run.iterdir())
    code, _, err = run_cli([a.format(run=run) for a in command], capsys)
    assert one_line_error(code, err) == f"error: {run / 'checkpoint.pt'} {REFUSED}"
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_a_damaged_checkpoint_is_still_called_damaged(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    marker = tmp_path / "marker"
    _with_payload(run / "checkpoint.pt", marker)
    code, _, err = run_cli(["sample", run], capsys)
    assert REFUSED in one_line_error(code, err)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    line = one_line_error(*run_cli(["sample", run], capsys)[::2])
    assert "cannot be read" in line and "damaged" in line and "Python objects" not in line
    assert not marker.exists()


def test_a_feature_classifier_holding_python_objects_is_refused(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    marker = tmp_path / "marker"
    args = ["eval", run, *EVAL_FAST, "--fd-samples", "8", "--classifier-iterations", "2"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    classifier = run / "feature_classifier.pt"
    _with_payload(classifier, marker)
    (run / "eval.json").unlink()
    line = one_line_error(*run_cli(args, capsys)[::2])
    assert line == (f"error: {classifier} is not a plain inferkit classifier file (it holds Python objects); "
                    "refusing to load it")
    assert not marker.exists() and not (run / "eval.json").exists()


# -- every built-in sampler's checkpoint is plain ------------------------------------------------
@pytest.mark.parametrize("model, sampler", [
    (LADDER, ["--sampler", "shortrun", "--sampler-opt", "num_steps=3", "--tuner", "kl-grid", "--tuner-opt",
              "grid=0.01,0.02", "--tuner-opt", "batch_size=2"]),
    (LADDER, ["--sampler", "langevin", "--sampler-opt", "num_steps=3"]),
    (LADDER, ["--sampler", "shortrun-momentum", "--sampler-opt", "num_steps=3"]),
    (LADDER, ["--sampler", "abp", "--sampler-opt", "num_steps=3", "--sampler-opt", "test_steps=3"]),
    (LADDER, ["--sampler", "vae", "--sampler-opt", "hidden=16", "--sampler-opt", "nf=8"]),
    (LADDER, ["--sampler", "lvae", "--sampler-opt", "hidden=16", "--sampler-opt", "nf=8"]),
    (RBM, ["--sampler", "vimco"]),
    (RBM, ["--sampler", "rws"]),
    (EBM, ["--sampler", "shortrun", "--sampler-opt", "num_steps=3"]),
], ids=["shortrun", "langevin", "shortrun-momentum", "abp", "vae", "lvae", "vimco", "rws", "ladder-ebm"])
def test_every_built_in_sampler_resumes_from_a_plain_checkpoint(model, sampler, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    tuner = [] if "--tuner" in sampler else ["--tuner", "fixed"]
    code, _, err = run_cli(["run", *model, *SMALL, *sampler, *tuner, "--iterations", "2", "--tune-every", "1",
                            "--out", out], capsys)
    assert code == 0, err
    saved = torch.load(out / "checkpoint.pt", weights_only=True)  # tensors, numbers, strings, containers
    adam = saved["optimizer"].get("adam", saved["optimizer"])  # with the RBM's SGD group: {"adam", "sgd"}
    assert saved["iteration"] == 2 and adam["state"]
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    code, _, err = run_cli(["run", "--resume", out, "--iterations", "3", "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["sample", out, "--num", "4"], capsys)
    assert code == 0, err
    assert loads == [True, True]  # the resume and the sample, each through weights_only=True
    assert torch.load(out / "checkpoint.pt")["iteration"] == 3


# -- pyro: models named by a run folder ------------------------------------------------------------
PAYLOAD = '''
"""A Pyro model whose import creates a marker file (where an attacker's code would run)."""
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

Path({marker!r}).touch()


def model(x):
    n = x.shape[0]
    weight = pyro.param("weight", torch.zeros(2, 3 * 16 * 16))
    with pyro.plate("examples", n):
        z = pyro.sample("z", dist.Normal(torch.zeros(n, 2), 1.0).to_event(1))
        mean = (z @ weight).reshape(n, 3, 16, 16)
        pyro.sample("x", dist.Normal(mean, 0.3).to_event(3), obs=x)
'''

LAUNCH = "import sys\nfrom inferkit.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _inferkit(args: list, cwd: Path, launcher: Path, pythonpath: list[Path] = ()) -> subprocess.CompletedProcess:
    """``inferkit ARGS`` in a new process in ``cwd``, started as the console script is (its own folder,
    not the working directory, on ``sys.path``), with ``pythonpath`` before the inherited PYTHONPATH."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), *inherited])}
    return subprocess.run([sys.executable, str(launcher), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_pyro_model_named_by_a_run_folder_is_imported_only_when_named_again(tmp_path):
    evil, marker, launcher = tmp_path / "evil", tmp_path / "imported", tmp_path / "bin" / "launch.py"
    evil.mkdir()
    launcher.parent.mkdir()
    launcher.write_text(LAUNCH)
    (evil / "payload.py").write_text(textwrap.dedent(PAYLOAD).format(marker=str(marker)))
    run = tmp_path / "run"
    done = _inferkit(["run", "--model", "pyro:payload:model", "--sampler", "shortrun", "--sampler-opt",
                      "num_steps=2", "--tuner", "fixed", *SMALL, "--iterations", "1", "--out", run],
                     tmp_path, launcher, [evil])
    assert done.returncode == 0, done.stderr
    marker.unlink()  # training imported the model the user named

    attack = _inferkit(["sample", run, "--num", "4"], evil, launcher)
    config = run / "config.json"
    assert one_line_error(attack.returncode, attack.stderr) == (
        f"error: {config} names the Pyro model pyro:payload:model, which is code; pass --model "
        "pyro:payload:model (or --trust-code) to import it")
    assert not marker.exists()
    named = _inferkit(["sample", run, "--num", "4", "--model", "pyro:payload:model"], evil, launcher)
    assert "PYTHONPATH=." in one_line_error(named.returncode, named.stderr)  # the cwd is not searched
    assert not marker.exists()

    for extra in (["--model", "pyro:payload:model"], ["--trust-code"]):
        done = _inferkit(["sample", run, "--num", "4", *extra], tmp_path, launcher, [evil])
        assert done.returncode == 0, done.stderr
        assert marker.exists() and (run / "samples.png").is_file()
        marker.unlink()
    other = _inferkit(["sample", run, "--model", "pyro:payload:other"], tmp_path, launcher, [evil])
    assert "is not the model of this run" in one_line_error(other.returncode, other.stderr)
    assert not marker.exists()


def test_resume_of_a_pyro_run_needs_the_model_named_again(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    config = {"model": {"name": "pyro:some_module:model", "options": {}}, "sampler": {"name": "shortrun"},
              "tuner": {"name": "fixed"}, "data": {"name": "shapes"}}
    (run / "config.json").write_text(json.dumps(config))
    line = one_line_error(*run_cli(["run", "--resume", run], capsys)[::2])
    assert "names the Pyro model pyro:some_module:model, which is code" in line
    line = one_line_error(*run_cli(["run", "--resume", run, "--trust-code"], capsys)[::2])
    assert "cannot import 'some_module'" in line  # trusted: imported (and here not found)


@pytest.mark.parametrize("name, kind", [("pyro:os:system", "builtin_function_or_method"),
                                        ("pyro:collections:OrderedDict", "type"),
                                        ("pyro:builtins:print", "builtin_function_or_method")])
def test_a_callable_that_is_not_a_python_function_is_not_called(name, kind, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(*run_cli(["run", "--model", name, *SMALL, "--iterations", "1", "--out", "run"], capsys)[::2])
    assert f"that is a {kind}, not a Pyro model" in line
    assert not (tmp_path / "run").exists()


def test_a_callable_object_or_a_borrowed_function_is_not_called(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", functools.partial(calls.append))
    line = one_line_error(*run_cli(["run", "--model", "pyro:os:system", *SMALL, "--out", tmp_path / "a"], capsys)[::2])
    assert "not a Pyro model" in line and calls == []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))  # defined here, not in os
    line = one_line_error(*run_cli(["run", "--model", "pyro:os:system", *SMALL, "--out", tmp_path / "b"], capsys)[::2])
    assert "defined in" in line and calls == []


def test_a_python_function_that_draws_no_sample_site_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "not_a_model.py").write_text("def model(x):\n    return x.sum()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    line = one_line_error(*run_cli(["run", "--model", "pyro:not_a_model:model", *SMALL, "--out", tmp_path / "run"],
                                   capsys)[::2])
    assert "records no sample site" in line
    assert not (tmp_path / "run").exists()
