"""The step size in the authors' units: gradient coefficient ``s^2 / 2``, noise ``s eps``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
from inferkit.errors import UserError
from inferkit.samplers.abp import ABP
from inferkit.samplers.langevin import Langevin
from inferkit.samplers.shortrun import ShortRun
from inferkit.samplers.shortrun_momentum import ShortRunMomentum
from inferkit.tuners.kl_grad import KLGrad
from inferkit.tuners.kl_grid import PAPER_GRID, KLGrid

F64 = torch.float64


def score(model, x, z):
    z = z.detach().requires_grad_()
    (grad,) = torch.autograd.grad(model.log_joint(x, (z,)).sum(), z)
    return grad


def prior_and_noise(model, n, seed, *, noise: bool):
    """The draws a sampler makes from ``generator`` for one step: ``z_0``, then ``eps_0``."""
    generator = torch.Generator().manual_seed(seed)
    z0 = model.sample_prior(n, generator=generator)[0]
    eps = torch.randn(z0.shape, generator=generator, dtype=z0.dtype) if noise else None
    return z0, eps


@settings(max_examples=20, deadline=None)
@given(s=st.floats(0.005, 0.3), seed=st.integers(0, 1000))
def test_one_shortrun_step_is_z_plus_half_s_squared_grad(tiny_linear_gaussian, s, seed):
    model = tiny_linear_gaussian(data_dim=6)
    x = model.sample(3, generator=torch.Generator().manual_seed(1)).detach()
    z1 = ShortRun(num_steps=1, step_size=s).infer(model, x, generator=torch.Generator().manual_seed(seed)).z[0]
    z0, _ = prior_and_noise(model, 3, seed, noise=False)
    torch.testing.assert_close(z1, z0 + (s * s / 2) * score(model, x, z0), rtol=1e-12, atol=1e-12)
    raw = ShortRun(num_steps=1, step_size=s, units="raw").infer(model, x, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(raw.z[0], z0 + s * score(model, x, z0), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(z1, raw.z[0])  # the two conventions differ (the test can fail)


@settings(max_examples=20, deadline=None)
@given(s=st.floats(0.005, 0.3), seed=st.integers(0, 1000))
def test_one_langevin_step_adds_s_eps(tiny_linear_gaussian, s, seed):
    model = tiny_linear_gaussian(data_dim=6)
    x = model.sample(3, generator=torch.Generator().manual_seed(1)).detach()
    z1 = Langevin(num_steps=1, step_size=s).infer(model, x, generator=torch.Generator().manual_seed(seed)).z[0]
    z0, eps = prior_and_noise(model, 3, seed, noise=True)
    torch.testing.assert_close(z1, z0 + (s * s / 2) * score(model, x, z0) + s * eps, rtol=1e-12, atol=1e-12)
    raw = Langevin(num_steps=1, step_size=s, units="raw").infer(model, x, generator=torch.Generator().manual_seed(seed))
    expected = z0 + s * score(model, x, z0) + math.sqrt(2 * s) * eps
    torch.testing.assert_close(raw.z[0], expected, rtol=1e-12, atol=1e-12)


def test_abp_step_is_in_the_same_units(tiny_linear_gaussian):
    model = tiny_linear_gaussian(data_dim=6)
    x = model.sample(2, generator=torch.Generator().manual_seed(1)).detach()
    s = 0.3
    sampler = ABP(num_steps=1, step_size=s, test_steps=1)
    z1 = sampler.infer(model, x, generator=torch.Generator().manual_seed(4)).z[0]
    z0, eps = prior_and_noise(model, 2, 4, noise=True)
    torch.testing.assert_close(z1, z0 + (s * s / 2) * score(model, x, z0) + s * eps, rtol=1e-12, atol=1e-12)
    assert ABP().step_size.item() == pytest.approx(0.1)


def test_momentum_and_step_size_matrix_use_the_coefficient():
    sampler = ShortRunMomentum(num_steps=3, step_size=0.2)
    assert torch.allclose(sampler.step_sizes(2), torch.full((3, 2), 0.02, dtype=F64))
    layer = ShortRun(num_steps=2, step_size=(0.1, 0.2), per="layer")
    assert torch.allclose(layer.step_sizes(2), torch.tensor([[0.005, 0.02]] * 2, dtype=F64))
    value = torch.tensor(0.3, dtype=F64, requires_grad=True)
    (gradient,) = torch.autograd.grad(ShortRun(num_steps=1).step_sizes(1, value).sum(), value)
    assert gradient.item() == pytest.approx(0.3)  # d(s^2 / 2)/ds = s: differentiable in s


def test_units_are_validated_and_named_in_options():
    with pytest.raises(UserError, match="units must be one of langevin, raw"):
        ShortRun(units="coefficient")
    with pytest.raises(UserError, match="units"):
        inferkit.load_sampler("abp", units="delta")
    assert inferkit.load_sampler("langevin", units="raw").units == "raw"
    assert "units='raw'" in repr(ShortRun(units="raw")) and "units" not in repr(ShortRun())


def closed_form_argmin(model, x, num_steps, candidates):
    """The step size s among ``candidates`` with the smallest exact KL of the flow ``S = s^2 / 2``."""
    kls = [float(model.flow_kl(x, torch.full((num_steps,), s * s / 2, dtype=F64)).mean()) for s in candidates]
    return candidates[min(range(len(kls)), key=kls.__getitem__)], kls


def test_kl_grid_in_the_papers_units_picks_the_closed_form_argmin(tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6, sigma=0.5)
    x = noisy_data(model, 4)
    num_steps = 3
    lam = float(torch.linalg.eigvalsh(model.posterior_precision()).max())
    optimum = math.sqrt(2 / lam)  # S lambda_max = 1 near here; a grid around it in s
    grid = tuple(optimum * f for f in (0.4, 0.6, 0.8, 1.0, 1.2, 1.4))
    result = KLGrid(grid=grid, num_samples=256, batch_size=4, max_extensions=0, logdet="exact").tune(
        model, ShortRun(num_steps=num_steps), x)
    expected, kls = closed_form_argmin(model, x, num_steps, grid)
    assert result.hyperparameters["step_size"].item() == pytest.approx(expected)
    smallest, runner_up = sorted(kls)[:2]
    assert runner_up - smallest > 0.05  # the argmin is not a near-tie


def test_kl_grad_descends_on_log_s_to_the_closed_form_optimum(tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6, sigma=0.5)
    x = noisy_data(model, 4)
    lam = float(torch.linalg.eigvalsh(model.posterior_precision()).max())
    candidates = [math.sqrt(2 / lam) * 2 ** (i / 40 - 1) for i in range(81)]
    expected, _ = closed_form_argmin(model, x, 2, candidates)
    result = KLGrad(num_samples=256, batch_size=4, max_iterations=200, logdet="exact").tune(
        model, ShortRun(num_steps=2, step_size=0.5 * expected), x)
    assert result.hyperparameters["step_size"].item() == pytest.approx(expected, rel=0.05)


def test_kl_grad_by_default_accepts_a_finite_non_invertible_iterate_and_halves_a_divergent_start(
        tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6, sigma=0.5)
    x = noisy_data(model, 2)
    lam = float(torch.linalg.eigvalsh(model.posterior_precision()).max())
    folding = math.sqrt(2 * 3.0 / lam)  # S lambda_max = 3: I + S H has an eigenvalue -2
    result = KLGrad(max_iterations=2).tune(model, ShortRun(num_steps=3, step_size=folding), x)
    first, second = result.history[:2]
    assert first["invertible"] is False and math.isfinite(first["J"])
    assert second["step_size"] == pytest.approx(folding * math.exp(-0.025), rel=1e-6)  # an Adam step, no halving
    vetoed = KLGrad(max_iterations=2, require_invertible=True).tune(model, ShortRun(num_steps=3, step_size=folding), x)
    assert vetoed.history[1]["step_size"] == pytest.approx(folding / 2)
    diverging = KLGrad(max_iterations=400, max_shrinks=400).tune(model, ShortRun(num_steps=3, step_size=1e100), x)
    assert not math.isfinite(diverging.history[0]["J"])
    assert diverging.history[1]["step_size"] == pytest.approx(1e100 / 2)


def test_the_default_grid_is_the_papers_in_their_units():
    assert KLGrid().grid == pytest.approx([0.01 * i for i in range(1, 16)])
    sampler = ShortRun(num_steps=1, step_size=0.05)
    assert sampler.step_sizes(1).item() == pytest.approx(0.00125)  # the authors' 0.05 as a coefficient
    assert PAPER_GRID[0] ** 2 / 2 == pytest.approx(5e-5) and PAPER_GRID[-1] ** 2 / 2 == pytest.approx(0.01125)


def test_the_tuned_step_size_of_a_short_mnist_run_lies_inside_the_papers_grid(mnist_dir, tmp_path, capsys):
    """The ladder generator on real MNIST, tuned by kl-grid on the whole of the papers' grid: the
    argmin of J in the authors' units is an interior point of 0.01..0.15 (J rises on both sides), not
    an end of the grid nor an extension beyond it."""
    import json

    from cli_helpers import run_cli

    out = tmp_path / "run"
    code, _, err = run_cli(["run", "--model", "ladder", "--sampler", "shortrun", "--tuner", "kl-grid",
                            "--tuner-opt", "search=grid", "--tuner-opt", "batch_size=4", "--data", "mnist",
                            "--data-dir", mnist_dir, "--data-opt", "num_train=256",
                            "--data-opt", "num_test=32", "--iterations", 1, "--tune-every", 1,
                            "--train-opt", "eval_examples=8", "--quiet", "--out", out], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "tuner.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0]
    for record in records:
        chosen = record["hyperparameters"]["step_size"]
        assert PAPER_GRID[0] < chosen < PAPER_GRID[-1], record["history"]
        assert not any(p["extended"] and p["step_size"] == chosen for p in record["history"])
