"""Tuner figures (inferkit.plots): the arrays drawn match the records, the PNGs are real images, and
the trainer and ``inferkit tune`` write them (and never fail a run over a figure)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from PIL import Image

from inferkit.plots import (
    OBJECTIVE_PNG,
    STEP_SIZE_PNG,
    chosen_step_sizes,
    entry_labels,
    objective_curves,
    plot_chosen_step_size,
    plot_objective_curves,
    plot_run_tuning,
)
from inferkit.samplers.shortrun import ShortRun
from inferkit.tuners.kl_grad import KLGrad
from inferkit.tuners.kl_grid import KLGrid


def assert_png(path, min_width=400, min_height=300):
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert min_width <= width <= 4000 and min_height <= height <= 4000, image.size
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # something was drawn, not a blank canvas


def grid_record(iteration, chosen=0.02):
    """A kl-grid record as the trainer writes it (grid walked upwards, stopped at the first singular point)."""
    history = [
        {"step_size": 0.03, "J": 12.0, "round": 0, "invertible": False, "min_eigenvalue": -0.1, "evaluated": True},
        {"step_size": 0.01, "J": 11.0, "round": 0, "invertible": True, "min_eigenvalue": 0.5, "evaluated": True},
        {"step_size": 0.02, "J": 10.0 + iteration, "round": 0, "invertible": True, "min_eigenvalue": 0.2,
         "evaluated": True},
        {"step_size": 0.04, "J": math.nan, "round": 0, "invertible": False, "min_eigenvalue": math.nan,
         "evaluated": False},
    ]
    return {"iteration": iteration, "objective": 10.0 + iteration, "history": history,
            "hyperparameters": {"step_size": chosen}, "per": "shared"}


def path_record(iteration, vectors, J, chosen):
    history = [{"iteration": i, "step_size": list(v), "J": j, "invertible": j < 100, "min_eigenvalue": 0.1,
                "learning_rate": 0.05} for i, (v, j) in enumerate(zip(vectors, J))]
    history[-1]["stop"] = "budget"
    return {"iteration": iteration, "objective": min(j for j in J if j < 100), "history": history,
            "hyperparameters": {"step_size": list(chosen)}, "per": "step"}


def test_grid_curves_are_sorted_by_s_drop_unevaluated_points_and_keep_invertibility():
    curves = objective_curves([grid_record(0), grid_record(5)])
    assert [c.iteration for c in curves] == [0, 5]
    np.testing.assert_allclose(curves[1].step_sizes[:, 0], [0.01, 0.02, 0.03])
    np.testing.assert_allclose(curves[1].J, [11.0, 15.0, 12.0])
    assert curves[1].invertible.tolist() == [True, True, False]
    assert curves[1].chosen_step_size.tolist() == [0.02] and curves[1].chosen_J == 15.0


def test_the_star_is_the_point_chosen_not_the_averaged_step_size_applied():
    """With ``memory`` kl-grid applies a step size between grid points and marks its choice in the
    history; the star sits on the curve at that choice."""
    record = grid_record(0, chosen=0.017)  # the applied, averaged step size
    record["history"] = [{**p, "chosen": p["step_size"] == 0.02} for p in record["history"]]
    (curve,) = objective_curves([record])
    assert curve.chosen_step_size.tolist() == [0.02] and curve.chosen_J == 10.0
    (unmarked,) = objective_curves([grid_record(0, chosen=0.017)])  # a record without the marks
    assert unmarked.chosen_step_size.tolist() == [0.017]


def test_objective_and_step_size_plots_of_a_grid_history(tmp_path):
    records = [grid_record(t, chosen=0.01 * (1 + t % 3)) for t in range(0, 60, 5)]  # 12 curves: colourbar
    curves = plot_objective_curves(records, tmp_path / "J.png")
    assert len(curves) == 12
    assert_png(tmp_path / "J.png")
    series = plot_chosen_step_size(records, tmp_path / "s.png")
    assert_png(tmp_path / "s.png")
    assert series.iterations.tolist() == list(range(0, 60, 5))
    np.testing.assert_allclose(series.step_sizes[:, 0], [0.01 * (1 + t % 3) for t in range(0, 60, 5)])
    assert series.labels == ["s"]


def test_vector_step_sizes_give_one_series_per_entry_labelled_by_the_layout(tmp_path):
    records = [
        path_record(0, [(0.05, 0.05, 0.05), (0.04, 0.045, 0.05), (0.2, 0.2, 0.2)], [20.0, 18.0, 500.0],
                    chosen=(0.04, 0.045, 0.05)),
        path_record(10, [(0.04, 0.045, 0.05), (0.03, 0.04, 0.06)], [15.0, 14.0], chosen=(0.03, 0.04, 0.06)),
    ]
    series = plot_chosen_step_size(records, tmp_path / "s.png")
    assert_png(tmp_path / "s.png")
    assert series.labels == ["step 1", "step 2", "step 3"]
    assert series.iterations.tolist() == [0, 10]
    np.testing.assert_allclose(series.step_sizes, [[0.04, 0.045, 0.05], [0.03, 0.04, 0.06]])
    curves = plot_objective_curves(records, tmp_path / "J.png")
    assert_png(tmp_path / "J.png")
    # A path keeps the order it was taken in (not sorted by any one entry); the overshoot is not invertible.
    np.testing.assert_allclose(curves[0].step_sizes[:, 1], [0.05, 0.045, 0.2])
    assert curves[0].invertible.tolist() == [True, True, False]
    assert entry_labels(2, "layer") == ["layer 1", "layer 2"] and entry_labels(2, None) == ["entry 1", "entry 2"]


def test_plots_of_real_kl_grid_and_per_step_kl_grad_histories(tiny_linear_gaussian, tmp_path):
    model = tiny_linear_gaussian(data_dim=6, seed=1)
    x = model.sample(4, generator=torch.Generator().manual_seed(2))
    records = []
    for t, tuner, sampler in (
        (0, KLGrid(grid=(0.01, 0.02, 0.05, 0.1, 0.2, 0.4), num_samples=4), ShortRun(num_steps=4, step_size=0.05)),
        (1, KLGrad(num_samples=4, max_iterations=8), ShortRun(num_steps=4, step_size=0.05, per="step")),
    ):
        result = tuner.tune(model, sampler, x)
        records.append({"iteration": t, "objective": result.objective, "history": result.history,
                        "hyperparameters": {k: v.tolist() for k, v in result.hyperparameters.items()},
                        "per": sampler.per})
    grid_curves = plot_objective_curves(records[:1], tmp_path / "grid.png")
    assert_png(tmp_path / "grid.png")
    assert grid_curves[0].J.min() == pytest.approx(records[0]["objective"])
    path_curves = plot_objective_curves(records[1:], tmp_path / "path.png")
    assert_png(tmp_path / "path.png", min_width=800)  # one panel per step
    assert path_curves[0].step_sizes.shape == (len(records[1]["history"]), 4)
    series = plot_chosen_step_size(records, tmp_path / "s.png")
    assert_png(tmp_path / "s.png")
    # The scalar grid choice and the per-step choice are different widths: the scalar is padded with nan.
    assert series.labels == ["step 1", "step 2", "step 3", "step 4"]
    assert series.step_sizes[0, 0] == pytest.approx(records[0]["hyperparameters"]["step_size"])
    np.testing.assert_allclose(series.step_sizes[1], records[1]["hyperparameters"]["step_size"])


def test_no_history_means_no_figure(tmp_path):
    assert plot_run_tuning(tmp_path) == []  # no tuner.jsonl
    fixed = {"iteration": 0, "objective": math.nan, "history": [], "hyperparameters": {"step_size": 0.05}}
    (tmp_path / "tuner.jsonl").write_text(json.dumps(fixed) + "\n")
    assert plot_run_tuning(tmp_path) == []
    assert chosen_step_sizes([fixed]).iterations.size == 0
    assert plot_objective_curves([fixed], tmp_path / "J.png") == [] and not (tmp_path / "J.png").exists()
    assert not list(tmp_path.glob("*.png"))


# -- through the trainer and the command line ---------------------------------------------------------
TINY = ["--model", "ladder", "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2",
        "--model-opt", "nf=8", "--sampler-opt", "num_steps=3",
        "--data-opt", "num_train=32", "--data-opt", "num_test=8", "--data-opt", "image_size=16",
        "--batch-size", "8", "--quiet", "--train-opt", "log_every=1", "--train-opt", "checkpoint_every=2",
        "--train-opt", "image_every=100", "--train-opt", "eval_examples=8"]


def test_training_and_tune_write_the_tuner_figures(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", *TINY, "--sampler", "shortrun", "--tuner", "kl-grid", "--tuner-opt", "grid=0.01,0.02",
            "--tuner-opt", "batch_size=2", "--iterations", "4", "--tune-every", "2", "--out", out]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert_png(out / OBJECTIVE_PNG)
    assert_png(out / STEP_SIZE_PNG)
    records = [json.loads(line) for line in (out / "tuner.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 2] and all(r["per"] == "shared" for r in records)
    assert all(r["seconds"] > 0 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tuning_seconds"] == pytest.approx(sum(r["seconds"] for r in records))
    assert 0 < summary["tuning_seconds"] < summary["seconds"]

    code, stdout, err = run_cli(["tune", out, "--num-examples", "2"], capsys)
    assert code == 0, err
    assert_png(out / "tune.png")
    assert str(out / "tune.png") in stdout.replace("\n", "")
    tuned = json.loads((out / "tune.json").read_text())
    assert tuned["iteration"] == 4 and [p["step_size"] for p in tuned["history"]][:2] == [0.01, 0.02]


def test_vector_step_sizes_through_training_and_tune(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", *TINY, "--sampler", "shortrun", "--sampler-opt", "per=step", "--tuner", "kl-grad",
            "--tuner-opt", "max_iterations=3", "--tuner-opt", "batch_size=2", "--iterations", "2", "--tune-every", "1", "--out", out]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert_png(out / OBJECTIVE_PNG, min_width=800)
    records = [json.loads(line) for line in (out / "tuner.jsonl").read_text().splitlines()]
    assert all(r["per"] == "step" and len(r["hyperparameters"]["step_size"]) == 3 for r in records)
    figure = tmp_path / "figures" / "J.png"
    code, stdout, err = run_cli(["tune", out, "--num-examples", "2", "--tuner-opt", "max_iterations=2",
                                 "--output", figure], capsys)
    assert code == 0, err
    assert_png(figure, min_width=800)
    assert not (out / "tune.png").exists()
    chosen = json.loads((out / "tune.json").read_text())["hyperparameters"]["step_size"]
    assert len(chosen) == 3
    assert f"[{chosen[0]:.4g}, {chosen[1]:.4g}, {chosen[2]:.4g}]" in stdout  # a list, printed readably
    code, _, err = run_cli(["tune", out, "--output", tmp_path / "J.pdf"], capsys)
    assert code == 2 and "--output" in err


def test_fixed_tuner_writes_no_tuner_figure_and_a_figure_failure_is_only_a_warning(tmp_path, capsys,
                                                                                   monkeypatch):
    out = tmp_path / "fixed"
    args = ["run", *TINY, "--sampler", "shortrun", "--tuner", "fixed", "--iterations", "2", "--tune-every", "1",
            "--out", out]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert not (out / OBJECTIVE_PNG).exists() and not (out / STEP_SIZE_PNG).exists()
    code, stdout, err = run_cli(["tune", out], capsys)
    assert code == 0, err
    assert not (out / "tune.png").exists() and "no J(s) to plot" in stdout

    import inferkit.plots

    def broken(run_dir):
        raise RuntimeError("no canvas")

    monkeypatch.setattr(inferkit.plots, "plot_run_tuning", broken)
    out = tmp_path / "broken"
    args = ["run", *TINY, "--sampler", "shortrun", "--tuner", "kl-grid", "--tuner-opt", "grid=0.01",
            "--iterations", "2", "--tune-every", "1", "--out", out]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "warning: could not draw the tuner figures" in err and "no canvas" in err
    assert (out / "summary.json").is_file()
