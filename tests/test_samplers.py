"""Short-run samplers: reproducibility, agreement with the differentiable flow, convergence on the
linear-Gaussian model, step-size layouts and option errors, and no autograd graph across steps."""

from __future__ import annotations

import math
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
from inferkit import GradientFlow, Inference, UserError
from inferkit.latents import flatten_latents, unflatten_latents
from inferkit.models.linear_gaussian import LinearGaussian
from inferkit.samplers import Langevin, ShortRun

F64 = torch.float64


def lambda_range(model):
    eig = torch.linalg.eigvalsh(model.posterior_precision().detach())
    return float(eig.min()), float(eig.max())


def data(model, batch, seed=0):
    return model.sample(batch, generator=torch.Generator().manual_seed(seed)).detach()


class TwoLayer(LinearGaussian):
    """Linear-Gaussian with its latents split into two layers, shapes (2,) and (1, 3)."""

    def __init__(self):
        super().__init__(latent_dim=5, data_dim=6, sigma=0.5, seed=1, dtype="float64")
        self.latent_shapes = ((2,), (1, 3))

    def sample_prior(self, n, *, generator=None):
        return unflatten_latents(torch.randn(n, 5, generator=generator, dtype=F64), self.latent_shapes)

    def log_prior(self, z):
        return super().log_prior((flatten_latents(z),))

    def decode(self, z):
        return flatten_latents(z) @ self.weight.T + self.bias


# -- reproducibility and agreement with flow ------------------------------------------------------
@pytest.mark.parametrize("cls", [ShortRun, Langevin])
def test_seeded_infer_is_reproducible(tiny_linear_gaussian, cls):
    model = tiny_linear_gaussian()
    x = data(model, 4)
    sampler = cls(num_steps=5, step_size=0.02)
    first = sampler.infer(model, x, generator=torch.Generator().manual_seed(3))
    second = sampler.infer(model, x, generator=torch.Generator().manual_seed(3))
    other = sampler.infer(model, x, generator=torch.Generator().manual_seed(4))
    assert isinstance(first, Inference) and len(first.z) == 1 and first.z[0].shape == (4, 3)
    assert torch.equal(first.z[0], second.z[0])
    assert not torch.allclose(first.z[0], other.z[0])


@settings(max_examples=10, deadline=None)
@given(num_steps=st.integers(1, 8), ratio=st.floats(0.01, 0.9), seed=st.integers(0, 2**16),
       layout=st.sampled_from(["shared", "layer", "step"]))
