"""``benchmarks/step_size_probe.py``: each row is the test MSE and J of K noise-free steps at its step
size, on the images and with the log-determinant asked for."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_LADDER_RUN, run_cli

from inferkit.eval.reconstruction import reconstruction_mse
from inferkit.objective import LogDetEstimator, kl_objective
from inferkit.runs import CHECKPOINT_FILE, RunSpec, build_objects, restore_checkpoint
from inferkit.samplers.shortrun import ShortRun

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import step_size_probe


@pytest.fixture
def trained_run(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli([*TINY_LADDER_RUN, "--out", run], capsys)
    assert code == 0, err
    return run


@pytest.mark.parametrize("logdet, split", [("stepwise", "test"), ("stochastic", "train")])
def test_rows_are_the_mse_and_j_of_the_flow_at_each_step_size(trained_run, logdet, split):
    step_sizes = [0.02, 0.2]
    rows = step_size_probe.probe(trained_run, None, step_sizes, examples=4, j_examples=3, draws=1,
                                 logdet=logdet, j_split=split)
    data, model, sampler, _ = build_objects(RunSpec.load(trained_run))
    restore_checkpoint(trained_run / CHECKPOINT_FILE, "cpu", model, sampler)
    model.eval()
    assert model.observation_sigma != 0.3  # the checkpoint's sigma, not the model's default
    x_j = (data.train if split == "train" else data.test).x[:3]
    assert [row["step_size"] for row in rows] == step_sizes
    for row, s in zip(rows, step_sizes):
        flow = ShortRun(num_steps=3, step_size=s)
        assert row["test_mse"] == pytest.approx(reconstruction_mse(model, flow, data.test.x[:4]), rel=1e-6)
        with torch.no_grad():
            expected = kl_objective(model, flow, x_j, estimator=LogDetEstimator(logdet),
                                    generator=torch.Generator().manual_seed(0))
        assert row["J_mean"] == pytest.approx(float(expected.objective.mean()), rel=1e-9)
        assert row["min_eigenvalue"] == pytest.approx(expected.info.min_eigenvalue, rel=1e-9)


@pytest.mark.parametrize("text", ["0.1,abc", "0.1,-0.2", "", "nan"])
def test_bad_step_sizes_are_refused_by_the_parser(text):
    with pytest.raises(SystemExit) as refused:
        step_size_probe.main(["run", "--step-sizes", text])
    assert refused.value.code == 2


def test_step_sizes_are_parsed_in_order():
    assert step_size_probe.step_size_list("0.05,0.01,0.2") == [0.05, 0.01, 0.2]


def test_more_steps_than_the_run_probe_a_longer_flow(trained_run):
    rows = step_size_probe.probe(trained_run, None, [0.1], examples=4, j_examples=1, draws=1, num_steps=7)
    data, model, sampler, _ = build_objects(RunSpec.load(trained_run))
    restore_checkpoint(trained_run / CHECKPOINT_FILE, "cpu", model, sampler)
    model.eval()
    assert sampler.num_steps == 3
    longer = reconstruction_mse(model, ShortRun(num_steps=7, step_size=0.1), data.test.x[:4])
    assert rows[0]["test_mse"] == pytest.approx(longer, rel=1e-6)
    assert rows[0]["test_mse"] != pytest.approx(reconstruction_mse(model, ShortRun(num_steps=3, step_size=0.1),
                                                                   data.test.x[:4]), rel=1e-6)
    with pytest.raises(SystemExit) as refused:
        step_size_probe.main([str(trained_run), "--num-steps", "0"])
    assert refused.value.code == 2


def test_momentum_probes_heavy_ball_steps_and_zero_probes_gradient_flow(trained_run):
    from inferkit.samplers.shortrun_momentum import ShortRunMomentum

    data, model, sampler, _ = build_objects(RunSpec.load(trained_run))
    restore_checkpoint(trained_run / CHECKPOINT_FILE, "cpu", model, sampler)
    model.eval()
    x = data.test.x[:4]
    heavy_ball = ShortRunMomentum(num_steps=3, step_size=0.1, momentum=0.5)
    rows = {mu: step_size_probe.probe(trained_run, None, [0.1], examples=4, j_examples=1, draws=1, momentum=mu)[0]
            for mu in (0.5, 0.0)}
    assert rows[0.5]["test_mse"] == pytest.approx(reconstruction_mse(model, heavy_ball, x), rel=1e-6)
    assert rows[0.0]["test_mse"] == pytest.approx(reconstruction_mse(model, ShortRun(num_steps=3, step_size=0.1), x),
                                                  rel=1e-6)
    assert rows[0.5]["test_mse"] != pytest.approx(rows[0.0]["test_mse"], rel=1e-6)
    with torch.no_grad():
        expected = kl_objective(model, heavy_ball, data.test.x[:1], estimator=LogDetEstimator("stepwise"),
                                generator=torch.Generator().manual_seed(0))
    assert rows[0.5]["J_mean"] == pytest.approx(float(expected.objective.mean()), rel=1e-9)


def test_a_momentum_run_is_probed_with_its_own_steps(trained_run):
    from inferkit.samplers.shortrun_momentum import ShortRunMomentum

    run_sampler = ShortRunMomentum(num_steps=3, momentum=0.3, nesterov=True)
    flow = step_size_probe.probed_flow(run_sampler, 0.07, 5, None)
    assert isinstance(flow, ShortRunMomentum)
    assert (flow.num_steps, float(flow.momentum), flow.nesterov) == (5, pytest.approx(0.3), True)
    assert type(step_size_probe.probed_flow(run_sampler, 0.07, 5, 0.0)) is ShortRun
    assert type(step_size_probe.probed_flow(ShortRun(num_steps=3), 0.07, 5, None)) is ShortRun


@pytest.mark.parametrize("argv", [["--momentum", "1.0"], ["--momentum", "-0.1"],
                                  ["--momentum", "0.5", "--logdet", "stochastic"]])
def test_bad_momentum_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        step_size_probe.main(["run", *argv])
    assert refused.value.code == 2
    assert "momentum" in capsys.readouterr().err
