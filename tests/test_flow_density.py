"""inferkit.flow_log_density: the density of short-run output by change of variables, checked
against the closed form q_s = N((I - A) m, A A^T) on linear-gaussian."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
from inferkit import LogDetEstimator, UserError, flow_log_density
from inferkit.models.linear_gaussian import LinearGaussian
from inferkit.samplers import Langevin, ShortRun

F64 = torch.float64


def closed_form_log_q(model: LinearGaussian, x: torch.Tensor, z_k: torch.Tensor, step_size: float,
                      num_steps: int) -> torch.Tensor:
    mean, _ = model.posterior(x)
    a = model.flow_matrix(torch.full((num_steps,), step_size, dtype=F64))
    eye = torch.eye(a.shape[0], dtype=F64)
    dist = torch.distributions.MultivariateNormal(mean @ (eye - a).T, covariance_matrix=a @ a.T)
    return dist.log_prob(z_k)


@settings(max_examples=15, deadline=None)
@given(latent_dim=st.integers(1, 5), num_steps=st.integers(1, 6), fraction=st.floats(0.05, 0.8),
       logdet=st.sampled_from(["stepwise", "exact"]), seed=st.integers(0, 2**16))
def test_flow_log_density_is_the_gaussian_density_of_the_output(tiny_linear_gaussian, latent_dim, num_steps, fraction, logdet, seed):
    model = tiny_linear_gaussian(latent_dim=latent_dim, data_dim=latent_dim + 3, sigma=0.6, seed=seed)
    step_size = fraction / float(torch.linalg.eigvalsh(model.posterior_precision().detach()).max())
    sampler = ShortRun(num_steps=num_steps, step_size=step_size, units="raw")
    generator = torch.Generator().manual_seed(seed)
    x = model.sample(3, generator=generator).detach()
    z0 = model.sample_prior(3, generator=generator)
    with torch.no_grad():
        (z_k,), log_q = flow_log_density(sampler, model, x, z0, estimator=LogDetEstimator(logdet))
        expected = closed_form_log_q(model, x, z_k, step_size, num_steps)
    torch.testing.assert_close(log_q, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(z_k, sampler.flow(model, x, z0, sampler.step_sizes(1))[0])


def test_flow_log_density_is_nan_where_the_flow_is_not_invertible(tiny_linear_gaussian):
    model = tiny_linear_gaussian(seed=1)
    top = float(torch.linalg.eigvalsh(model.posterior_precision().detach()).max())
    sampler = ShortRun(num_steps=2, step_size=1.5 / top, units="raw")  # 1 - s lambda_max < 0
    x = model.sample(2, generator=torch.Generator().manual_seed(0)).detach()
    _, log_q = flow_log_density(sampler, model, x, model.sample_prior(2))
    assert torch.isnan(log_q).all()


def test_noisy_samplers_need_their_noise_path(tiny_linear_gaussian):
    model = tiny_linear_gaussian(latent_dim=2, data_dim=4)
    sampler = Langevin(num_steps=3, step_size=0.01, units="raw")
    x = model.sample(2, generator=torch.Generator().manual_seed(0)).detach()
    z0 = model.sample_prior(2)
    with pytest.raises(UserError, match="noise path"):
        flow_log_density(sampler, model, x, z0)
    noise = sampler.sample_noise(model, 2)
    # given the noise, the conditional map has the same Jacobian A: log q(z_K | eps) = log p0(z0) - log|det A|
    _, log_q = flow_log_density(sampler, model, x, z0, noise=noise)
    a = model.flow_matrix(torch.full((3,), 0.01, dtype=F64))
    expected = model.log_prior(z0) - torch.linalg.slogdet(a)[1]
    torch.testing.assert_close(log_q.detach(), expected.detach())


def test_flow_log_density_refuses_samplers_without_a_flow():
    model = inferkit.load_model("linear-gaussian")
    sampler = inferkit.load_sampler("vae")
    x = model.sample(2).detach()
    with pytest.raises(UserError, match="does not apply"):
        flow_log_density(sampler, model, x, model.sample_prior(2))