def test_infer_equals_flow_from_the_same_draws(num_steps, ratio, seed, layout):
    """infer (the graph-free hot path) and path/flow (the differentiable map) are the same dynamics:
    same z_0 (and, for Langevin, the same noise, drawn in the same order from the same generator)."""
    model = TwoLayer()
    x = data(model, 3, seed)
    s = ratio / lambda_range(model)[1]
    if layout == "shared":
        kwargs = {"step_size": s}
    elif layout == "layer":
        kwargs = {"step_size": (s, 0.5 * s), "per": "layer"}
    else:
        kwargs = {"step_size": tuple(s * (1 + k) / num_steps for k in range(num_steps)), "per": "step"}
    for cls in (ShortRun, Langevin):
        sampler = cls(num_steps=num_steps, **kwargs)
        assert isinstance(sampler, GradientFlow)
        result = sampler.infer(model, x, generator=torch.Generator().manual_seed(seed))
        generator = torch.Generator().manual_seed(seed)
        z0 = model.sample_prior(3, generator=generator)
        noise = sampler.sample_noise(model, 3, generator=generator)
        assert (noise is None) == (cls is ShortRun)
        steps = sampler.step_sizes(len(z0))
        states = sampler.path(model, x, z0, steps, noise)
        assert len(states) == num_steps + 1
        final = sampler.flow(model, x, z0, steps, noise)
        for got, via_path, via_flow in zip(result.z, states[-1], final):
            assert got.shape == via_flow.shape
            torch.testing.assert_close(got, via_flow.detach(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(via_path, via_flow, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [ShortRun, Langevin])
def test_eager_compiled_and_differentiable_runs_of_the_one_step_agree(cls):
    """shortrun_step is run three ways: eagerly (infer), torch.compile'd (compile=...) and
    differentiably (path, at step sizes passed in as a tensor that requires grad); all give the same z_K."""
    model = TwoLayer()
    x = data(model, 3, 1)
    options = {"num_steps": 3, "step_size": (0.01, 0.02), "per": "layer"}
    eager = cls(**options).infer(model, x, generator=torch.Generator().manual_seed(5)).z
    compiled = cls(**options, compile="default", compile_backend="aot_eager").infer(
        model, x, generator=torch.Generator().manual_seed(5)).z
    sampler = cls(**options)
    generator = torch.Generator().manual_seed(5)
    z0 = model.sample_prior(3, generator=generator)
    noise = sampler.sample_noise(model, 3, generator=generator)
    value = torch.tensor([0.01, 0.02], dtype=F64, requires_grad=True)
    final = sampler.flow(model, x, z0, sampler.step_sizes(2, value), noise)
    assert all(t.grad_fn is not None for t in final)  # a graph to the step sizes
    for a, b, c in zip(eager, compiled, final):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c.detach(), a, rtol=1e-12, atol=1e-12)


def test_noise_free_flow_converges_to_the_posterior_mean(tiny_linear_gaussian):
    """K large, s < 1/lambda_max: z_K - m = A (z_0 - m) with ||A|| <= (1 - s lambda_min)^K -> 0."""
    model = tiny_linear_gaussian(data_dim=6, sigma=0.7, seed=5)
    lam_min, lam_max = lambda_range(model)
    s = 0.9 / lam_max
    num_steps = math.ceil(40 / (s * lam_min))
    x = data(model, 4, 1)
    result = ShortRun(num_steps=num_steps, step_size=s, units="raw").infer(model, x, generator=torch.Generator().manual_seed(0))
    mean, _ = model.posterior(x)
    torch.testing.assert_close(result.z[0], mean.detach(), rtol=0, atol=1e-9)
    # And a short run is visibly not converged (the test can tell the difference).
    short = ShortRun(num_steps=2, step_size=s, units="raw").infer(model, x, generator=torch.Generator().manual_seed(0))
    assert (short.z[0] - mean.detach()).abs().max() > 1e-2


def test_langevin_samples_approximate_the_posterior(tiny_linear_gaussian):
    """Many chains, many small steps: sample mean and covariance close to the posterior's (loose: the
    discretisation inflates the covariance by about 1 / (1 - s lambda / 2), here < 6 %)."""
    model = tiny_linear_gaussian(data_dim=4, sigma=1.5, seed=1)
    lam_min, lam_max = lambda_range(model)
    s = 0.1 / lam_max
    num_steps = math.ceil(8 / (s * lam_min))
    x = data(model, 1, 3)
    n = 3000
    result = Langevin(num_steps=num_steps, step_size=s, units="raw").infer(model, x.expand(n, -1),
                                                              generator=torch.Generator().manual_seed(0))
    z = result.z[0]
    mean, cov = (t.detach() for t in model.posterior(x))
    stderr = (cov.diagonal() / n).sqrt()
    assert torch.all((z.mean(0) - mean[0]).abs() < 5 * stderr + 1e-3), (z.mean(0), mean[0])
    empirical = torch.cov(z.T)
    assert torch.linalg.norm(empirical - cov) / torch.linalg.norm(cov) < 0.12
    # The noise-free flow from the same start collapses to the mean instead: its spread is tiny.
    collapsed = ShortRun(num_steps=num_steps, step_size=s, units="raw").infer(model, x.expand(n, -1))
    assert torch.linalg.norm(torch.cov(collapsed.z[0].T)) < 1e-3 * torch.linalg.norm(cov)


# -- detached results, no graph across steps ---------------------------------------------------
class Recording(LinearGaussian):
    """Checks, at every call of log_joint, that the z it gets is a fresh leaf (no grad_fn: no graph
    reaches back to earlier steps), and counts tensors that earlier steps' graphs still hold."""

    def __init__(self):
        super().__init__(latent_dim=3, data_dim=5, sigma=0.5, seed=0, dtype="float64")
        self.calls = 0
        self.leaf_inputs = []
        self.saved = []  # weakrefs to the boxes autograd keeps for saved tensors
        self.alive_at_call = []

    def log_joint(self, x, z, mask=None):
        self.calls += 1
        self.leaf_inputs.append(all(t.grad_fn is None for t in z))
        self.alive_at_call.append(sum(ref() is not None for ref in self.saved))
        return super().log_joint(x, z, mask)


class _Box:
    def __init__(self, tensor):
        self.tensor = tensor


def run_recorded(sampler, model, x):
    def pack(tensor):
        box = _Box(tensor)
        model.saved.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        return sampler.infer(model, x, generator=torch.Generator().manual_seed(0))


class LeakyShortRun(ShortRun):
    """What the test must catch: z updated inside the graph (create_graph), so step k's graph holds
    every earlier step's."""

    def infer(self, model, x, *, index=None, mask=None, generator=None):
        z = tuple(t.requires_grad_() for t in model.sample_prior(x.shape[0], generator=generator))
        for _ in range(self.num_steps):
            grads = torch.autograd.grad(model.log_joint(x, z, mask).sum(), z, create_graph=True)
            z = tuple(t + self.step_size * g for t, g in zip(z, grads))
        return Inference(z=z)


@pytest.mark.parametrize("differentiable_step", [False, True])
@pytest.mark.parametrize("cls", [ShortRun, Langevin])
def test_no_graph_survives_a_step_and_z_is_detached(cls, differentiable_step):
    """Also when a tuner has made the step size a tensor that requires grad (as a gradient tuner does)."""
    model = Recording()
    x = data(model, 4)
    num_steps = 12
    sampler = cls(num_steps=num_steps, step_size=0.01)
    sampler.step_size.requires_grad_(differentiable_step)
    result = run_recorded(sampler, model, x)
    assert model.calls == num_steps
    assert all(model.leaf_inputs)
    # When step k starts, nothing that steps 0..k-1 saved for backward is still alive.
    assert model.alive_at_call == [0] * num_steps
    assert len(model.saved) > 0  # the hook did see the per-step graphs
    for t in result.z:
        assert t.grad_fn is None and not t.requires_grad
    # One training step: gradients reach the parameters, not z (held fixed).
    loss = cls(num_steps=2).loss(model, x, result)
    loss.backward()
    assert model.weight.grad is not None and all(t.grad is None for t in result.z)


def test_the_graph_check_catches_a_leaky_sampler():
    model = Recording()
    result = run_recorded(LeakyShortRun(num_steps=6, step_size=0.01), model, data(model, 4))
    assert not all(model.leaf_inputs[1:])
    assert model.alive_at_call[-1] > model.alive_at_call[1] > 0  # grows with the step count
    assert result.z[0].grad_fn is not None


def test_infer_works_under_no_grad_and_in_float32(tiny_linear_gaussian):
    model = tiny_linear_gaussian(dtype='float32')
    x = data(model, 3)
    with torch.no_grad():
        result = ShortRun(num_steps=4, step_size=0.05, units="raw").infer(model, x)
    assert result.z[0].dtype == torch.float32 and torch.isfinite(result.z[0]).all()
    expected = ShortRun(num_steps=4, step_size=0.05, units="raw").infer(model, x, generator=None)
    assert expected.z[0].shape == result.z[0].shape


def test_infer_honours_the_mask(tiny_linear_gaussian):
    """With a mask the flow targets the posterior given the observed coordinates only."""
    model = tiny_linear_gaussian(latent_dim=2, sigma=0.7, seed=3)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0], dtype=F64)
    sub = tiny_linear_gaussian(latent_dim=2, data_dim=3, sigma=0.7, seed=3)
    with torch.no_grad():
        sub.weight.copy_(model.weight[mask.bool()])
        sub.bias.copy_(model.bias[mask.bool()])
    x = data(model, 3, 2)
    x_corrupt = x.clone()
    x_corrupt[:, ~mask.bool()] = 100.0  # unobserved values must not matter
    lam_min, lam_max = lambda_range(sub)
    sampler = ShortRun(num_steps=math.ceil(40 / (0.9 * lam_min / lam_max)), step_size=0.9 / lam_max, units="raw")
    result = sampler.infer(model, x_corrupt, mask=mask)
    torch.testing.assert_close(result.z[0], sub.posterior(x[:, mask.bool()])[0].detach(), rtol=0, atol=1e-8)


