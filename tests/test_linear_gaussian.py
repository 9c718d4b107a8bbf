"""The linear-Gaussian reference model: its closed forms against brute force (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
from inferkit.errors import UserError
from inferkit.models.linear_gaussian import LinearGaussian, gaussian_kl

SETTINGS = settings(max_examples=25, deadline=None)

dims = st.integers(1, 4)
data_dims = st.integers(1, 6)
sigmas = st.floats(0.2, 2.0)
seeds = st.integers(0, 2**16)


def mvn_log_prob(z: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, cov) written out (no torch.distributions), for brute-force checks."""
    d = z.shape[-1]
    diff = z - mean
    maha = (diff @ torch.linalg.inv(cov) * diff).sum(-1)
    return -0.5 * (maha + torch.linalg.slogdet(cov)[1] + d * math.log(2 * math.pi))


@SETTINGS
@given(dims, data_dims, sigmas, seeds, st.integers(1, 5))
def test_bayes_rule_holds_for_every_z(tiny_linear_gaussian, latent_dim, data_dim, sigma, seed, batch):
    """log p(x, z) - log p(z | x) = log p(x), whatever z is: posterior and marginal agree with Bayes."""
    model = tiny_linear_gaussian(latent_dim=latent_dim, data_dim=data_dim, sigma=sigma, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = model.sample(batch, generator=generator) + sigma * torch.randn(
        batch, data_dim, generator=generator, dtype=torch.float64)
    mean, cov = model.posterior(x)
    assert mean.shape == (batch, latent_dim) and cov.shape == (latent_dim, latent_dim)
    log_marginal = model.log_marginal(x)
    for _ in range(3):  # several arbitrary z, far from the posterior too
        z = 3 * torch.randn(batch, latent_dim, generator=generator, dtype=torch.float64)
        lhs = model.log_joint(x, (z,)) - mvn_log_prob(z, mean, cov)
        torch.testing.assert_close(lhs, log_marginal, rtol=0, atol=1e-9)


@SETTINGS
@given(dims, data_dims, sigmas, seeds)
def test_posterior_is_the_stationary_point_and_curvature_of_log_joint(tiny_linear_gaussian,
                                                                      latent_dim, data_dim, sigma, seed):
    """Brute force by autograd: grad log p(x, m) = 0 at the posterior mean, Hessian = -cov^{-1}."""
    model = tiny_linear_gaussian(latent_dim=latent_dim, data_dim=data_dim, sigma=sigma, seed=seed)
    x = model.sample(2, generator=torch.Generator().manual_seed(seed))
    mean, cov = model.posterior(x)
    z = mean.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model.log_joint(x, (z,)).sum(), z)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-9)
    hess = torch.autograd.functional.hessian(lambda v: model.log_joint(x[:1], (v,)).sum(), mean[:1])
    hess = hess.reshape(latent_dim, latent_dim)
    torch.testing.assert_close(-hess, torch.linalg.inv(cov), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.posterior_precision(), torch.linalg.inv(cov), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("latent_dim", [1, 2])
def test_log_marginal_by_quadrature(tiny_linear_gaussian, latent_dim):
    """log p(x) = log int p(x, z) dz, by the trapezoid rule on a fine grid (d = 1, 2)."""
    model = tiny_linear_gaussian(latent_dim=latent_dim, data_dim=3, sigma=0.7, seed=3)
    x = model.sample(2, generator=torch.Generator().manual_seed(0))
    n = 4001 if latent_dim == 1 else 601
    axis = torch.linspace(-8, 8, n, dtype=torch.float64)
    grid = torch.cartesian_prod(*[axis] * latent_dim).reshape(-1, latent_dim)
    weights = torch.ones(n, dtype=torch.float64)
    weights[0] = weights[-1] = 0.5
    weights = weights * (axis[1] - axis[0])
    cell = weights if latent_dim == 1 else torch.outer(weights, weights).reshape(-1)
    for i in range(x.shape[0]):
        log_joint = model.log_joint(x[i].expand(grid.shape[0], -1), (grid,))
        brute = torch.logsumexp(log_joint + cell.log(), 0)
        torch.testing.assert_close(brute, model.log_marginal(x[i:i + 1])[0], rtol=0, atol=1e-6)


def random_spd(d: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    root = torch.randn(batch, d, d, generator=generator, dtype=torch.float64)
    return root @ root.transpose(-1, -2) + 0.1 * torch.eye(d, dtype=torch.float64)


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 4), seeds)
def test_gaussian_kl_matches_torch_distributions(d, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    mean_q = torch.randn(batch, d, generator=generator, dtype=torch.float64)
    mean_p = torch.randn(batch, d, generator=generator, dtype=torch.float64)
    cov_q, cov_p = random_spd(d, batch, generator), random_spd(d, batch, generator)
    expected = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mean_q, covariance_matrix=cov_q),
        torch.distributions.MultivariateNormal(mean_p, covariance_matrix=cov_p))
    torch.testing.assert_close(gaussian_kl(mean_q, cov_q, mean_p, cov_p), expected, rtol=1e-9, atol=1e-9)
    # KL of a distribution with itself is zero, and KL is not symmetric in general.
    torch.testing.assert_close(gaussian_kl(mean_q, cov_q, mean_q, cov_q), torch.zeros(batch, dtype=torch.float64),
                               rtol=0, atol=1e-9)


