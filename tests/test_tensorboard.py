"""``inferkit run --logger tensorboard``: the event files mirror metrics.jsonl, tuner.jsonl and
summary.json; without the tensorboard package the option is a one-line error.

The tests that read event files skip when ``tensorboard`` is not installed
(``pip install inferkit[tensorboard]``); the missing-package test simulates its absence.
"""

from __future__ import annotations

import json
import sys

import pytest
from cli_helpers import one_line_error, run_cli

TINY = ["--model", "ladder", "--sampler", "shortrun", "--tuner", "kl-grid",
        "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=4",
        "--sampler-opt", "num_steps=2", "--tuner-opt", "grid=0.01,0.02", "--tuner-opt", "batch_size=2",
        "--data-opt", "num_train=16", "--data-opt", "num_test=4", "--data-opt", "image_size=16",
        "--batch-size", "4", "--quiet", "--iterations", "4", "--tune-every", "2",
        "--train-opt", "log_every=1", "--train-opt", "image_every=2", "--train-opt", "checkpoint_every=2",
        "--train-opt", "eval_examples=4"]


def test_missing_tensorboard_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it raises ImportError
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *TINY, "--logger", "tensorboard", "--out", out], capsys)
    line = one_line_error(code, err)
    assert "pip install inferkit[tensorboard]" in line, line
    assert not out.exists()


def test_unknown_logger_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *TINY, "--logger", "wandb", "--out", out], capsys)
    line = one_line_error(code, err)
    assert "unknown --logger 'wandb'" in line and "tensorboard" in line, line
    assert not out.exists()


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _scalars(events, tag):
    return {e.step: e.value for e in events.Scalars(tag)}


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    pytest.importorskip("tensorboard")
    from inferkit.cli import main

    out = tmp_path_factory.mktemp("tb") / "run"
    assert main([str(a) for a in ["run", *TINY, "--logger", "tensorboard", "--out", out]]) == 0
    return out


def test_scalars_mirror_metrics_jsonl(logged_run):
    events = _events(logged_run / "tensorboard")
    metrics = [json.loads(line) for line in (logged_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in metrics] == [0, 1, 2, 3]
    for key in ("loss", "mse", "step_size", "learning_rate", "sigma"):
        logged = _scalars(events, f"train/{key}")
        assert sorted(logged) == [0, 1, 2, 3], key
        for record in metrics:
            assert logged[record["iteration"]] == pytest.approx(record[key], rel=1e-6), key


def test_tuning_and_summary_scalars(logged_run):
    events = _events(logged_run / "tensorboard")
    tunings = [json.loads(line) for line in (logged_run / "tuner.jsonl").read_text().splitlines()]
    chosen = _scalars(events, "tune/step_size")
    assert sorted(chosen) == [t["iteration"] for t in tunings] == [0, 2]
    for t in tunings:
        assert chosen[t["iteration"]] == pytest.approx(t["hyperparameters"]["step_size"], rel=1e-6)
        assert t["hyperparameters"]["step_size"] in [pytest.approx(p["step_size"]) for p in t["history"]]
        assert _scalars(events, "tune/seconds")[t["iteration"]] == pytest.approx(t["seconds"], rel=1e-6)
    summary = json.loads((logged_run / "summary.json").read_text())
    test_mse = _scalars(events, "test/mse")
    assert test_mse == {0: pytest.approx(summary["test_mse_start"], rel=1e-6),
                        4: pytest.approx(summary["test_mse_end"], rel=1e-6)}
    assert _scalars(events, "summary/tuning_seconds")[4] == pytest.approx(summary["tuning_seconds"], rel=1e-6)


def test_image_grids_and_tuner_figures(logged_run):
    from PIL import Image

    events = _events(logged_run / "tensorboard")
    samples = events.Images("images/samples")
    assert [e.step for e in samples] == [2, 4]  # image_every=2; the final grids are those of iteration 4
    with Image.open(logged_run / "samples_000004.png") as png:
        assert (samples[-1].width, samples[-1].height) == png.size
    assert [e.step for e in events.Images("images/reconstructions")] == [2, 4]
    figures = events.Images("tuner/tuner_objective")
    assert figures and figures[-1].step == 4
    with Image.open(logged_run / "tuner_objective.png") as png:
        assert (figures[-1].width, figures[-1].height) == png.size
    assert events.Images("tuner/tuner_step_size")


def test_metrics_jsonl_is_the_same_with_and_without_the_logger(logged_run, tmp_path, capsys):
    out = tmp_path / "plain"
    assert run_cli(["run", *TINY, "--out", out], capsys)[0] == 0
    assert not (out / "tensorboard").exists()

    def records(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k != "iterations_per_second"} for row in rows]

    assert records(out) == records(logged_run)