# -- step-size layouts and option errors ---------------------------------------------------------
def test_step_sizes_layouts():
    shared = ShortRun(num_steps=4, step_size=0.1, units="raw")
    assert shared.step_sizes(3).shape == (4, 3)
    assert torch.all(shared.step_sizes(3) == 0.1)
    layer = ShortRun(num_steps=4, step_size=(0.1, 0.2, 0.3), per="layer", units="raw")
    matrix = layer.step_sizes(3)
    assert matrix.shape == (4, 3) and matrix.dtype == F64
    assert torch.equal(matrix, torch.tensor([[0.1, 0.2, 0.3]] * 4, dtype=F64))
    one_for_all_layers = ShortRun(num_steps=2, step_size=0.05, per="layer", units="raw")
    assert torch.all(one_for_all_layers.step_sizes(3) == 0.05)
    step = ShortRun(num_steps=3, step_size=(0.1, 0.2, 0.3), per="step", units="raw")
    assert torch.equal(step.step_sizes(2), torch.tensor([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]], dtype=F64))
    repeated = ShortRun(num_steps=3, step_size=0.07, per="step", units="raw")
    assert repeated.step_size.shape == (3,) and torch.all(repeated.step_sizes(1) == 0.07)
    # The matrix follows the hyperparameter once it is set, and any value can be laid out without setting it.
    shared.set_hyperparameters({"step_size": torch.tensor(0.3, dtype=F64)})
    assert torch.all(shared.step_sizes(1) == 0.3)
    value = torch.tensor([0.4, 0.5, 0.6], dtype=F64, requires_grad=True)
    laid_out = step.step_sizes(2, value)
    assert torch.equal(laid_out.detach(), torch.tensor([[0.4, 0.4], [0.5, 0.5], [0.6, 0.6]], dtype=F64))
    (grad,) = torch.autograd.grad(laid_out.sum(), value)  # differentiable in the value
    assert torch.equal(grad, torch.full((3,), 2.0, dtype=F64))
    assert torch.equal(step.step_size, torch.tensor([0.1, 0.2, 0.3], dtype=F64))  # not set by step_sizes
    assert "step_size=" in repr(shared)


