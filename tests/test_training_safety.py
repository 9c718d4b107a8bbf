"""Training that fails safely: non-finite values stop a run before its step and never reach a checkpoint,
SIGINT / SIGTERM stop it at an iteration with a checkpoint, one run per folder, resume that refuses what
it cannot honour (and extends as documented), torn JSON lines, and strict JSON everywhere."""

from __future__ import annotations

import dataclasses
import json
import math
import signal

import pytest
import torch
from cli_helpers import one_line_error, run_cli, start_cli, train_until_crash, wait_for_records

from inferkit.callbacks import Callback
from inferkit.errors import UserError
from inferkit.runs import PluginSpec, RunSpec, TrainConfig, build_objects, write_json_atomic
from inferkit.trainer import train as train_run

TINY = ["--model", "ladder", "--sampler", "shortrun", "--tuner", "fixed",
        "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8",
        "--sampler-opt", "num_steps=3", "--data-opt", "num_train=32", "--data-opt", "num_test=8",
        "--data-opt", "image_size=16", "--batch-size", "8", "--quiet", "--tune-every", "0",
        "--train-opt", "log_every=1", "--train-opt", "image_every=1000", "--train-opt", "eval_examples=8"]


def tiny_spec(**train) -> RunSpec:
    """The run of ``TINY`` as a RunSpec, with training settings ``train``."""
    settings = {"iterations": 8, "batch_size": 8, "tune_every": 0, "log_every": 1, "image_every": 1000,
                "eval_examples": 8}
    return RunSpec(model=PluginSpec("ladder", {"num_layers": 2, "latent_dims": [4, 2], "nf": 8}),
                   sampler=PluginSpec("shortrun", {"num_steps": 3}), tuner=PluginSpec("fixed"),
                   data=PluginSpec("shapes", {"num_train": 32, "num_test": 8, "image_size": 16}),
                   train=TrainConfig(**{**settings, **train}))


def poison(model, sampler, at: int, where: str) -> None:
    """Make iteration ``at`` non-finite: its loss (``where="loss"``), or a gradient under a finite loss."""
    current = {"t": -1}
    begin = sampler.begin_iteration

    def begin_iteration(t, total):
        current["t"] = t
        return begin(t, total)

    sampler.begin_iteration = begin_iteration
    if where == "loss":
        loss = sampler.loss
        sampler.loss = lambda m, x, inference: loss(m, x, inference) * (math.nan if current["t"] == at else 1.0)
    else:
        next(model.parameters()).register_hook(lambda g: g * math.nan if current["t"] == at else g)


def train_poisoned(spec: RunSpec, out, at: int, where: str) -> str:
    """Train ``spec`` into ``out`` with iteration ``at`` poisoned; the message it stops with."""
    from inferkit.trainer import train

    data, model, sampler, tuner = build_objects(spec)
    poison(model, sampler, at, where)
    with pytest.raises(UserError) as stopped:
        train(model, sampler, tuner, data, spec, out, progress=False)
    return str(stopped.value)


