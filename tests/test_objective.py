"""kl_objective against the linear-Gaussian closed forms (float64).

For noise-free gradient flow on the linear-Gaussian model, ``z_K = A z_0 + (I - A) m`` with
``A = prod_k (I - S_k P)``, so ``q_s = N((I - A) m, A A^T)`` and, for *every* draw ``z_0``,

    log p_0(z_0) - log|det A| - log p(x, z_K) + log p(x) = log q_s(z_K) - log p(z_K | x)

(change of variables, then Bayes). Averaged over z_0 ~ p_0 the right side is KL(q_s || p(z|x)), so
the identity per draw is what makes ``E[J] + log p(x) = KL`` exact.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inferkit import Inference, LogDetEstimator, Model, Sampler, UserError, kl_objective
from inferkit.latents import flatten_latents, unflatten_latents
from inferkit.models.linear_gaussian import LinearGaussian
from inferkit.objective import BoundFlow, KLObjective, exact_log_det, stepwise_log_det
from inferkit.samplers import Langevin, ShortRun

F64 = torch.float64
SETTINGS = settings(max_examples=20, deadline=None)


# -- models with closed forms -------------------------------------------------------------------
class SplitLinearGaussian(LinearGaussian):
    """The linear-Gaussian model with its latent vector cut into layers of the given shapes (so that
    per-layer step sizes and multi-dimensional layer shapes are exercised); same closed forms on the
    flattened latents."""

    def __init__(self, shapes, data_dim, sigma, seed):
        super().__init__(latent_dim=sum(math.prod(s) for s in shapes), data_dim=data_dim, sigma=sigma,
                         seed=seed, dtype="float64")
        self.latent_shapes = tuple(tuple(s) for s in shapes)

    def sample_prior(self, n, *, generator=None):
        flat = torch.randn(n, self.weight.shape[1], generator=generator, dtype=self.weight.dtype)
        return unflatten_latents(flat, self.latent_shapes)

    def log_prior(self, z):
        return super().log_prior((flatten_latents(z),))

    def decode(self, z):
        return flatten_latents(z) @ self.weight.T + self.bias


def lambda_max(model) -> float:
    return float(torch.linalg.eigvalsh(model.posterior_precision().detach()).max())


def flow_matrix(model, sampler) -> torch.Tensor:
    """A = prod_k (I - S_k P), S_k = diag of the per-unit step sizes (built here, not by inferkit)."""
    precision = model.posterior_precision().detach()
    eye = torch.eye(precision.shape[0], dtype=F64)
    matrix = sampler.step_sizes(len(model.latent_shapes))
    a = eye
    for k in range(sampler.num_steps):
        units = torch.cat([matrix[k, layer].expand(math.prod(shape))
                           for layer, shape in enumerate(model.latent_shapes)])
        a = (eye - torch.diag(units) @ precision) @ a
    return a


def noise_matrices(model, sampler) -> list[torch.Tensor]:
    """B_k sqrt(2 S_k): how eps_k enters z_K (z_K = A z_0 + (I - A) m + sum_k B_k sqrt(2 S_k) eps_k)."""
    precision = model.posterior_precision().detach()
    eye = torch.eye(precision.shape[0], dtype=F64)
    s = sampler.step_sizes(1)[:, 0]
    out = []
    for k in range(sampler.num_steps):
        b = eye
        for j in range(k + 1, sampler.num_steps):
            b = (eye - s[j] * precision) @ b
        out.append(b * (2 * s[k]).sqrt())
    return out


def mvn(mean, cov):
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)


def closed_form_gap(model, x_rep, z0_flat, a):
    """Per draw: z_K and log q_s(z_K) - log p(z_K | x) from the closed forms."""
    mean, cov = model.posterior(x_rep)
    mean, cov = mean.detach(), cov.detach()
    eye = torch.eye(a.shape[0], dtype=F64)
    z_k = z0_flat @ a.T + mean @ (eye - a).T
    gap = mvn(mean @ (eye - a).T, a @ a.T).log_prob(z_k) - mvn(mean, cov).log_prob(z_k)
    return z_k, gap


def assert_identity(model, sampler, x, num_samples, seed, logdet, mask=None, closed_model=None):
    """J + log p(x) == mean over the same draws of log q_s(z_K) - log p(z_K|x), to 1e-8."""
    closed_model = closed_model or model
    with torch.no_grad():
        result = kl_objective(model, sampler, x, num_samples=num_samples, estimator=LogDetEstimator(logdet),
                              mask=mask, generator=torch.Generator().manual_seed(seed))
    assert isinstance(result, KLObjective)
    j, info = result.objective, result.info
    z0 = model.sample_prior(x.shape[0] * num_samples, generator=torch.Generator().manual_seed(seed))
    z0_flat = flatten_latents(z0)
    x_closed = x if closed_model is model else x[:, mask.reshape(-1, x.shape[1])[0].bool()]
    a = flow_matrix(closed_model, sampler)
    _, gap = closed_form_gap(closed_model, x_closed.repeat_interleave(num_samples, 0), z0_flat, a)
    expected = gap.view(x.shape[0], num_samples).mean(1)
    log_marginal = closed_model.log_marginal(x_closed).detach()
    assert j.dtype == F64 and j.shape == (x.shape[0],)
    torch.testing.assert_close(j + log_marginal, expected, rtol=1e-9, atol=1e-8)
    log_abs_det = torch.linalg.slogdet(a)[1]
    torch.testing.assert_close(info.log_det, log_abs_det.expand(x.shape[0]), rtol=0, atol=1e-9)
    assert info.invertible
    return j


step_ratios = st.floats(0.05, 0.7)  # s * lambda_max(P): every I - s P stays positive definite


@SETTINGS
@given(latent_dim=st.integers(1, 4), data_dim=st.integers(1, 6), sigma=st.floats(0.3, 1.5),
       ratios=st.lists(step_ratios, min_size=1, max_size=5), per_step=st.booleans(),
       num_samples=st.integers(1, 3), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_pointwise_identity_and_logdets(tiny_linear_gaussian, noisy_data,
                                        latent_dim, data_dim, sigma, ratios, per_step, num_samples, batch, seed):
    model = tiny_linear_gaussian(latent_dim=latent_dim, data_dim=data_dim, sigma=sigma, seed=seed)
    lam = lambda_max(model)
    if per_step:
        sampler = ShortRun(num_steps=len(ratios), step_size=tuple(r / lam for r in ratios), per="step", units="raw")
    else:
        sampler = ShortRun(num_steps=len(ratios), step_size=ratios[0] / lam, units="raw")
    x = noisy_data(model, batch, seed + 1)
    j_step = assert_identity(model, sampler, x, num_samples, seed, "stepwise")
    j_exact = assert_identity(model, sampler, x, num_samples, seed, "exact")
    torch.testing.assert_close(j_step, j_exact, rtol=0, atol=1e-9)
    # The closed-form A agrees with the model's own flow_matrix for the flat step sizes.
    steps = sampler.step_sizes(1)[:, 0]
    torch.testing.assert_close(flow_matrix(model, sampler), model.flow_matrix(steps).detach())


@SETTINGS
@given(d1=st.integers(1, 3), second=st.sampled_from([(1,), (2, 2), (3,)]), data_dim=st.integers(2, 6),
       r1=step_ratios, r2=step_ratios, num_steps=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_per_layer_step_sizes(noisy_data, d1, second, data_dim, r1, r2, num_steps, seed):
    """Per-layer S_k is not a multiple of I: the stepwise log-det's symmetrisation
    I + S^1/2 H S^1/2 must still give log|det(I + S H)|."""
    model = SplitLinearGaussian([(d1,), second], data_dim, 0.6, seed)
    lam = lambda_max(model)
    sampler = ShortRun(num_steps=num_steps, step_size=(r1 / lam, r2 / lam), per="layer", units="raw")
    x = noisy_data(model, 2, seed + 1)
    j_step = assert_identity(model, sampler, x, 2, seed, "stepwise")
    j_exact = assert_identity(model, sampler, x, 2, seed, "exact")
    torch.testing.assert_close(j_step, j_exact, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mask_shape", ["vector", "row", "batch"])
def test_mask_is_the_model_on_observed_coordinates(tiny_linear_gaussian, noisy_data, mask_shape):
    model = tiny_linear_gaussian(data_dim=6, seed=4)
    observed = torch.tensor([1, 0, 1, 1, 0, 1], dtype=F64)
    sub = tiny_linear_gaussian(data_dim=4, seed=4)
    with torch.no_grad():
        sub.weight.copy_(model.weight[observed.bool()])
        sub.bias.copy_(model.bias[observed.bool()])
    x = noisy_data(model, 3, 0)
    mask = {"vector": observed, "row": observed[None], "batch": observed.expand(3, -1).clone()}[mask_shape]
    sampler = ShortRun(num_steps=3, step_size=0.3 / lambda_max(sub), units="raw")
    for logdet in ("stepwise", "exact"):
        j = assert_identity(model, sampler, x, 2, 11, logdet, mask=mask, closed_model=sub)
        j_sub = kl_objective(sub, sampler, x[:, observed.bool()], num_samples=2, estimator=LogDetEstimator(logdet),
                             generator=torch.Generator().manual_seed(11)).objective
        torch.testing.assert_close(j, j_sub.detach(), rtol=0, atol=1e-10)
    # And the mask changes the answer (the unmasked objective is a different number).
    unmasked = kl_objective(model, sampler, x, num_samples=2, generator=torch.Generator().manual_seed(11)).objective
    assert (unmasked.detach() - j).abs().max() > 1e-3


@pytest.mark.parametrize("latent_dim,num_steps,ratio", [(2, 3, 0.3), (4, 6, 0.15)])
def test_monte_carlo_average_is_the_closed_form_kl(
        tiny_linear_gaussian, noisy_data, latent_dim, num_steps, ratio):
    """mean_n [J_n + log p(x)] over n = 2000 draws is within 5 standard errors of flow_kl (CLT)."""
    model = tiny_linear_gaussian(latent_dim=latent_dim, seed=1)
    x = noisy_data(model, 1, 2)
    s = ratio / lambda_max(model)
    sampler = ShortRun(num_steps=num_steps, step_size=s, units="raw")
    n = 2000
    with torch.no_grad():
        per_draw = kl_objective(model, sampler, x.expand(n, -1), num_samples=1,
                                generator=torch.Generator().manual_seed(5)).objective
    estimates = per_draw + model.log_marginal(x).detach()
    mean, stderr = estimates.mean(), estimates.std() / math.sqrt(n)
    kl = model.flow_kl(x, torch.full((num_steps,), s, dtype=F64)).detach()[0]
    assert stderr > 0
    assert abs(mean - kl) < 5 * stderr, (float(mean), float(kl), float(stderr))
    # num_samples averages the same draws: one example with n samples gives the same mean.
    with torch.no_grad():
        pooled = kl_objective(model, sampler, x, num_samples=n, generator=torch.Generator().manual_seed(5)).objective
    torch.testing.assert_close(pooled[0], per_draw.mean(), rtol=0, atol=1e-9)


# -- Langevin: the noise path is conditioned on --------------------------------------------------
def test_langevin_pointwise_identity_given_the_noise(tiny_linear_gaussian, noisy_data):
    """With the noise path eps fixed, z_K = A z_0 + (I - A) m + sum_k B_k sqrt(2s) eps_k: the Jacobian is
    still A, and J_draw + log p(x) = log p_0(z_0) - log|det A| - log p(z_K | x), for both log-dets."""
    model = tiny_linear_gaussian(seed=6)
    sampler = Langevin(num_steps=4, step_size=0.2 / lambda_max(model), units="raw")
    x = noisy_data(model, 2, 3)
    num_samples, seed = 3, 9
    generator = torch.Generator().manual_seed(seed)
    z0 = model.sample_prior(6, generator=generator)[0]
    noise = [n[0] for n in sampler.sample_noise(model, 6, generator=generator)]
    a = flow_matrix(model, sampler)
    mean, cov = (t.detach() for t in model.posterior(x.repeat_interleave(num_samples, 0)))
    eye = torch.eye(3, dtype=F64)
    z_k = z0 @ a.T + mean @ (eye - a).T + sum(e @ b.T for e, b in zip(noise, noise_matrices(model, sampler)))
    log_abs_det = torch.linalg.slogdet(a)[1]
    per_draw = model.log_prior((z0,)) - log_abs_det - mvn(mean, cov).log_prob(z_k)
    expected = per_draw.view(2, num_samples).mean(1) - model.log_marginal(x).detach()
    for logdet in ("stepwise", "exact"):
        with torch.no_grad():
            result = kl_objective(model, sampler, x, num_samples=num_samples, estimator=LogDetEstimator(logdet),
                                  generator=torch.Generator().manual_seed(seed))
            j, info = result.objective, result.info
        torch.testing.assert_close(j, expected, rtol=1e-9, atol=1e-8)
        torch.testing.assert_close(info.log_det, log_abs_det.expand(2), rtol=0, atol=1e-9)


def test_langevin_objective_is_an_upper_bound_on_the_closed_form_kl(tiny_linear_gaussian, noisy_data):
    """E[J] + log p(x) = KL(q_s || p) + H(z_K) - H(z_K | eps) >= langevin_kl. The Monte-Carlo mean is
    within 5 standard errors of that exact expectation, which sits well above langevin_kl."""
    model = tiny_linear_gaussian(seed=6)
    num_steps, s = 6, 0.3 / lambda_max(model)
    sampler = Langevin(num_steps=num_steps, step_size=s, units="raw")
    x = noisy_data(model, 1, 3)
    n = 2000
    with torch.no_grad():
        per_draw = kl_objective(model, sampler, x.expand(n, -1), generator=torch.Generator().manual_seed(1)).objective
    estimates = per_draw + model.log_marginal(x).detach()
    mean, stderr = estimates.mean(), estimates.std() / math.sqrt(n)
    steps = torch.full((num_steps,), s, dtype=F64)
    kl = model.langevin_kl(x, steps).detach()[0]
    a = flow_matrix(model, sampler)
    cov_q = a @ a.T + sum(b @ b.T for b in noise_matrices(model, sampler))
    gap = 0.5 * (torch.linalg.slogdet(cov_q)[1] - torch.linalg.slogdet(a @ a.T)[1])  # H(z_K) - H(z_K|eps)
    assert gap > 20 * stderr  # the bound is strict here, and the test can tell
    assert abs(mean - (kl + gap)) < 5 * stderr, (float(mean), float(kl + gap), float(stderr))
    assert mean > kl
    # The noise-free KL at the same s is a different number (the noise matters).
    assert abs(model.flow_kl(x, steps).detach()[0] - kl) > 1e-3


# -- the log-determinants directly ---------------------------------------------------------------
def test_stepwise_and_exact_log_det_functions(noisy_data):
    model = SplitLinearGaussian([(2,), (1, 2)], 5, 0.4, seed=3)
    lam = lambda_max(model)
    sampler = ShortRun(num_steps=5, step_size=tuple(r / lam for r in (0.1, 0.5, 0.3, 0.6, 0.2)), per="step", units="raw")
    x = noisy_data(model, 3, 1)
    z0 = model.sample_prior(3, generator=torch.Generator().manual_seed(0))
    steps = sampler.step_sizes(len(model.latent_shapes))
    states = sampler.path(model, x, z0, steps)
    assert len(states) == 6
    log_det, min_eig = stepwise_log_det(model, x, states, steps)
    exact, sign = exact_log_det(model, BoundFlow.of(sampler, len(model.latent_shapes)), x, z0)
    expected = torch.linalg.slogdet(flow_matrix(model, sampler))[1].expand(3)
    torch.testing.assert_close(log_det, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(exact, expected, rtol=0, atol=1e-9)
    assert torch.all(sign == 1)
    # Smallest eigenvalue of any I - s_k P: 1 - max_k s_k lambda_max.
    torch.testing.assert_close(min_eig, torch.full((3,), 1 - 0.6, dtype=F64), rtol=0, atol=1e-9)


def test_non_invertible_steps_are_flagged_by_both_log_det_methods(tiny_linear_gaussian, noisy_data):
    """K = 2 steps with 1 - s lambda_max < 0: det A > 0 (two negative factors), yet each step map has
    a negative eigenvalue, so F is not a composition of invertible gradient steps."""
    model = tiny_linear_gaussian(seed=2)
    sampler = ShortRun(num_steps=2, step_size=1.5 / lambda_max(model), units="raw")
    x = noisy_data(model, 2, 0)
    for logdet in ("stepwise", "exact"):
        with torch.no_grad():
            info = kl_objective(model, sampler, x, estimator=LogDetEstimator(logdet)).info
        assert not info.invertible
        assert info.min_eigenvalue == pytest.approx(1 - 1.5)


class Cubic(Model):
    """log p(x, z) = log N(z; 0, I) + log N(x; z^3, sigma^2 I): gradient flow diverges for large s."""

    def __init__(self, dim=2, sigma=0.5):
        super().__init__()
        self.latent_shapes = ((dim,),)
        self.data_shape = (dim,)
        self.sigma = sigma
        self.register_buffer("anchor", torch.zeros((), dtype=F64))

    def sample_prior(self, n, *, generator=None):
        return (torch.randn(n, *self.latent_shapes[0], generator=generator, dtype=F64),)

    def log_prior(self, z):
        return -0.5 * (z[0].pow(2).sum(-1) + z[0].shape[-1] * math.log(2 * math.pi))

    def decode(self, z):
        return z[0] ** 3

    def log_joint(self, x, z, mask=None):
        per = -0.5 * ((x - self.decode(z)) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)
        if mask is not None:
            per = per * mask
        return self.log_prior(z) + per.sum(-1)


def test_diverging_flow_is_reported_not_raised():
    """A step size that blows the path up to inf gives non-finite Hessians: J is NaN and the point is
    reported as not invertible (eigvalsh is never fed a non-finite matrix)."""
    model = Cubic()
    x = torch.ones(2, 2, dtype=F64)
    with torch.no_grad():
        diverged = kl_objective(model, ShortRun(num_steps=10, step_size=10.0, units="raw"), x,
                                generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(diverged.objective).all()
    assert not diverged.info.invertible
    fine = kl_objective(model, ShortRun(num_steps=2, step_size=1e-4, units="raw"), x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(fine.objective).all() and fine.info.invertible


# -- differentiability and argument checks -------------------------------------------------------
def test_gradient_in_the_step_size_matches_finite_differences(tiny_linear_gaussian, noisy_data):
    """J is differentiable in step-size values passed in (the sampler is not changed); under no_grad the
    same values come without a graph."""
    model = tiny_linear_gaussian(seed=8)
    x = noisy_data(model, 2, 1)
    s0 = 0.3 / lambda_max(model)
    sampler = ShortRun(num_steps=3, step_size=0.123, units="raw")

    def objective(s, logdet, differentiable=True):
        step = torch.tensor(s, dtype=F64, requires_grad=differentiable)
        with torch.enable_grad() if differentiable else torch.no_grad():
            j = kl_objective(model, sampler, x, hyperparameters={"step_size": step}, num_samples=2,
                             estimator=LogDetEstimator(logdet), generator=torch.Generator().manual_seed(4)).objective
        return j.sum(), step

    h = 1e-6
    finite_difference = (objective(s0 + h, "stepwise", False)[0] - objective(s0 - h, "stepwise", False)[0]) / (2 * h)
    for logdet in ("stepwise", "exact"):
        j, step = objective(s0, logdet)
        (grad,) = torch.autograd.grad(j, step)
        assert float(grad) == pytest.approx(float(finite_difference), rel=1e-5)
    j_frozen, _ = objective(s0, "stepwise", differentiable=False)
    assert j_frozen.grad_fn is None and not j_frozen.requires_grad
    torch.testing.assert_close(j_frozen, objective(s0, "stepwise")[0].detach())
    assert sampler.step_size.item() == 0.123  # evaluated at the values given, never set
    at_sampler = kl_objective(model, ShortRun(num_steps=3, step_size=s0, units="raw"), x, num_samples=2,
                              generator=torch.Generator().manual_seed(4)).objective.sum()
    torch.testing.assert_close(at_sampler.detach(), j_frozen)


class NoFlow(Sampler):
    def infer(self, model, x, *, index=None, mask=None, generator=None):
        return Inference(z=model.sample_prior(x.shape[0], generator=generator))


@pytest.mark.parametrize("kwargs,sampler", [
    ({}, NoFlow()),
    ({"num_samples": 0}, ShortRun(num_steps=2, units="raw")),
    ({"hyperparameters": {"momentum": torch.tensor(0.5)}}, ShortRun(num_steps=2, units="raw")),
])
def test_bad_arguments_raise_user_error(tiny_linear_gaussian, noisy_data, kwargs, sampler):
    model = tiny_linear_gaussian(latent_dim=2, data_dim=3)
    with pytest.raises(UserError):
        kl_objective(model, sampler, noisy_data(model, 2, 0), **kwargs)


@pytest.mark.parametrize("kwargs", [{"method": "stochastic-typo"}, {"num_probes": 0}, {"lanczos_steps": 0}])
def test_bad_estimators_raise_user_error(kwargs):
    with pytest.raises(UserError):
        LogDetEstimator(**kwargs)