def test_set_hyperparameters_refuses_unknown_names_and_shapes():
    sampler = ShortRun(num_steps=3, step_size=(0.1, 0.2, 0.3), per="step", units="raw")
    with pytest.raises(UserError, match="no hyperparameter momentum"):
        sampler.set_hyperparameters({"momentum": torch.tensor(0.5)})
    with pytest.raises(UserError, match="shape"):
        sampler.set_hyperparameters({"step_size": torch.tensor(0.5)})
    assert sampler.step_size.tolist() == [0.1, 0.2, 0.3]  # nothing was set
    sampler.set_hyperparameters({"step_size": torch.tensor([0.4, 0.5, 0.6])})
    assert sampler.step_size.dtype == F64 and sampler.step_size.tolist() == pytest.approx([0.4, 0.5, 0.6])


def test_per_layer_step_sizes_act_per_layer():
    """Layer 1 gets step 0 (it must not move), layer 2 a real step: only layer 2 changes."""
    model = TwoLayer()
    x = data(model, 2)
    tiny = 1e-300
    sampler = ShortRun(num_steps=3, step_size=(tiny, 0.01), per="layer", units="raw")
    generator = torch.Generator().manual_seed(0)
    z0 = model.sample_prior(2, generator=generator)
    result = sampler.infer(model, x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.z[0], z0[0], rtol=0, atol=1e-200)
    assert (result.z[1] - z0[1]).abs().max() > 1e-4
    assert result.z[1].shape == (2, 1, 3)


def test_wrong_number_of_layer_step_sizes_is_a_user_error():
    model = TwoLayer()
    sampler = ShortRun(num_steps=2, step_size=(0.1, 0.2, 0.3), per="layer", units="raw")
    with pytest.raises(UserError, match="per latent layer"):
        sampler.infer(model, data(model, 2))


@pytest.mark.parametrize("kwargs", [
    {"num_steps": 0}, {"num_steps": -3}, {"num_steps": 2.5}, {"num_steps": True}, {"num_steps": "5"},
    {"step_size": 0.0}, {"step_size": -0.1}, {"step_size": math.nan}, {"step_size": math.inf},
    {"step_size": ()}, {"step_size": (0.1, math.nan), "per": "layer"}, {"step_size": (0.1, -0.2), "per": "step",
                                                                             "num_steps": 2},
    {"step_size": (0.1, 0.2)},  # several entries need per=layer or per=step
    {"step_size": (0.1, 0.2), "per": "step", "num_steps": 3},  # per=step needs K entries
    {"per": "steps"}, {"step_size": "abc"}, {"step_size": None},
])
@pytest.mark.parametrize("cls", [ShortRun, Langevin])
def test_bad_options_raise_user_error(cls, kwargs):
    with pytest.raises(UserError):
        cls(**kwargs)


def test_built_by_name_with_string_options():
    sampler = inferkit.load_sampler("langevin", num_steps="7", step_size="0.1,0.2", per="layer")
    assert isinstance(sampler, Langevin) and sampler.num_steps == 7
    assert sampler.step_size.tolist() == [0.1, 0.2]
    default = inferkit.load_sampler("shortrun")
    assert isinstance(default, ShortRun) and not isinstance(default, Langevin) and default.num_steps == 20
    with pytest.raises(UserError):
        inferkit.load_sampler("shortrun", step_size="nan")
    with pytest.raises(UserError):
        inferkit.load_sampler("shortrun", num_steps="0")


def test_step_size_is_saved_in_the_state_dict():
    sampler = ShortRun(num_steps=3, step_size=0.05, units="raw")
    sampler.set_hyperparameters({"step_size": torch.tensor(0.08, dtype=F64)})
    restored = ShortRun(num_steps=3, step_size=0.01, units="raw")
    restored.load_state_dict(sampler.state_dict())
    assert float(restored.step_size) == pytest.approx(0.08)
