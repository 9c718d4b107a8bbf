"""``benchmarks/ladder_sigmas.py``: the per-layer statistics are those of the model's own top-down
``sigma_l``, and a head pushed past its clamp is counted as clamped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error

import inferkit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ladder_sigmas


def small_ladder(**options):
    return inferkit.load_model("ladder", image_size=16, channels=1, num_layers=3, latent_dims=[4, 3, 2], nf=8,
                               **options)


def test_statistics_are_those_of_the_top_down_sigmas():
    model = small_ladder()
    rows = ladder_sigmas.sigma_stats(model, draws=5, seed=3)
    eps = model.sample_prior(5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        sigmas = [sigma for _, sigma in model.conditionals(model.center(eps))[:-1]]
    assert [row["layer"] for row in rows] == [1, 2]
    for row, sigma in zip(rows, sigmas):
        assert row["median"] == pytest.approx(float(sigma.median()))
        assert row["max"] == pytest.approx(float(sigma.max()))
        assert row["at_clamp"] == 0.0 and float(sigma.min()) >= 1.0  # the code's head: 1 <= sigma_l < e^5


def test_a_head_past_its_clamp_is_counted_and_the_softplus_head_has_none():
    model = small_ladder()
    with torch.no_grad():
        model.sigma[0].linear.bias.fill_(100.0)  # layer 1: softplus(v) >> 10 for every unit
    rows = ladder_sigmas.sigma_stats(model, draws=4)
    assert rows[0]["at_clamp"] == 1.0 and rows[0]["median"] == pytest.approx(ladder_sigmas.CLAMP)
    assert rows[1]["at_clamp"] < 1.0
    softplus = ladder_sigmas.sigma_stats(small_ladder(sigma_head="softplus"))
    assert all(row["at_clamp"] is None for row in softplus)


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ladder_sigmas.py"), str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stdout == ""
    assert one_line_error(2, done.stderr).startswith("error: ") and "no config.json" in done.stderr