def floating_tensors(value):
    """Every floating-point tensor in a (nested) checkpoint."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from floating_tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from floating_tensors(item)


def load(folder):
    return torch.load(folder / "checkpoint.pt", weights_only=True)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def strict_loads(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# -- non-finite values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_value_between_logged_iterations_stops_before_the_step(tmp_path, where):
    out = tmp_path / "run"
    message = train_poisoned(tiny_spec(log_every=5, checkpoint_every=2), out, at=3, where=where)
    assert f"diverged at iteration 3 (non-finite {where})" in message
    assert f"the last good checkpoint is {out / 'checkpoint.pt'} (iteration 2)" in message
    state = load(out)
    assert state["iteration"] == 2
    tensors = list(floating_tensors(state))
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors)


def test_a_non_finite_value_before_the_first_checkpoint_says_there_is_none(tmp_path):
    out = tmp_path / "run"
    message = train_poisoned(tiny_spec(log_every=5, checkpoint_every=5), out, at=1, where="gradient")
    assert "iteration 1" in message and "no checkpoint was written yet" in message
    assert not (out / "checkpoint.pt").exists()


def test_a_run_that_died_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        train_poisoned(tiny_spec(checkpoint_every=5), out, at=1, where="loss")
    # The same --out again, with any options: the folder holds only what the dead run wrote.
    code, _, err = run_cli(["run", *TINY, "--iterations", "3", "--out", first], capsys)
    assert code == 0, err
    assert [m["iteration"] for m in records(first / "metrics.jsonl")] == [0, 1, 2]
    assert load(first)["iteration"] == 3
    # Or --resume: the run starts again from iteration 0 with its config.json.
    code, _, err = run_cli(["run", "--resume", second, "--iterations", "2", "--quiet"], capsys)
    assert code == 0, err
    assert "no checkpoint" in err and "starts again from iteration 0" in err
    assert [m["iteration"] for m in records(second / "metrics.jsonl")] == [0, 1]


# -- signals ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_an_iteration_with_a_checkpoint_and_resume_is_exact(tmp_path, capsys, signum):
    args = ["run", *TINY, "--iterations", "8", "--train-opt", "checkpoint_every=100"]
    out, hold = tmp_path / "run", tmp_path / "hold"
    hold.touch()  # iteration 2 waits for it to go: the signal comes while the run is at iteration 2
    process = start_cli([*args, "--out", out], hold=(hold, 2))
    try:
        wait_for_records(out / "metrics.jsonl", 2, process)
        # While it runs the folder is its own: neither a resume nor another run gets in.
        for other in (["run", "--resume", out, "--quiet"], [*args, "--out", out]):
            code, _, err = run_cli(other, capsys)
            assert "in use by another inferkit run" in one_line_error(code, err)
        process.send_signal(signum)
        hold.unlink()
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"error: interrupted at iteration 3; continue with inferkit run --resume {out}"], err
    assert load(out)["iteration"] == 3  # iteration 2 ran to its end, then the checkpoint
    assert [m["iteration"] for m in records(out / "metrics.jsonl")] == [0, 1, 2]
    code, _, err = run_cli(["run", "--resume", out, "--quiet"], capsys)
    assert code == 0, err
    reference = tmp_path / "reference"
    assert run_cli([*args, "--out", reference], capsys)[0] == 0
    assert [m["loss"] for m in records(out / "metrics.jsonl")] == [m["loss"] for m in
                                                                   records(reference / "metrics.jsonl")]
    a, b = load(out), load(reference)
    assert a["iteration"] == 8 and all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


# -- one run per folder ----------------------------------------------------------------------------------
def test_a_locked_run_folder_is_refused_and_a_released_lock_is_not_stale(tmp_path, capsys):
    from inferkit.run_folder import RunLock

    out = tmp_path / "run"
    held = RunLock(out)
    held.acquire()  # another run's lock (flock conflicts between two opens in one process too)
    try:
        code, _, err = run_cli(["run", *TINY, "--iterations", "1", "--out", out], capsys)
        assert "in use by another inferkit run" in one_line_error(code, err)
        assert not (out / "config.json").exists()
    finally:
        held.release()
    code, _, err = run_cli(["run", *TINY, "--iterations", "1", "--out", out], capsys)  # .lock left, not held
    assert code == 0, err


def test_default_run_folders_started_in_the_same_second_differ(tmp_path, capsys, monkeypatch):
    from inferkit import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda *args: "20250101-000000")
    for _ in range(2):
        code, _, err = run_cli(["run", *TINY, "--iterations", "1"], capsys)
        assert code == 0, err
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all((f / "checkpoint.pt").is_file() for f in folders)


# -- resume ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from inferkit.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([str(a) for a in ["run", *TINY, "--iterations", "2", "--out", out]]) == 0
    return out


@pytest.mark.parametrize("flag, value", [
    ("--batch-size", "4"), ("--seed", "1"), ("--tune-every", "5"), ("--model", "ladder-ebm"),
    ("--sampler", "langevin"), ("--tuner", "kl-grid"), ("--data", "mnist"), ("--data-dir", "/nonexistent"),
    ("--model-opt", "nf=4"), ("--sampler-opt", "num_steps=2"), ("--tuner-opt", "step_size=0.1"),
    ("--data-opt", "num_train=16"), ("--config", "c.toml"), ("--train-opt", "log_every=2"),
    ("--out", "elsewhere"),
])
def test_resume_refuses_options_it_cannot_honour(finished_run, tmp_path, capsys, monkeypatch, flag, value):
    monkeypatch.chdir(tmp_path)
    before = (finished_run / "config.json").read_text()
    code, _, err = run_cli(["run", "--resume", finished_run, flag, value, "--quiet"], capsys)
    line = one_line_error(code, err)
    assert flag in line and "--resume" in line, line
    assert (finished_run / "config.json").read_text() == before and not (tmp_path / "elsewhere").exists()


def test_resume_takes_the_run_s_own_values_and_execution_settings(finished_run, capsys):
    code, _, err = run_cli(["run", "--resume", finished_run, "--seed", "0", "--batch-size", "8", "--out",
                            finished_run, "--device", "cpu", "--precision", "float32", "--quiet"], capsys)
    assert code == 0, err


def test_extending_a_run_keeps_its_planned_schedules(tmp_path, capsys):
    from inferkit.trainer import learning_rate

    out = tmp_path / "run"
    assert run_cli(["run", *TINY, "--iterations", "4", "--train-opt", "checkpoint_every=2", "--out", out],
                   capsys)[0] == 0
    code, _, err = run_cli(["run", "--resume", out, "--iterations", "3", "--quiet"], capsys)
    assert "checkpointed at iteration 4" in one_line_error(code, err)
    code, _, err = run_cli(["run", "--resume", out, "--iterations", "6", "--quiet"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "planned for 4" in notes[0] and "differs from a run planned with 6" in notes[0]
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["iterations"] == 6 and train["schedule_iterations"] == 4
    assert json.loads((out / "summary.json").read_text())["schedule_iterations"] == 4
    metrics = records(out / "metrics.jsonl")
    # The 4 planned iterations' schedule (milestones at 2 and 3), then its final learning rate and sigma.
    assert [m["learning_rate"] for m in metrics] == pytest.approx([1e-3, 1e-3, 3e-4, 9e-5, 9e-5, 9e-5])
    assert [m["sigma"] for m in metrics][2:] == pytest.approx([0.2] * 4)
    planned = TrainConfig(iterations=6)
    assert learning_rate(planned, 4) == pytest.approx(3e-4)  # a run planned with 6 differs at t = 4


class _States(Callback):
    """The model's parameters and the sampler's hyperparameters at every checkpoint."""

    def __init__(self, model, sampler) -> None:
        self.model, self.sampler, self.at = model, sampler, {}

    def on_checkpoint(self, done: int, *, more_to_come: bool) -> None:
        self.at[done] = ({k: v.clone() for k, v in self.model.state_dict().items()},
                         {k: v.clone() for k, v in self.sampler.hyperparameters().items()})


def _checkpoint_states(tmp_path, name: str, **train) -> dict:
    fixed = {"lr_milestones": (), "schedule_iterations": 12, "sigma_anneal": 0.25, "tune_every": 2}
    spec = dataclasses.replace(tiny_spec(**fixed, **train), tuner=PluginSpec("kl-grid", {"batch_size": 4}))
    data, model, sampler, tuner = build_objects(spec)
    states = _States(model, sampler)
    train_run(model, sampler, tuner, data, spec, tmp_path / name, progress=False, callbacks=[states])
    return states.at


def test_with_fixed_schedules_a_shorter_run_is_the_prefix_of_a_longer_one(tmp_path):
    """Learning rate held and sigma annealed over a fixed planned count: a run of T iterations trains as
    the first T iterations of a longer run, whatever its logging and checkpoint intervals, so the longer
    run's checkpoints stand for separate runs of each length."""
    short = _checkpoint_states(tmp_path, "short", iterations=6, checkpoint_every=6, log_every=1)
    long = _checkpoint_states(tmp_path, "long", iterations=12, checkpoint_every=3, log_every=5)
    (model_short, hyper_short), (model_long, hyper_long) = short[6], long[6]
    assert all(torch.equal(model_short[k], model_long[k]) for k in model_short)
    assert all(torch.equal(hyper_short[k], hyper_long[k]) for k in hyper_short)
    assert not all(torch.equal(model_long[k], long[12][0][k]) for k in model_long)  # it trained on


