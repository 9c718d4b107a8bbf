"""The statistics of ``benchmarks/compare.py``'s tables suite: cells, claims, paired rows and verdicts."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tomllib
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare
import tables_suite as ts

FLOW = ("shortrun", "langevin")


def test_matched_dims_have_one_total_and_the_papers_dims_are_the_presets():
    assert len({sum(d) for d in ts.MATCHED_DIMS.values()}) == 1
    assert all(len(d) == L for L, d in ts.MATCHED_DIMS.items())
    preset = tomllib.loads((ROOT / "configs" / "paper" / "mnist.toml").read_text())
    assert tuple(preset["model"]["options"]["latent_dims"]) == ts.PAPER_DIMS[5]
    from inferkit_ladder.config import default_latent_dims

    assert ts.MATCHED_DIMS[3] == default_latent_dims(3)


def test_the_main_shortrun_cell_is_one_run_across_tables():
    tables = ts.table_cells(["shortrun", "vae"], 3, 20, FLOW)
    main = tables["samplers"][0]
    assert main in tables["layers-matched"] and main in tables["steps"]
    unique = {c for cells in tables.values() for c in cells}
    assert len(unique) == 2 + 3 + 2 + 3  # samplers, papers' L, matched L=1,5, K=5,10,40
    assert tables["samplers"][1].num_steps == 0  # K is a flow sampler's option only
    assert len({c.name(0) for c in unique}) == len(unique)
    assert all(ts.cell_from_dict(json.loads(json.dumps(ts.cell_dict(c)))) == c for c in unique)


def test_claims_point_the_papers_way():
    tables = ts.table_cells(["shortrun", "vae", "lvae"], 3, 20, FLOW)
    equal = ts.with_iterations(tables["samplers"][1], 1234)
    found = ts.claims(tables, equal)
    layers = [c for c in found if c.text.startswith("L=")]
    assert all(c.better.num_layers > c.worse.num_layers for c in layers) and len(layers) == 4
    steps = [c for c in found if c.text.startswith("K=")]
    assert [(c.worse.num_steps, c.better.num_steps) for c in steps] == [(5, 10), (10, 20), (20, 40)]
    timed = [c for c in found if "wall time" in c.text]
    assert len(timed) == 1 and timed[0].worse.label == "vae-equal-time" and timed[0].better.sampler == "shortrun"


def test_equal_time_iterations():
    assert ts.equal_time_iterations(300.0, 0.1) == 3000
    assert ts.equal_time_iterations(0.01, 1.0) == 1
    with pytest.raises(ValueError):
        ts.equal_time_iterations(math.nan, 0.1)
    with pytest.raises(ValueError):
        ts.equal_time_iterations(10.0, 0.0)


def _row(mean: float, significant: bool) -> dict:
    return {"mean_difference": mean, "significant": significant}


@given(st.lists(st.tuples(st.floats(-1, 1, allow_nan=False), st.booleans()), min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_verdict_needs_every_seed(rows):
    result = ts.verdict([_row(m, s) for m, s in rows])
    below = all(s and m < 0 for m, s in rows)
    above = all(s and m > 0 for m, s in rows)
    if len(rows) < ts.MIN_SEEDS:
        assert result.startswith(f"too few seeds ({len(rows)} of {ts.MIN_SEEDS})")
        assert ("papers' direction" in result) == below and ("against" in result) == above
    else:
        assert result == ("reproduced" if below else "contradicted" if above else "inconclusive")


def test_a_missing_seed_is_inconclusive():
    assert ts.verdict([_row(-1.0, True)] * 3 + [None]) == "inconclusive"
    assert ts.verdict([None, None]) == "not measured"


def _fake_run(out: Path, cell: ts.Cell, seed: int, mse: list[float], indices: list[int]) -> None:
    run = out / "runs" / cell.name(seed)
    run.mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"cell": ts.cell_dict(cell), "seed": seed}))
    (run / "eval_per_image.json").write_text(json.dumps(
        {"subset_seed": 0, "indices": indices, "measures": {"reconstruction_mse": mse}}))


def test_paired_rows_are_the_per_image_differences(tmp_path):
    better, worse = ts.Cell("shortrun", 5, (8, 6, 6, 4, 4), 20), ts.Cell("shortrun", 3, (16, 8, 4), 20)
    rng = np.random.default_rng(0)
    a = rng.uniform(0.02, 0.1, 50)
    b = a - 0.01 + rng.normal(0, 0.002, 50)
    _fake_run(tmp_path, worse, 0, a.tolist(), list(range(50)))
    _fake_run(tmp_path, better, 0, b.tolist(), list(range(50)))
    row = ts.paired_row(tmp_path, better, worse, 0, "reconstruction_mse")
    d = b - a
    assert row["mean_difference"] == pytest.approx(d.mean())
    assert row["standard_error"] == pytest.approx(d.std(ddof=1) / math.sqrt(50))
    assert row["significant"] and row["examples"] == 50
    assert ts.paired_row(tmp_path, better, worse, 1, "reconstruction_mse") is None  # seed 1 not run
    lines = ts.paired_table(tmp_path, [("L=5 below L=3", better, worse, "reconstruction_mse")], [0, 1], True)
    assert lines[-1].endswith("| too few seeds (1 of 3): significant in the papers' direction |")
    assert f"{d.mean():+.4g}" in lines[-1]


def test_paired_rows_use_only_the_shared_images(tmp_path):
    """Images are matched by test index, not by position."""
    first, second = ts.Cell("vae", 3, (16, 8, 4), 0), ts.Cell("shortrun", 3, (16, 8, 4), 20)
    _fake_run(tmp_path, second, 0, [1.0, 2.0, 3.0], [7, 8, 9])
    _fake_run(tmp_path, first, 0, [30.0, 10.0], [9, 7])
    row = ts.paired_row(tmp_path, first, second, 0, "reconstruction_mse")
    assert row["examples"] == 2 and row["mean_difference"] == pytest.approx(((10 - 1) + (30 - 3)) / 2)


def test_seeds_option():
    assert compare.parse_seeds("0,1, 2", None) == [0, 1, 2]
    assert compare.parse_seeds(None, compare.BUDGETS["cpu"]) == [0, 1, 2]
    assert compare.parse_seeds(None, None) == [0]
    for bad in ("a,b", ","):
        with pytest.raises(SystemExit, match="error: --seeds"):
            compare.parse_seeds(bad, None)


def test_methods_option():
    import pyro_suite

    assert compare.parse_methods(None, pyro_suite.METHODS, "pyro") is None
    chosen = compare.parse_methods("shortrun-one-se, vae", pyro_suite.METHODS, "pyro")
    assert chosen == ("shortrun-one-se", "vae")
    assert "pyro-svi" not in pyro_suite.allowed_methods("ladder")
    for bad in ("", ",", "shortrun,hmc"):
        with pytest.raises(SystemExit, match="error: --methods for --suite pyro"):
            compare.parse_methods(bad, pyro_suite.METHODS, "pyro")
    with pytest.raises(SystemExit, match="error: --methods for --suite ladder-curve"):
        compare.parse_methods("pyro-svi", pyro_suite.allowed_methods("ladder"), "ladder-curve")


def test_iterations_option():
    assert compare.parse_iterations(None) is None
    assert compare.parse_iterations("300, 1200") == (300, 1200)
    for bad in ("", "a", "0,5", "1200,300", "300,300"):
        with pytest.raises(SystemExit, match="error: --iterations takes increasing positive integers"):
            compare.parse_iterations(bad)


def test_a_learning_curve_report_trains_nothing_and_shows_the_missing_runs_as_dashes(tmp_path):
    import pyro_suite

    done = tmp_path / "runs" / "vae-8-seed0"
    done.mkdir(parents=True)
    result = {"model": "pyro", "method": "vae", "iterations": 8, "seed": 0, "seconds_per_iteration": 0.1,
              "own": [0.2, 0.4], "reference": [0.1, 0.3]}
    (done / "result.json").write_text(json.dumps(result))
    results = pyro_suite.run_pyro(tmp_path / "no-data", tmp_path, "smoke", methods=("vae", "pyro-svi"),
                                  report=True)
    assert [(r["method"], r["iterations"]) for r in results["runs"]] == [("vae", 8)]
    text = pyro_suite.markdown(results)
    assert "| vae | own | - | 0.3000 ± nan (1) |" in text and "| pyro-svi | own | - | - |" in text
    assert not (tmp_path / "runs" / "pyro-svi-8-seed0").exists()


def test_a_methods_subset_names_only_its_methods_and_their_pairs():
    import pyro_suite

    runs = [{"method": m, "iterations": t, "seed": 0, "seconds_per_iteration": 0.1, "own": [0.2, 0.1 * t / 8],
             "reference": [0.1, 0.05]} for m in ("shortrun-one-se", "shortrun-last") for t in (4, 8)]
    results = {"budget": "smoke", "model": "pyro", "methods": ("shortrun-one-se", "shortrun-last"),
               "settings": pyro_suite.BUDGETS["smoke"], "runs": runs, "machine": "CPU"}
    text = pyro_suite.markdown(results)
    assert "vae" not in text and "pyro-svi" not in text
    assert "| shortrun-one-se below shortrun-last at T=8 | own | +0.0000 ± 0.0000 (inconclusive) |" in text
    assert "| shortrun below" not in text  # the default is not in the subset


def test_claims_without_the_ablations():
    tables = {"samplers": ts.table_cells(["shortrun", "vae"], 3, 20, FLOW)["samplers"]}
    assert [c.text for c in ts.claims(tables, None)] == ["shortrun below vae (equal iterations)"] * 2


def test_claims_of_the_ablations_alone():
    every = ts.table_cells(["shortrun", "vae"], 3, 20, FLOW)
    tables = {key: every[key] for key in ("layers-matched", "steps")}
    assert [c.text for c in ts.claims(tables, None)] == [
        "L=3 below L=1 (28 latent units)", "L=5 below L=3 (28 latent units)",
        "K=10 below K=5", "K=20 below K=10", "K=40 below K=20"]
    assert ts.sampler_pairs(tables, None) == []


def test_tables_option():
    assert compare.parse_tables("steps, layers-paper") == ("layers-paper", "steps")  # in the tables' order
    assert compare.parse_tables(",".join(ts.TABLES)) == ts.TABLES
    for bad in ("", ",", "steps,layers"):
        with pytest.raises(SystemExit, match="error: --tables takes comma-separated names"):
            compare.parse_tables(bad)


def test_model_options_reach_every_cell_but_not_its_shape(tmp_path):
    args = argparse.Namespace(data_dir=tmp_path, seeds=[0], device="cpu",
                              model_opt=compare.parse_model_options(["sigma_head=softplus"]))
    spec = compare.run_spec(compare.BUDGETS["cpu"], "shortrun", 5, 20, args, latent_dims=(8, 6, 6, 4, 4))
    assert spec.model.options == {"num_layers": 5, "nf": 16, "sigma_head": "softplus", "latent_dims": (8, 6, 6, 4, 4)}
    for bad in (["nf=8"], ["latent_dims=4"], ["sigma_head"]):
        with pytest.raises(SystemExit, match="error: --model-opt"):
            compare.parse_model_options(bad)


def test_learning_curve_tables_name_only_the_suites_methods():
    import pyro_suite

    runs = [{"method": m, "iterations": t, "seed": 0, "seconds_per_iteration": 0.1, "own": [0.2, 0.1 * t / 8],
             "reference": [0.1, 0.05]} for m in ("shortrun", "vae") for t in (4, 8)]
    results = {"budget": "smoke", "model": "ladder", "settings": pyro_suite.BUDGETS["smoke"], "runs": runs,
               "machine": "CPU"}
    text = pyro_suite.markdown(results)
    assert "pyro-svi" not in text and "vae-constant-lr" not in text
    assert "| shortrun: T=8 below T=4 | own |" in text and "| shortrun below vae at T=8 | own |" in text


def test_learning_curve_tables_show_the_own_error_on_training_images_where_it_was_measured():
    import pyro_suite

    runs = [{"method": "shortrun", "iterations": t, "seed": 0, "seconds_per_iteration": 0.1, "own": [0.2, 0.4],
             "own_train": [0.1, 0.1 * t / 8], "reference": [0.1, 0.05]} for t in (4, 8)]
    results = {"budget": "smoke", "model": "ladder", "methods": ("shortrun",),
               "settings": pyro_suite.BUDGETS["smoke"], "runs": runs, "machine": "CPU"}
    text = pyro_suite.markdown(results)
    assert "| shortrun | own_train | 0.0750 ± nan (1) | 0.1000 ± nan (1) |" in text
    assert "| shortrun: T=8 below T=4 | own_train | +0.0250 ± 0.0250 (inconclusive) |" in text
    del runs[0]["own_train"]  # an older result: its cell is a dash, its pair is not compared
    text = pyro_suite.markdown(results)
    assert "| shortrun | own_train | - | 0.1000 ± nan (1) |" in text
    assert "| shortrun: T=8 below T=4 | own_train | - |" in text
    runs[1].pop("own_train")  # none measured: no such rows at all
    assert "own_train" not in pyro_suite.markdown(results)


@pytest.mark.parametrize("model_key", ["ladder", "pyro"])
def test_the_held_schedule_makes_every_run_the_prefix_of_the_longest(model_key, tmp_path):
    import pyro_suite

    from inferkit.trainer import learning_rate, observation_sigma

    configs = {t: pyro_suite.run_spec("shortrun-constant-lr", t, 0, tmp_path, model_key).train
               for t in (300, 1200, 4800)}
    for t in range(0, 300, 7):
        assert len({learning_rate(c, t) for c in configs.values()}) == 1
        assert len({observation_sigma(c, t) for c in configs.values()}) == 1
    assert {learning_rate(configs[4800], t) for t in (0, 4799)} == {pyro_suite.LEARNING_RATE}
    assert observation_sigma(configs[4800], pyro_suite.HELD_SIGMA_ANNEAL) == pytest.approx(configs[4800].sigma_end)
    default = {t: pyro_suite.run_spec("shortrun", t, 0, tmp_path, model_key).train for t in (300, 4800)}
    assert observation_sigma(default[300], 200) != observation_sigma(default[4800], 200)  # the suite's default


@pytest.mark.parametrize("model_key", ["ladder", "pyro"])
def test_the_momentum_method_is_heavy_ball_short_run_tuned_by_kl_grid(model_key, tmp_path):
    import pyro_suite

    from inferkit.registry import plugin_class
    from inferkit.samplers.shortrun_momentum import ShortRunMomentum

    spec = pyro_suite.run_spec("shortrun-momentum", 300, 0, tmp_path, model_key)
    assert (spec.sampler.name, spec.tuner.name, spec.tuner.options, spec.train.tune_every) == (
        "shortrun-momentum", "kl-grid", {}, 100)
    assert spec.train == pyro_suite.run_spec("shortrun", 300, 0, tmp_path, model_key).train
    sampler = plugin_class("sampler", spec.sampler.name)(**spec.sampler.options)
    assert isinstance(sampler, ShortRunMomentum)
    assert (sampler.num_steps, float(sampler.momentum), sampler.nesterov) == (20, 0.5, False)


@pytest.mark.parametrize("model_key", ["ladder", "pyro"])
def test_the_epoch_method_is_shortrun_tuned_once_per_pass_over_the_training_images(model_key, tmp_path):
    import pyro_suite

    epoch = pyro_suite.run_spec("shortrun-epoch", 300, 0, tmp_path, model_key)
    every_100 = pyro_suite.run_spec("shortrun", 300, 0, tmp_path, model_key)
    assert (epoch.sampler, epoch.tuner) == (every_100.sampler, every_100.tuner)
    assert (epoch.train.tune_every, every_100.train.tune_every) == (250, 100)
    assert replace(epoch.train, tune_every=100) == every_100.train
    assert epoch.train.tune_every * epoch.train.batch_size == 8000  # one pass over the 8,000 training images
