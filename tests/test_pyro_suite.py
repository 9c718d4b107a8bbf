"""``benchmarks/pyro_suite.py``: each short-run method is tuned (or not) the way its name says, in its own
process, and its result holds one error per test image under both inferences (and per training image
under its own)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pyro_suite


@pytest.mark.parametrize("method", ["shortrun", "shortrun-last", "shortrun-full-grid", "shortrun-one-se"])
def test_each_short_run_method_tunes_as_its_name_says(method, mnist_dir, tmp_path):
    result = pyro_suite.one_run(method, 2, 0, Path(mnist_dir), tmp_path / method, reference_steps=2)
    config = json.loads((tmp_path / method / "config.json").read_text())
    (tuning,) = [json.loads(line) for line in (tmp_path / method / "tuner.jsonl").read_text().splitlines()]
    options = config["tuner"]["options"]
    evaluated = [p for p in tuning["history"] if p["evaluated"] and not p["extended"]]
    assert options["memory"] == (0.7 if method == "shortrun" else 0.0)  # the default averages, the others not
    if method == "shortrun-full-grid":
        assert options["search"] == "grid" and options["batch_size"] == 4
        assert sorted(p["step_size"] for p in evaluated) == pytest.approx(list(options["grid"]))
    else:
        assert options["search"] == "local" and options["batch_size"] == 16
        assert options["tie_se"] == (1.0 if method == "shortrun-one-se" else 0.0)
        assert len(evaluated) < len(options["grid"])  # a walk, not the whole grid
    assert result["method"] == method and result["step_size"] == tuning["hyperparameters"]["step_size"]
    assert len(result["own"]) == len(result["reference"]) == len(result["own_train"]) == 2000


def test_the_fixed_step_size_control_is_never_tuned(mnist_dir, tmp_path):
    run_dir = tmp_path / "shortrun-fixed"
    result = pyro_suite.one_run("shortrun-fixed", 2, 0, Path(mnist_dir), run_dir, reference_steps=2)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["tuner"]["name"] == "fixed" and config["sampler"]["name"] == "shortrun"
    assert not (run_dir / "tuner.jsonl").exists()
    assert result["step_size"] == pytest.approx(0.05)  # the authors' z_step_size, in their units
    assert len(result["own"]) == 2000