@SETTINGS
@given(dims, data_dims, sigmas, seeds, st.lists(st.floats(0.001, 0.3), min_size=1, max_size=6))
def test_flow_matrix_and_flow_kl(tiny_linear_gaussian, latent_dim, data_dim, sigma, seed, steps):
    """A = prod_k (I - s_k P) is what K gradient steps do to z_0 - m, and flow_kl is the Gaussian KL
    of N((I - A) m, A A^T) to the posterior (computed here with torch.distributions)."""
    model = tiny_linear_gaussian(latent_dim=latent_dim, data_dim=data_dim, sigma=sigma, seed=seed)
    x = model.sample(3, generator=torch.Generator().manual_seed(seed))
    step_sizes = torch.tensor(steps, dtype=torch.float64)
    a = model.flow_matrix(step_sizes)
    mean, cov = model.posterior(x)
    precision = model.posterior_precision()
    # K explicit gradient steps on log p(x, z) = -0.5 (z - m)^T P (z - m) + const.
    z0 = torch.randn(3, latent_dim, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
    z = z0
    for s in steps:
        z = z - s * (z - mean) @ precision
    torch.testing.assert_close(z - mean, (z0 - mean) @ a.T, rtol=1e-9, atol=1e-9)
    cov_q = a @ a.T
    if torch.linalg.eigvalsh(cov_q).min() < 1e-6:  # q_s nearly degenerate: the KL is ill-conditioned
        return
    eye = torch.eye(latent_dim, dtype=torch.float64)
    q = torch.distributions.MultivariateNormal(mean @ (eye - a).T, covariance_matrix=cov_q)
    p = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    expected = torch.distributions.kl_divergence(q, p)
    torch.testing.assert_close(model.flow_kl(x, step_sizes), expected, rtol=1e-7, atol=1e-7)


def test_flow_kl_limits_in_1d(tiny_linear_gaussian):
    """d = 1: s = 1/P maps every z_0 to m in one step (A = 0, q_s a point mass), and s -> 0 leaves
    q_s = prior, whose KL to the posterior is known in closed form."""
    model = tiny_linear_gaussian(latent_dim=1, data_dim=2)
    x = model.sample(2, generator=torch.Generator().manual_seed(1))
    precision = float(model.posterior_precision().detach())
    mean, _cov = model.posterior(x)
    assert model.flow_matrix(torch.tensor([1 / precision], dtype=torch.float64)).abs().item() < 1e-12
    tiny = model.flow_kl(x, torch.tensor([1e-12], dtype=torch.float64))
    prior_kl = 0.5 * (precision + precision * mean[:, 0] ** 2 - 1 - math.log(precision))
    torch.testing.assert_close(tiny, prior_kl, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(dims, data_dims, sigmas, seeds, st.floats(0.01, 0.2), st.integers(1, 6))
def test_langevin_kl_is_the_kl_of_the_exact_langevin_law(tiny_linear_gaussian,
                                                         latent_dim, data_dim, sigma, seed, rel_step, num_steps):
    """Langevin on this model keeps z Gaussian: mean (I - A) m, covariance A A^T + sum_k 2 s B_k B_k^T;
    the recursion is checked against the explicit sum over k."""
    model = tiny_linear_gaussian(latent_dim=latent_dim, data_dim=data_dim, sigma=sigma, seed=seed)
    x = model.sample(2, generator=torch.Generator().manual_seed(seed))
    precision = model.posterior_precision()
    s = rel_step / float(torch.linalg.eigvalsh(precision.detach()).max())
    step_sizes = torch.full((num_steps,), s, dtype=torch.float64)
    eye = torch.eye(latent_dim, dtype=torch.float64)
    step = eye - s * precision
    a = torch.linalg.matrix_power(step, num_steps)
    cov_q = a @ a.T + sum(2 * s * torch.linalg.matrix_power(step, num_steps - 1 - k)
                          @ torch.linalg.matrix_power(step, num_steps - 1 - k).T for k in range(num_steps))
    mean, cov = model.posterior(x)
    q = torch.distributions.MultivariateNormal(mean @ (eye - a).T, covariance_matrix=cov_q)
    p = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    torch.testing.assert_close(model.langevin_kl(x, step_sizes), torch.distributions.kl_divergence(q, p),
                               rtol=1e-8, atol=1e-8)


def test_log_joint_mask_and_shapes(tiny_linear_gaussian):
    model = tiny_linear_gaussian(sigma=0.4, seed=2)
    generator = torch.Generator().manual_seed(0)
    z = model.sample_prior(4, generator=generator)
    assert len(z) == 1 and z[0].shape == (4, 3) and z[0].dtype == torch.float64
    assert model.sample(4, generator=generator).shape == (4, 5)
    assert model.latent_shapes == ((3,),) and model.data_shape == (5,) and model.latent_dim == 3
    x = model.sample(4, generator=generator)
    full = model.log_joint(x, z)
    assert full.shape == (4,)
    torch.testing.assert_close(model.log_joint(x, z, torch.ones(5, dtype=torch.float64)), full)
    torch.testing.assert_close(model.log_joint(x, z, torch.zeros(5, dtype=torch.float64)), model.log_prior(z))
    # A partial mask is the model restricted to the observed coordinates.
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    sub = tiny_linear_gaussian(data_dim=3, sigma=0.4, seed=2)
    with torch.no_grad():
        sub.weight.copy_(model.weight[mask.bool()])
        sub.bias.copy_(model.bias[mask.bool()])
    torch.testing.assert_close(model.log_joint(x, z, mask), sub.log_joint(x[:, mask.bool()], z))
    # The prior is N(0, I) with its constant.
    torch.testing.assert_close(model.log_prior(z), torch.distributions.Normal(0.0, 1.0).log_prob(z[0]).sum(-1))


def test_observation_sigma_is_settable_and_used(tiny_linear_gaussian):
    model = tiny_linear_gaussian(latent_dim=2, data_dim=3)
    assert isinstance(model, inferkit.HasObservationNoise)
    assert model.sigma == pytest.approx(0.5)
    model.set_observation_sigma(0.2)
    assert model.observation_sigma == pytest.approx(0.2)
    _, cov = model.posterior(torch.zeros(1, 3, dtype=torch.float64))
    expected = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + model.weight.T @ model.weight / 0.04)
    torch.testing.assert_close(cov, expected)


@pytest.mark.parametrize("options", [{"latent_dim": 0}, {"data_dim": 0}, {"sigma": 0.0}, {"sigma": -1.0},
                                     {"sigma": math.inf}, {"sigma": math.nan}, {"dtype": "float16"}])
def test_bad_options_raise_user_error(options):
    with pytest.raises(UserError):
        LinearGaussian(**options)


def test_registered_and_built_from_strings():
    model = inferkit.load_model("linear-gaussian", latent_dim="3", data_dim="4", sigma="0.3", dtype="float64")
    assert isinstance(model, LinearGaussian)
    assert model.weight.shape == (4, 3) and model.weight.dtype == torch.float64
    assert model.sigma == pytest.approx(0.3)
    # The seed fixes the weights.
    again = inferkit.load_model("linear-gaussian", latent_dim=3, data_dim=4, sigma=0.3, dtype="float64")
    torch.testing.assert_close(model.weight, again.weight)
