"""``benchmarks/tuning_noise.py``: every chosen step size is scored by the test MSE at that step size,
and the summary statistics are those of the scored choices."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
from cli_helpers import TINY_LADDER_RUN, run_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tuning_noise


@pytest.mark.parametrize("tuner", tuning_noise.TUNERS)
def test_choices_are_scored_by_the_test_mse_at_the_chosen_step_size(tuner, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli([*TINY_LADDER_RUN, "--out", run], capsys)
    assert code == 0, err
    budget = {"max_iterations": 4} if tuner == "kl-grad" else {}
    result = tuning_noise.noise(run, None, [2, 4], repeats=3, examples=8, tuner_name=tuner, **budget)
    assert all(row["tuner"] == tuner for row in result["rows"])
    grid, scored = result["test_mse_on_grid"], result["test_mse_at"]
    assert len(result["rows"]) == 2 and result["best_on_grid"] == min(grid, key=grid.get)
    assert all(scored[s] == grid[s] for s in grid)
    for row in result["rows"]:
        chosen = [s for s, count in row["chosen"].items() for _ in range(count)]
        assert len(chosen) == 3
        scores = [scored[s] for s in chosen]
        assert abs(row["test_mse_mean"] - statistics.mean(scores)) < 1e-12
        assert abs(row["test_mse_max"] - max(scores)) < 1e-12