def test_a_torn_last_jsonl_line_is_dropped_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    train_until_crash(tiny_spec(iterations=4, checkpoint_every=2, tune_every=2), out, 2)
    for name in ("metrics.jsonl", "tuner.jsonl"):
        with open(out / name, "a") as handle:
            handle.write('{"iteration": 2, "lo')  # a crash in the middle of an append
    code, _, err = run_cli(["run", "--resume", out, "--quiet"], capsys)
    assert code == 0, err
    assert err.count("warning: dropped the torn last line") == 2 and "Traceback" not in err
    assert [m["iteration"] for m in records(out / "metrics.jsonl")] == [0, 1, 2, 3]
    assert [r["iteration"] for r in records(out / "tuner.jsonl")] == [0, 2]
    assert not list(out.glob("*.tmp"))


# -- strict JSON -----------------------------------------------------------------------------------------
def test_every_json_file_is_strict(tmp_path, capsys):
    out = tmp_path / "run"
    # The fixed tuner evaluates no objective: its records hold a NaN J.
    code, _, err = run_cli(["run", *TINY, "--iterations", "2", "--tune-every", "1", "--out", out], capsys)
    assert code == 0, err
    for name in ("config.json", "summary.json"):
        strict_loads((out / name).read_text())
    for name in ("metrics.jsonl", "tuner.jsonl"):
        for line in (out / name).read_text().splitlines():
            strict_loads(line)
    tuned = strict_loads((out / "tuner.jsonl").read_text().splitlines()[0])
    assert tuned["objective"] is None and tuned["null_because"] == {"objective": "non-finite (nan)"}
    write_json_atomic(tmp_path / "summary.json", {"test_mse_end": math.nan, "figures": [1.0, -math.inf]})
    written = strict_loads((tmp_path / "summary.json").read_text())
    assert written["test_mse_end"] is None and written["figures"] == [1.0, None]
    assert written["null_because"] == {"test_mse_end": "non-finite (nan)", "figures[1]": "non-finite (-inf)"}
