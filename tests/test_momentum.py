"""``shortrun-momentum``: heavy-ball and Nesterov short-run dynamics against closed forms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import inferkit
from inferkit.errors import UserError
from inferkit.objective import LogDetEstimator, kl_objective
from inferkit.samplers.shortrun import ShortRun
from inferkit.samplers.shortrun_momentum import ShortRunMomentum
from inferkit.tuners.kl_grad import KLGrad
from inferkit.tuners.kl_grid import KLGrid

FLOAT64 = torch.float64


def momentum_flow_matrix(precision, step_sizes, momentum, nesterov):
    """On ``log p = -0.5 (z-m)^T P (z-m)``: ``z_k - m = A_k (z_0 - m)``, ``v_k = B_k (z_0 - m)`` with
    ``B_{k+1} = mu B_k - s_k P (A_k [+ mu B_k])`` and ``A_{k+1} = A_k + B_{k+1}``."""
    eye = torch.eye(precision.shape[0], dtype=FLOAT64)
    a, b = eye.clone(), torch.zeros_like(eye)
    for s in step_sizes:
        direction = a + momentum * b if nesterov else a
        b = momentum * b - s * precision @ direction
        a = a + b
    return a


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(latent_dim=st.integers(1, 4), momentum=st.floats(0.0, 0.9), ratio=st.floats(0.05, 0.5),
       num_steps=st.integers(1, 5), nesterov=st.booleans(), seed=st.integers(0, 100))
@example(latent_dim=3, momentum=0.5, ratio=0.5, num_steps=2, nesterov=False, seed=0)  # A singular: skipped
def test_pointwise_identity_against_the_gaussian_law_of_z_k(tiny_linear_gaussian,
                                                            latent_dim, momentum, ratio, num_steps, nesterov, seed):
    """Per draw: ``J + log p(x) = log q(z_K) - log p(z_K | x)`` with ``q = N((I - A) m, A A^T)``;
    the tangent recursion (stepwise) and torch.func's Jacobian (exact) agree to float64 precision."""
    model = tiny_linear_gaussian(latent_dim=latent_dim, seed=seed, sigma=0.6).requires_grad_(False)
    x = model.sample(3, generator=torch.Generator().manual_seed(seed))
    precision = model.posterior_precision()
    step = ratio / float(torch.linalg.eigvalsh(precision).max())
    a = momentum_flow_matrix(precision, [step] * num_steps, momentum, nesterov)
    # The identity holds only for a diffeomorphism z_0 -> z_K. Momentum can make A exactly singular
    # (heavy-ball, mu = 0.5, s lambda_max = 0.5, K = 2: the top eigenvalue of A is
    # 1 - (2 + mu) s lambda + (s lambda)^2 = 0), and then q = N(., A A^T) has no density and J is no KL;
    # near such points log|det A| and log q are rounding noise. Keep A well away from singular;
    # test_a_singular_momentum_flow_is_reported_not_invertible checks what the objective says there.
    assume(float(torch.linalg.svdvals(a).min()) > 1e-3)
    sampler = ShortRunMomentum(num_steps=num_steps, step_size=step, momentum=momentum, nesterov=nesterov, units="raw")
    values = {}
    for logdet in ("stepwise", "exact"):
        with torch.no_grad():
            values[logdet] = kl_objective(model, sampler, x, estimator=LogDetEstimator(logdet),
                                          generator=torch.Generator().manual_seed(1)).objective
    torch.testing.assert_close(values["stepwise"], values["exact"], rtol=1e-9, atol=1e-9)

    z0 = model.sample_prior(3, generator=torch.Generator().manual_seed(1))[0]
    mean, cov = model.posterior(x)
    z_k = mean + (z0 - mean) @ a.T
    q = torch.distributions.MultivariateNormal(mean @ (torch.eye(latent_dim, dtype=FLOAT64) - a).T,
                                               covariance_matrix=a @ a.T)
    posterior = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    expected = q.log_prob(z_k) - posterior.log_prob(z_k) - model.log_marginal(x)
    torch.testing.assert_close(values["exact"], expected, rtol=1e-7, atol=1e-7)


def test_a_singular_momentum_flow_is_reported_not_invertible():
    """Heavy-ball with mu = 0.5 and K = 2 steps of s = 0.5 / lambda collapses the eigendirection of
    ``lambda``: ``dz_K/dz_0`` is singular, ``q`` has no density, and the objective's info says so. The
    model is chosen so that the arithmetic is exact (precision diag(2, 1.25), s = 1/4): on a generic
    model rounding leaves a smallest singular value of order 1e-17 in place of 0."""
    model = inferkit.load_model("linear-gaussian", latent_dim=2, data_dim=2, sigma=0.5,
                                dtype="float64").requires_grad_(False)
    with torch.no_grad():
        model.weight.copy_(torch.diag(torch.tensor([0.5, 0.25], dtype=FLOAT64)))
    precision = model.posterior_precision()
    torch.testing.assert_close(precision, torch.diag(torch.tensor([2.0, 1.25], dtype=FLOAT64)), rtol=0, atol=0)
    step = 0.5 / 2.0
    a = momentum_flow_matrix(precision, [step] * 2, 0.5, False)
    assert float(torch.linalg.svdvals(a).min()) == 0.0  # the closed form: rank 1
    x = model.sample(3, generator=torch.Generator().manual_seed(0))
    for nesterov, singular in ((False, True), (True, False)):
        sampler = ShortRunMomentum(num_steps=2, step_size=step, momentum=0.5, nesterov=nesterov, units="raw")
        for logdet in ("stepwise", "exact"):
            with torch.no_grad():
                info = kl_objective(model, sampler, x, estimator=LogDetEstimator(logdet),
                                    generator=torch.Generator().manual_seed(1)).info
            if singular:
                assert not info.invertible and info.min_eigenvalue <= 0, (logdet, info)
            else:  # Nesterov's look-ahead keeps the same step invertible
                assert info.invertible and info.min_eigenvalue > 0, (logdet, info)


