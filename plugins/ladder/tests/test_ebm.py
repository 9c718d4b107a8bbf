"""The ladder with an energy-based top prior: log_joint is the ladder's minus the
energy, unnormalised and marked so; prior Langevin against its closed-form variance; the negative
phase surrogate; training and evaluation through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from inferkit_ladder import LadderEBM, LadderModel

from inferkit.cli import main
from inferkit.interfaces import UnnormalizedModel


def small(parameterization="whitened", **kw):
    torch.manual_seed(0)
    options = {"num_layers": 2, "latent_dims": (3, 2), "image_size": 16, "channels": 1, "nf": 4,
               "parameterization": parameterization}
    return LadderEBM(**options, energy_hidden=8, **kw), options


@settings(max_examples=10, deadline=None)
@given(parameterization=st.sampled_from(["whitened", "centered"]), seed=st.integers(0, 2**16))
def test_log_joint_is_the_ladders_minus_the_energy_and_the_prior_is_the_reference(parameterization, seed):
    model, options = small(parameterization)
    ladder = LadderModel(**options)
    ladder.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("energy.")})
    generator = torch.Generator().manual_seed(seed)
    z = ladder.sample_prior(3, generator=generator)
    x = torch.rand(3, 1, 16, 16, generator=generator) * 2 - 1
    energy = model.energy(z[-1])
    torch.testing.assert_close(model.log_joint(x, z), ladder.log_joint(x, z) - energy)
    torch.testing.assert_close(model.log_prior(z), ladder.log_prior(z))
    assert model.normalized is False and ladder.normalized is True
    assert isinstance(model, UnnormalizedModel) and not isinstance(ladder, UnnormalizedModel)


def test_prior_langevin_matches_the_discretised_gaussian_variance_when_the_energy_is_zero():
    # E = 0: z' = (1 - s) z + sqrt(2 s) eps from N(0, 1) with the coefficient s = 0.3 (prior_step_size
    # sqrt(0.6) in the Langevin units), so var_K = v* + (1 - s)^(2K) (1 - v*), v* = 2 / (2 - s)
    model, _ = small(prior_step_size=0.6 ** 0.5, prior_steps=5)
    with torch.no_grad():
        model.energy.net[-1].weight.zero_()
    z = model.sample_top(40000, generator=torch.Generator().manual_seed(0))
    s, k = 0.3, 5
    stationary = 2 / (2 - s)
    expected = stationary + (1 - s) ** (2 * k) * (1 - stationary)
    assert abs(float(z.var()) - expected) < 0.03
    assert abs(float(z.mean())) < 0.02


def test_prior_langevin_follows_the_energy():
    # a linear energy E(z) = c . z tilts N(0, I) to N(-c, I): the chain's mean moves to -c
    model, _ = small(prior_step_size=0.1, prior_step_units="raw", prior_steps=200)
    c = torch.tensor([0.8, -0.5])
    with torch.no_grad():
        net = model.energy.net
        for layer in (net[0], net[2]):
            layer.weight.copy_(torch.eye(*layer.weight.shape))
            layer.bias.fill_(10.0)  # keeps LeakyReLU in its linear part
        net[-1].weight.zero_()
        net[-1].weight[0, :2] = c
    z = model.sample_top(20000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z.mean(0), -c, atol=0.03, rtol=0)


def test_log_normalizer_surrogate_is_zero_with_the_negative_phase_gradient():
    model, _ = small(prior_steps=3)
    surrogate = model.log_normalizer_surrogate(64, generator=torch.Generator().manual_seed(0))
    assert float(surrogate) == 0.0
    grads = torch.autograd.grad(surrogate, list(model.energy.parameters()))
    negative = model.sample_top(64, generator=torch.Generator().manual_seed(0))
    expected = torch.autograd.grad(-model.energy(negative).mean(), list(model.energy.parameters()))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    assert all(not p.grad_fn for p in model.parameters())  # nothing else in its graph


def test_trains_with_shortrun_and_kl_grid_and_eval_refuses_nats(tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = ["run", "--model", "ladder-ebm", "--sampler", "shortrun", "--tuner", "kl-grid",
            "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8",
            "--model-opt", "energy_hidden=16", "--model-opt", "prior_steps=5",
            "--sampler-opt", "num_steps=4", "--tuner-opt", "grid=0.005,0.01,0.02",
            "--data-opt", "num_train=128", "--data-opt", "num_test=32", "--data-opt", "image_size=16",
            "--batch-size", "16", "--iterations", "6", "--tune-every", "3", "--quiet", "--train-opt", "eval_examples=16",
            "--out", str(run)]
    calls = []
    surrogate = LadderEBM.log_normalizer_surrogate
    monkeypatch.setattr(LadderEBM, "log_normalizer_surrogate",
                        lambda self, n, generator=None: calls.append(n) or surrogate(self, n, generator=generator))
    torch.manual_seed(0)  # the run seeds parameter initialisation with its seed, 0
    before = LadderEBM(num_layers=2, latent_dims=(4, 2), nf=8, image_size=16, channels=3, energy_hidden=16)
    assert main(args) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    model_state = state.get("model", state)
    energy_after = {k: v for k, v in model_state.items() if k.startswith("energy.")}
    initial = before.state_dict()
    assert calls == [16] * 6  # the trainer added the negative phase at every iteration
    # E's output bias shifts log p~ by a constant that log Z absorbs: positive and negative phase
    # cancel exactly, so it must not move (without the negative phase its gradient would be +1)
    offset = "energy.net.4.bias"
    torch.testing.assert_close(energy_after.pop(offset), initial[offset], rtol=0, atol=1e-7)
    assert energy_after and all(not torch.equal(v, initial[k]) for k, v in energy_after.items())  # trained
    assert main(["eval", str(run), "--reference-steps", "0", "--inpaint-examples", "0", "--ais-examples", "2",
                 "--fd-samples", "0", "--no-figures", "--quiet"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["ais_log_likelihood"] is None
    assert "log Z unknown" in result["skipped"]["log-likelihood (the model's own estimator)"]
    assert result["test_reconstruction_mse"] >= 0


def test_bad_options_are_user_errors():
    from inferkit.errors import UserError

    with pytest.raises(UserError, match="prior_step_size"):
        small(prior_step_size=0.0)
    with pytest.raises(UserError, match="prior_steps"):
        small(prior_steps=-1)
