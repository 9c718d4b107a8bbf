"""Pyro models as inferkit models: the same log_joint and J as the built-in
linear-gaussian, Pyro's own potential energy, constrained latents, and clear errors."""

import math

import pyro_models
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer.mcmc.util import initialize_model

import inferkit
from inferkit import LogDetEstimator, UserError, kl_objective
from inferkit.models.linear_gaussian import LinearGaussian
from inferkit.models.pyro_model import pyro_model
from inferkit.samplers import ShortRun
from inferkit.tuners.kl_grid import KLGrid

F64 = torch.float64


@pytest.fixture(scope="module")
def pair():
    """The Pyro linear-Gaussian and the built-in one with the same W, b, sigma."""
    pyro_lg = inferkit.load_model("pyro:pyro_models:linear_gaussian", data_shape=(pyro_models.DATA_DIM,),
                                  dtype="float64")
    builtin = LinearGaussian(latent_dim=pyro_models.LATENT_DIM, data_dim=pyro_models.DATA_DIM,
                             sigma=pyro_models.SIGMA, dtype="float64")
    with torch.no_grad():
        builtin.weight.copy_(pyro_models.WEIGHT)
        builtin.bias.copy_(pyro_models.BIAS)
    return pyro_lg, builtin


def test_shapes_and_names(pair):
    model, _ = pair
    assert model.latent_shapes == ((pyro_models.LATENT_DIM,),)
    assert model.data_shape == (pyro_models.DATA_DIM,)
    assert model.sample_prior(4, generator=torch.Generator().manual_seed(0))[0].shape == (4, pyro_models.LATENT_DIM)
    assert model.sample(4).shape == (4, pyro_models.DATA_DIM)
    z1 = model.sample_prior(3, generator=torch.Generator().manual_seed(5))
    z2 = model.sample_prior(3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z1, z2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 4))
def test_log_joint_and_prior_equal_the_builtin(pair, seed, batch):
    model, builtin = pair
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, pyro_models.DATA_DIM, generator=generator, dtype=F64)
    z = (torch.randn(batch, pyro_models.LATENT_DIM, generator=generator, dtype=F64),)
    torch.testing.assert_close(model.log_joint(x, z), builtin.log_joint(x, z).detach())
    torch.testing.assert_close(model.log_prior(z), builtin.log_prior(z))
    torch.testing.assert_close(model.decode(z), builtin.decode(z).detach())


def test_kl_objective_is_the_same_j(pair):
    model, builtin = pair
    x = builtin.sample(3, generator=torch.Generator().manual_seed(2)).detach()
    sampler = ShortRun(num_steps=4, step_size=0.05)
    # the same z_0 draws for both (Pyro samples from torch's global generator, the built-in from `generator`)
    model.sample_prior = lambda n, generator=None: builtin.sample_prior(n, generator=generator)
    for logdet in ("stepwise", "exact", "stochastic"):
        with torch.no_grad():
            j_pyro = kl_objective(model, sampler, x, estimator=LogDetEstimator(logdet),
                                  generator=torch.Generator().manual_seed(0)).objective
            j_builtin = kl_objective(builtin, sampler, x, estimator=LogDetEstimator(logdet),
                                     generator=torch.Generator().manual_seed(0)).objective
        torch.testing.assert_close(j_pyro, j_builtin)  # draw by draw: J + log p(x) = KL carries over


def test_log_joint_is_minus_pyros_potential_energy_with_a_constrained_latent():
    model = inferkit.load_model("pyro:pyro_models:scaled_decoder", data_shape=(4,))
    assert model.latent_shapes == ((2,), ()) and model.supports_mask is False  # .to_event(1) likelihood
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    _, potential_fn, transforms, _ = initialize_model(pyro_models.scaled_decoder, model_args=(x,))
    z = model.sample_prior(3, generator=torch.Generator().manual_seed(1))
    energy = potential_fn({"z": z[0], "scale": z[1]})
    torch.testing.assert_close(model.log_joint(x, z).sum(), -energy)
    # initialize_model maps constrained to unconstrained; its inverse gives the positive scale
    assert torch.all(transforms["scale"].inv(z[1]) > 0)


@pytest.mark.slow
def test_positive_constrained_model_trains_with_shortrun_and_kl_grid():
    """A learnable decoder with a LogNormal noise scale per example: kl-grid picks an invertible s
    with a finite J at every tuning, the loss stays finite, and the decoder's bias moves to the data
    mean. (The batch loss -log p(x, z_K) itself is too noisy over 60 iterations to test: J puts s at
    the grid's small end here, the prior being close to the posterior of the stiff scale latent.)"""
    torch.manual_seed(0)
    model = inferkit.load_model("pyro:pyro_models:scaled_decoder", data_shape=(4,))
    assert any(p.requires_grad for p in model.parameters())
    truth = torch.nn.Linear(2, 4)
    generator = torch.Generator().manual_seed(3)
    data = truth(torch.randn(256, 2, generator=generator)).detach() + 0.3 * torch.randn(256, 4, generator=generator)
    sampler = ShortRun(num_steps=10, step_size=0.01)
    tuner = KLGrid(grid=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05), memory=0.0)  # apply the grid point chosen
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    bias = dict(model.named_parameters())["pyro_parameters.decoder$$$bias"]
    gap_before = float((bias.detach() - data.mean(0)).norm())
    losses = []
    for t in range(60):
        x = data[torch.randint(0, 256, (32,), generator=generator)]
        if t % 20 == 0:
            result = tuner.tune(model, sampler, x)
            sampler.set_hyperparameters(result.hyperparameters)
            chosen = [h for h in result.history if h["step_size"] == sampler.step_size.item()]
            assert math.isfinite(result.objective) and chosen and chosen[0]["invertible"]
        inference = sampler.infer(model, x)
        loss = sampler.loss(model, x, inference)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert all(math.isfinite(value) for value in losses)
    assert float((bias.detach() - data.mean(0)).norm()) < 0.5 * gap_before  # the decoder learned the data's mean


def test_discrete_latents_missing_sites_and_bad_names_are_user_errors():
    with pytest.raises(UserError, match="discrete"):
        inferkit.load_model("pyro:pyro_models:coin", data_shape=(2,))
    with pytest.raises(UserError, match="no sample site named 'y'"):
        inferkit.load_model("pyro:pyro_models:linear_gaussian", data_shape=(5,), observed="y")
    with pytest.raises(UserError, match="cannot import"):
        inferkit.load_model("pyro:no_such_module_here:model", data_shape=(2,))
    with pytest.raises(UserError, match="has no function"):
        inferkit.load_model("pyro:pyro_models:nothing", data_shape=(2,))
    with pytest.raises(UserError, match="MODULE:FUNCTION"):
        inferkit.load_model("pyro:justamodule", data_shape=(2,))
    with pytest.raises(UserError, match="data_shape"):
        pyro_model(pyro_models.linear_gaussian)()
