"""The ``kl-grad`` tuner against the linear-Gaussian closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import minimize_scalar

import inferkit
from inferkit.errors import UserError
from inferkit.samplers.shortrun import ShortRun
from inferkit.tuners.kl_grad import KLGrad

FLOAT64 = torch.float64


def setting(tiny_linear_gaussian, latent_dim=3, data_dim=6, sigma=0.5, seed=1, batch=4):
    model = tiny_linear_gaussian(latent_dim=latent_dim, data_dim=data_dim, sigma=sigma, seed=seed)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = model.sample(batch, generator=torch.Generator().manual_seed(2))
    return model, x


def closed_form_kl(model, x, step_sizes):
    with torch.no_grad():
        return float(model.flow_kl(x, torch.as_tensor(step_sizes, dtype=FLOAT64)).mean())


def best_shared_step_size(model, x, num_steps):
    """``argmin_s KL(q_s || p(z|x))`` over one shared s in the invertible range ``s < 1 / lambda_max(P)``."""
    with torch.no_grad():
        largest = float(torch.linalg.eigvalsh(model.posterior_precision()).max())
    result = minimize_scalar(lambda s: closed_form_kl(model, x, [s] * num_steps), bounds=(1e-6, 0.999 / largest),
                             method="bounded", options={"xatol": 1e-10})
    return result.x, result.fun


@pytest.mark.slow
def test_kl_grad_reaches_the_analytic_optimum_and_energy_alone_overshoots(tiny_linear_gaussian):
    model, x = setting(tiny_linear_gaussian)
    num_steps = 5
    optimum, optimum_kl = best_shared_step_size(model, x, num_steps)
    sampler = ShortRun(num_steps=num_steps, step_size=0.005, units="raw")
    result = KLGrad(num_samples=32, learning_rate=0.1, tolerance=1e-3).tune(model, sampler, x)
    assert sampler.step_size.item() == 0.005  # the tuner changes nothing; its result is applied by the caller
    sampler.set_hyperparameters(result.hyperparameters)
    found = sampler.step_size.item()
    assert found == pytest.approx(optimum, rel=0.05)
    assert result.history[-1]["stop"] == "converged"
    assert all(point["invertible"] for point in result.history)
    # J decreased along the path and the chosen J is the lowest one recorded
    assert result.objective == min(point["J"] for point in result.history) < result.history[0]["J"]
    assert closed_form_kl(model, x, [found] * num_steps) <= optimum_kl * 1.01

    energy_sampler = ShortRun(num_steps=num_steps, step_size=0.005, units="raw")
    energy = KLGrad(num_samples=32, learning_rate=0.1, tolerance=1e-3, objective="energy").tune(
        model, energy_sampler, x)
    mode_seeking = energy.hyperparameters["step_size"].item()
    assert mode_seeking > 1.5 * optimum  # drives s up towards the edge of invertibility
    assert closed_form_kl(model, x, [mode_seeking] * num_steps) > 2 * optimum_kl


@pytest.mark.slow
def test_per_step_step_sizes_reach_a_lower_kl_than_the_best_shared_one(tiny_linear_gaussian):
    """With spread eigenvalues a schedule s_1..s_K beats every single s (closed-form KL); the shared
    optimum is a stationary point of the symmetric per-step problem, so start from an uneven one."""
    model, x = setting(tiny_linear_gaussian, latent_dim=2, data_dim=2, sigma=1.0, seed=0)
    num_steps = 4
    optimum, optimum_kl = best_shared_step_size(model, x, num_steps)
    start = [optimum * f for f in (0.5, 0.8, 1.2, 1.5)]
    sampler = ShortRun(num_steps=num_steps, step_size=tuple(start), per="step", units="raw")
    result = KLGrad(num_samples=64, learning_rate=0.1, max_iterations=300, tolerance=1e-4).tune(model, sampler, x)
    schedule = result.hyperparameters["step_size"].tolist()
    assert result.per == "step" and sampler.step_size.tolist() == pytest.approx(start)
    assert isinstance(result.history[0]["step_size"], list) and len(schedule) == num_steps
    assert closed_form_kl(model, x, schedule) < optimum_kl * 0.97


def test_per_layer_step_sizes_are_tuned_separately(tiny_ladder):
    torch.manual_seed(0)
    model = tiny_ladder(latent_dims=(4, 2), image_size=8)
    x = model.sample(2, generator=torch.Generator().manual_seed(0)).detach()
    sampler = ShortRun(num_steps=2, step_size=(0.01, 0.01), per="layer", units="raw")
    result = KLGrad(max_iterations=4, batch_size=2).tune(model, sampler, x)
    chosen = result.hyperparameters["step_size"]
    assert chosen.shape == (2,)
    assert chosen[0] != chosen[1]
    assert result.objective <= result.history[0]["J"]
    assert all(p.grad is None for p in model.parameters())  # only log s was differentiated


def test_with_require_invertible_a_non_invertible_start_is_halved_and_an_overshoot_is_undone(tiny_linear_gaussian):
    model, x = setting(tiny_linear_gaussian)
    with torch.no_grad():
        largest = float(torch.linalg.eigvalsh(model.posterior_precision()).max())
    sampler = ShortRun(num_steps=3, step_size=3.0 / largest, units="raw")  # 1 - s lambda_max < 0: F singular-ish
    result = KLGrad(num_samples=8, max_iterations=30, require_invertible=True).tune(model, sampler, x)
    assert result.history[0]["invertible"] is False
    chosen = result.hyperparameters["step_size"].item()
    assert chosen < 1.0 / largest
    assert chosen == pytest.approx(
        min((p["step_size"] for p in result.history if p["invertible"]), key=lambda s: abs(s - chosen)))
    assert sampler.step_size.item() == 3.0 / largest


def test_nothing_invertible_raises_and_leaves_the_sampler(tiny_linear_gaussian):
    model, x = setting(tiny_linear_gaussian)
    sampler = ShortRun(num_steps=3, step_size=50.0, units="raw")
    with pytest.raises(UserError, match="not invertible"):
        KLGrad(max_shrinks=1, require_invertible=True).tune(model, sampler, x)
    assert sampler.step_size.item() == 50.0
    assert isinstance(sampler.step_size, torch.Tensor) and not sampler.step_size.requires_grad


def test_kl_grad_options_by_name_and_errors():
    tuner = inferkit.load_tuner("kl-grad", learning_rate="0.2", logdet="stochastic", num_probes="8")
    assert isinstance(tuner, KLGrad) and tuner.learning_rate == 0.2
    assert tuner.objective.logdet == "stochastic" and tuner.objective.num_probes == 8
    for kwargs in ({"learning_rate": 0.0}, {"learning_rate": math.inf}, {"max_iterations": 0},
                   {"tolerance": 0.0}, {"objective": "mode"}, {"logdet": "approx"}, {"num_samples": 0}):
        with pytest.raises(UserError):
            KLGrad(**kwargs)