def test_zero_momentum_is_plain_gradient_flow_and_infer_matches_the_path(tiny_linear_gaussian):
    model = tiny_linear_gaussian(sigma=0.6).requires_grad_(False)
    x = model.sample(4, generator=torch.Generator().manual_seed(0))
    plain = ShortRun(num_steps=4, step_size=0.02, units="raw")
    still = ShortRunMomentum(num_steps=4, step_size=0.02, momentum=0.0, units="raw")
    for sampler in (still, ShortRunMomentum(num_steps=4, step_size=0.02, momentum=0.7, nesterov=True, units="raw")):
        inferred = sampler.infer(model, x, generator=torch.Generator().manual_seed(3)).z[0]
        z0 = model.sample_prior(4, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(inferred, sampler.flow(model, x, z0, sampler.step_sizes(1))[0], rtol=1e-12,
                                   atol=1e-12)
    torch.testing.assert_close(still.infer(model, x, generator=torch.Generator().manual_seed(5)).z[0],
                               plain.infer(model, x, generator=torch.Generator().manual_seed(5)).z[0])
    generator = torch.Generator().manual_seed(2)
    j_plain = kl_objective(model, plain, x, generator=generator).objective
    j_still = kl_objective(model, still, x, generator=torch.Generator().manual_seed(2)).objective
    torch.testing.assert_close(j_plain, j_still, rtol=1e-10, atol=1e-10)


def test_momentum_speeds_up_the_flow_on_an_ill_conditioned_posterior(tiny_linear_gaussian):
    """Heavy-ball's point: with the same s and K, z_K lands closer to the posterior mean."""
    model = tiny_linear_gaussian(latent_dim=4, seed=3, sigma=0.6).requires_grad_(False)
    x = model.sample(8, generator=torch.Generator().manual_seed(0))
    mean, _ = model.posterior(x)
    step = 0.5 / float(torch.linalg.eigvalsh(model.posterior_precision()).max())
    errors = {}
    for mu in (0.0, 0.6):
        sampler = ShortRunMomentum(num_steps=10, step_size=step, momentum=mu, units="raw")
        z = sampler.infer(model, x, generator=torch.Generator().manual_seed(0)).z[0]
        errors[mu] = float((z - mean).pow(2).sum(-1).mean())
    assert errors[0.6] < errors[0.0]


@pytest.mark.slow
def test_tuners_on_momentum_and_the_stochastic_estimator_refuses(tiny_linear_gaussian):
    model = tiny_linear_gaussian(sigma=0.6).requires_grad_(False)
    x = model.sample(4, generator=torch.Generator().manual_seed(0))
    sampler = inferkit.load_sampler("shortrun-momentum", num_steps=4, step_size="0.01", momentum="0.3")
    result = KLGrid(grid=(0.005, 0.01, 0.02, 0.04), search="grid").tune(model, sampler, x)
    assert [h["step_size"] for h in result.history[:4]] == [0.005, 0.01, 0.02, 0.04]
    assert result.hyperparameters["step_size"].item() in [h["step_size"] for h in result.history]
    with pytest.raises(UserError, match="stochastic does not apply"):
        KLGrid(logdet="stochastic").tune(model, sampler, x)

    start = ShortRunMomentum(num_steps=4, step_size=0.01, momentum=0.3, units="raw")
    tuner = inferkit.load_tuner("kl-grad", parameters="step_size,momentum", num_samples="16", learning_rate="0.1",
                                max_iterations="60")
    result = tuner.tune(model, start, x)
    assert set(result.hyperparameters) == {"step_size", "momentum"}
    assert start.momentum.item() == 0.3  # unchanged until the caller applies the result
    start.set_hyperparameters(result.hyperparameters)
    assert 0 < start.momentum.item() < 1 and "momentum" in result.history[0]
    precision = model.posterior_precision()

    def closed_form(step, mu):
        mean, cov = model.posterior(x)
        a = momentum_flow_matrix(precision, [step] * 4, mu, False)
        from inferkit.models.linear_gaussian import gaussian_kl

        eye = torch.eye(a.shape[0], dtype=FLOAT64)
        return float(gaussian_kl(mean @ (eye - a).T, (a @ a.T).expand(4, -1, -1), mean,
                                 cov.expand(4, -1, -1)).mean())

    assert closed_form(start.step_size.item(), start.momentum.item()) < closed_form(0.01, 0.3)
    with pytest.raises(UserError, match="no momentum"):
        tuner.tune(model, ShortRun(num_steps=2, step_size=0.01, units="raw"), x)


def test_bad_momentum_options():
    for momentum in (-0.1, 1.0, 2.0):
        with pytest.raises(UserError):
            ShortRunMomentum(momentum=momentum, units="raw")
    with pytest.raises(UserError):
        KLGrad(parameters=("momentum",))
    with pytest.raises(UserError):
        KLGrad(parameters=("step_size", "temperature"))
