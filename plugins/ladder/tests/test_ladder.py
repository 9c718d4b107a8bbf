"""Tests of the ``ladder`` model plugin (small sizes: the file runs in well under a minute)."""

from __future__ import annotations

import inspect
import json
import math
import typing
from importlib import metadata

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inferkit_ladder import LadderConfig, LadderModel
from inferkit_ladder.config import default_latent_dims
from torch.distributions import Normal

from inferkit.errors import UserError
from inferkit.interfaces import HasObservationNoise, Model

FAST = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IMAGE_SIZES = [16, 28, 32, 64]


def small_model(*, num_layers=2, latent_dims=(3, 2), image_size=16, channels=1, nf=4, seed=0, **kw):
    torch.manual_seed(seed)
    return LadderModel(
        num_layers=num_layers, latent_dims=latent_dims, image_size=image_size, channels=channels, nf=nf, **kw
    )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_x(model: LadderModel, n: int, seed: int = 1) -> torch.Tensor:
    w = model.out.weight
    return torch.rand(n, *model.data_shape, generator=gen(seed), dtype=w.dtype) * 2 - 1


@st.composite
def model_options(draw, max_layers=5, sizes=IMAGE_SIZES):
    num_layers = draw(st.integers(1, max_layers))
    dims = tuple(draw(st.lists(st.integers(1, 6), min_size=num_layers, max_size=num_layers)))
    return {
        "num_layers": num_layers,
        "latent_dims": dims,
        "image_size": draw(st.sampled_from(sizes)),
        "channels": draw(st.sampled_from([1, 3])),
        "nf": draw(st.sampled_from([2, 4])),
        "parameterization": draw(st.sampled_from(["centered", "whitened"])),
        "projection_channels": draw(st.sampled_from([1, 4])),
        "sigma_head": draw(st.sampled_from(["log-variance", "softplus"])),
        "output_block": draw(st.sampled_from(["residual", "deconv"])),
    }


def reference_sigma(cfg: LadderConfig, v):
    """The authors' ``exp(0.5 * clamp(softplus(v) + 1e-8, 0, 10))``, or inferkit's softplus head."""
    if cfg.sigma_head == "softplus":
        return F.softplus(v) + cfg.min_sigma
    return torch.exp(0.5 * torch.clamp(F.softplus(v) + 1e-8, 0.0, 10.0))


def reference_block(det, h):
    """``d(h) = h + gelu(conv_3x3(gelu(conv_5x5(h))))`` with torch.nn.functional."""
    out = F.gelu(F.conv2d(h, det.conv1.weight, det.conv1.bias, padding=2))
    return h + F.gelu(F.conv2d(out, det.conv2.weight, det.conv2.bias, padding=1))


def reference_head(head, h, r):
    pad = 0 if r >= 5 else 1
    return F.linear(F.gelu(F.conv2d(h, head.conv.weight, head.conv.bias, padding=pad)).reshape(h.shape[0], -1),
                    head.linear.weight, head.linear.bias)


def reference_decode_mean(model: LadderModel, h):
    cfg = model.config
    if cfg.output_block == "residual":
        h = reference_block(model.final, h)
    return torch.tanh(F.conv_transpose2d(h, model.out.weight, model.out.bias, stride=2, padding=1))


def reference_log_joint(model: LadderModel, x, z, mask=None):
    """Independent computation of log p(x, z) from the submodules' weights with torch.nn.functional
    and torch.distributions."""
    cfg = model.config
    n, L, r, c = z[0].shape[0], cfg.num_layers, cfg.image_size // 2, cfg.projection_channels
    std = Normal(torch.zeros((), dtype=x.dtype), torch.ones((), dtype=x.dtype))
    zc = list(z)
    log_p = std.log_prob(z[-1]).sum(-1)
    h = None
    for l in reversed(range(L)):
        proj = model.proj[l]
        hl = F.gelu(F.linear(zc[l], proj.linear.weight, proj.linear.bias)).reshape(n, c, r, r)
        hl = F.gelu(F.conv_transpose2d(hl, proj.up.weight, None, stride=1, padding=2))
        hl = reference_block(model.det[l], hl)
        h = hl if h is None else hl + h
        if l >= 1:
            mu = reference_head(model.mu[l - 1], h, r)
            sigma = reference_sigma(cfg, reference_head(model.sigma[l - 1], h, r))
            if cfg.parameterization == "whitened":
                zc[l - 1] = mu + sigma * z[l - 1]
                log_p = log_p + std.log_prob(z[l - 1]).sum(-1)
            else:
                log_p = log_p + Normal(mu, sigma).log_prob(z[l - 1]).sum(-1)
    mean = reference_decode_mean(model, h)
    pix = Normal(mean, torch.tensor(model.observation_sigma, dtype=x.dtype)).log_prob(x)
    if mask is not None:
        pix = pix * mask
    return log_p + pix.sum((1, 2, 3))


# -- shapes and ranges ---------------------------------------------------------------------
@FAST
@given(opts=model_options(), n=st.integers(1, 3))
def test_shapes(opts, n):
    model = LadderModel(**opts)
    L, dims = opts["num_layers"], opts["latent_dims"]
    assert model.latent_shapes == tuple((d,) for d in dims)
    assert model.data_shape == (opts["channels"], opts["image_size"], opts["image_size"])
    assert model.num_layers == L and model.latent_dim == sum(dims)
    z = model.sample_prior(n, generator=gen(0))
    assert isinstance(z, tuple) and [tuple(t.shape) for t in z] == [(n, d) for d in dims]
    x = model.decode(z)
    assert tuple(x.shape) == (n, *model.data_shape)
    assert tuple(model.sample(n, generator=gen(1)).shape) == (n, *model.data_shape)
    assert tuple(model.log_joint(x, z).shape) == (n,)
    assert tuple(model.log_prior(z).shape) == (n,)
    conds = model.conditionals(z)
    assert len(conds) == L
    for (mu, sigma), d in zip(conds, dims):
        assert tuple(mu.shape) == tuple(sigma.shape) == (n, d) and bool((sigma > 0).all())


@pytest.mark.parametrize("image_size,channels", [(28, 1), (32, 3), (64, 3), (16, 1)])
def test_paper_image_sizes_with_default_dims(image_size, channels):
    model = LadderModel(image_size=image_size, channels=channels, nf=8)
    assert model.latent_shapes == ((16,), (8,), (4,))
    x = model.sample(2, generator=gen(0))
    assert tuple(x.shape) == (2, channels, image_size, image_size)


def test_default_latent_dims():
    assert default_latent_dims(1) == (4,)
    assert default_latent_dims(3) == (16, 8, 4)
    assert default_latent_dims(5) == (64, 32, 16, 8, 4)
    assert LadderConfig().latent_dims == (16, 8, 4)


@FAST
@given(opts=model_options(sizes=[16, 28]), seed=st.integers(0, 2**16))
def test_decode_range(opts, seed):
    model = LadderModel(**opts)
    z = tuple(3 * t for t in model.sample_prior(4, generator=gen(seed)))
    x = model.decode(z)
    assert bool(torch.isfinite(x).all()) and bool((x.abs() < 1).all())


# -- the density ---------------------------------------------------------------------------
@FAST
@given(opts=model_options(max_layers=4, sizes=[8, 16, 28]), seed=st.integers(0, 2**16))
def test_log_joint_matches_reference(opts, seed):
    model = LadderModel(**opts).double()
    z = model.sample_prior(3, generator=gen(seed))
    x = random_x(model, 3, seed)
    mask = (torch.rand(3, 1, *model.data_shape[1:], generator=gen(seed + 1)) > 0.5).double()
    with torch.no_grad():
        torch.testing.assert_close(model.log_joint(x, z), reference_log_joint(model, x, z))
        torch.testing.assert_close(model.log_joint(x, z, mask), reference_log_joint(model, x, z, mask))
        zero = torch.zeros_like(x)
        torch.testing.assert_close(model.log_prior(z), reference_log_joint(model, x, z, zero))


def test_single_layer_by_hand():
    model = small_model(num_layers=1, latent_dims=(4,)).double()
    z = (torch.randn(2, 4, generator=gen(0), dtype=torch.float64),)
    x = random_x(model, 2)
    p, d, e = model.proj[0], model.det[0], model.final
    h = F.gelu(p.up(F.gelu(p.linear(z[0])).reshape(2, 4, 8, 8)))  # c = 4 maps of 8 x 8 (16 / 2)
    h = h + F.gelu(d.conv2(F.gelu(d.conv1(h))))
    h = h + F.gelu(e.conv2(F.gelu(e.conv1(h))))
    mean = torch.tanh(model.out(h))
    s = model.observation_sigma
    expected = (
        -0.5 * (z[0] ** 2).sum(1) - 2 * math.log(2 * math.pi)
        + (-0.5 * ((x - mean) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
    )
    torch.testing.assert_close(model.log_joint(x, z), expected)


@pytest.mark.parametrize("parameterization", ["centered", "whitened"])
def test_masks(parameterization):
    model = small_model(num_layers=3, latent_dims=(4, 3, 2), channels=3, parameterization=parameterization)
    model = model.double()
    z = model.sample_prior(3, generator=gen(2))
    x = random_x(model, 3)
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    torch.testing.assert_close(model.log_joint(x, z, ones), model.log_joint(x, z))
    torch.testing.assert_close(model.log_joint(x, z, zeros), model.log_prior(z))
    # A broadcast mask (one per pixel, shared by channels and batch) equals the full one.
    pixel_mask = (torch.rand(1, 1, 16, 16, generator=gen(3)) > 0.5).double()
    full = pixel_mask.expand_as(x).clone()
    torch.testing.assert_close(model.log_joint(x, z, pixel_mask), model.log_joint(x, z, full))
    # Bool masks work too.
    torch.testing.assert_close(model.log_joint(x, z, full.bool()), model.log_joint(x, z, full))


@pytest.mark.parametrize("parameterization", ["centered", "whitened"])
def test_masked_log_joint_ignores_hidden_pixels(parameterization):
    model = small_model(channels=3, parameterization=parameterization).double()
    z0 = model.sample_prior(2, generator=gen(4))
    x = random_x(model, 2)
    mask = (torch.rand(2, 1, 16, 16, generator=gen(5)) > 0.5).double()
    hidden = (mask == 0).expand_as(x)
    assert bool(hidden.any())

    def value_and_grad(x_):
        z = tuple(t.clone().requires_grad_(True) for t in z0)
        v = model.log_joint(x_, z, mask)
        grads = torch.autograd.grad(v.sum(), z)
        return v.detach(), grads

    v0, g0 = value_and_grad(x)
    for fill in (torch.randn_like(x) * 100, torch.full_like(x, float("nan")), torch.full_like(x, float("inf"))):
        v1, g1 = value_and_grad(torch.where(hidden, fill, x))
        assert torch.equal(v0, v1)
        for a, b in zip(g0, g1):
            assert bool(torch.isfinite(b).all()) and torch.equal(a, b)
    # ...while changing an observed pixel does change it.
    observed = ~hidden
    v2, _ = value_and_grad(torch.where(observed, x + 0.1, x))
    assert not torch.allclose(v0, v2)


def test_bad_mask_and_shapes_raise_user_error():
    model = small_model()
    z = model.sample_prior(2, generator=gen(0))
    x = random_x(model, 2)
    with pytest.raises(UserError):
        model.log_joint(x, z, torch.ones(2, 1, 8, 8))
    with pytest.raises(UserError):
        model.log_joint(torch.zeros(2, 3, 16, 16), z)
    with pytest.raises(UserError):
        model.log_joint(x, z[:1])
    with pytest.raises(UserError):
        model.log_joint(x, (z[0], torch.zeros(2, 5)))
    with pytest.raises(UserError):
        model.decode(z[0])


@FAST
@given(opts=model_options(max_layers=4, sizes=[16]), seed=st.integers(0, 2**16))
def test_centered_and_whitened_agree(opts, seed):
    opts = dict(opts, parameterization="centered")
    centered = LadderModel(**opts).double()
    whitened = LadderModel(**dict(opts, parameterization="whitened")).double()
    whitened.load_state_dict(centered.state_dict())
    z = centered.sample_prior(3, generator=gen(seed))
    x = random_x(centered, 3, seed)
    with torch.no_grad():
        conds = centered.conditionals(z)
        eps = tuple((zl - mu) / sigma for zl, (mu, sigma) in zip(z, conds))
        torch.testing.assert_close(eps, centered.whiten(z))
        torch.testing.assert_close(whitened.center(eps), z)
        log_det = sum(sigma.log().sum(-1) for _, sigma in conds)
        torch.testing.assert_close(centered.log_joint(x, z), whitened.log_joint(x, eps) - log_det,
                                   rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(centered.log_prior(z), whitened.log_prior(eps) - log_det,
                                   rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(centered.decode(z), whitened.decode(eps))
        # The same seed gives the same prior sample, seen through either parameterization.
        torch.testing.assert_close(centered.sample_prior(3, generator=gen(seed)),
                                   whitened.center(whitened.sample_prior(3, generator=gen(seed))))


@pytest.mark.parametrize("sigma_head,low,high", [("softplus", 0.5, math.inf), ("log-variance", 1.0, math.exp(5.0))])
def test_conditionals_top_is_standard_normal_and_sigma_range(sigma_head, low, high):
    model = small_model(num_layers=3, latent_dims=(4, 3, 2), min_sigma=0.5, sigma_head=sigma_head)
    z = model.sample_prior(5, generator=gen(0))
    conds = model.conditionals(z)
    mu_top, sigma_top = conds[-1]
    assert torch.equal(mu_top, torch.zeros(5, 2)) and torch.equal(sigma_top, torch.ones(5, 2))
    for _, sigma in conds[:-1]:
        assert bool((sigma >= low).all()) and bool((sigma <= high).all())


def test_log_variance_sigma_is_the_authors_clamped_exponential():
    from inferkit_ladder.model import log_variance_sigma

    v = torch.tensor([-100.0, 0.0, 1.0, 9.0, 50.0], dtype=torch.float64)
    softplus = torch.log1p(torch.exp(torch.tensor([-100.0, 0.0, 1.0, 9.0], dtype=torch.float64))) + 1e-8
    expected = torch.cat([torch.exp(0.5 * softplus), torch.tensor([math.exp(5.0)], dtype=torch.float64)])
    torch.testing.assert_close(log_variance_sigma(v), expected, rtol=1e-12, atol=0)
    assert float(log_variance_sigma(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(2.0 ** 0.5)


@pytest.mark.parametrize("parameterization", ["centered", "whitened"])
def test_sample_prior_reproducible(parameterization):
    model = small_model(num_layers=3, latent_dims=(4, 3, 2), parameterization=parameterization)
    state = torch.get_rng_state()
    a = model.sample_prior(4, generator=gen(7))
    assert torch.equal(torch.get_rng_state(), state), "sample_prior must draw only from the generator"
    b = model.sample_prior(4, generator=gen(7))
    c = model.sample_prior(4, generator=gen(8))
    assert all(torch.equal(s, t) for s, t in zip(a, b))
    assert not all(torch.equal(s, t) for s, t in zip(a, c))
    assert all(not t.requires_grad for t in a)
    torch.testing.assert_close(model.sample(4, generator=gen(7)), model.decode(a))


# -- autodiff ------------------------------------------------------------------------------
@pytest.mark.parametrize("parameterization", ["centered", "whitened"])
def test_vmap_hessian_symmetric_and_matches_autograd(parameterization):
    model = small_model(num_layers=3, latent_dims=(3, 2, 2), parameterization=parameterization).double()
    n, dims = 3, [3, 2, 2]
    z = torch.cat(model.sample_prior(n, generator=gen(0)), dim=1)
    x = random_x(model, n)
    mask = torch.ones(1, 16, 16, dtype=torch.float64)
    mask[:, :8] = 0

    def f(z_flat, x_one):  # one example, as a batch of one
        return model.log_joint(x_one[None], tuple(t[None] for t in z_flat.split(dims)), mask).sum()

    H = torch.func.vmap(torch.func.hessian(f))(z, x)
    assert tuple(H.shape) == (n, 7, 7)
    torch.testing.assert_close(H, H.transpose(1, 2))
    G = torch.func.vmap(torch.func.jacrev(f))(z, x)
    G_fwd = torch.func.vmap(torch.func.jacfwd(f))(z, x)
    for i in range(n):
        def f_i(v, x_i=x[i]):
            return f(v, x_i)

        H_ref = torch.autograd.functional.hessian(f_i, z[i])
        torch.testing.assert_close(H[i], H_ref)
        g_ref = torch.autograd.functional.jacobian(f_i, z[i])
        torch.testing.assert_close(G[i], g_ref)
        torch.testing.assert_close(G_fwd[i], g_ref)


@pytest.mark.parametrize("parameterization", ["centered", "whitened"])
def test_gradcheck_float64(parameterization):
    model = small_model(parameterization=parameterization).double()
    z = tuple(t.requires_grad_(True) for t in model.sample_prior(2, generator=gen(1)))
    x = random_x(model, 2)
    mask = (torch.rand(2, 1, 16, 16, generator=gen(2)) > 0.3).double()
    assert model.log_joint(x, z).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda *zs: model.log_joint(x, zs, mask), z)


def test_log_joint_trains_every_parameter():
    model = small_model(num_layers=3, latent_dims=(4, 3, 2), channels=3)
    z = model.sample_prior(2, generator=gen(0))
    loss = -model.log_joint(random_x(model, 2), z).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert p.grad.abs().sum() > 0, name


# -- observation noise, config, options ----------------------------------------------------
def test_observation_sigma_in_state_dict():
    model = small_model(observation_sigma=0.3)
    assert isinstance(model, Model) and isinstance(model, HasObservationNoise)
    assert isinstance(model.observation_sigma, float) and model.observation_sigma == pytest.approx(0.3)
    z = model.sample_prior(2, generator=gen(0))
    x = random_x(model, 2)
    before = model.log_joint(x, z)
    model.set_observation_sigma(0.1)
    assert model.observation_sigma == pytest.approx(0.1)
    assert not torch.allclose(before, model.log_joint(x, z))
    fresh = small_model(observation_sigma=0.3, seed=1)
    fresh.load_state_dict(model.state_dict())
    assert fresh.observation_sigma == pytest.approx(0.1)
    torch.testing.assert_close(fresh.log_joint(x, z), model.log_joint(x, z))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UserError):
            model.set_observation_sigma(bad)


@FAST
@given(opts=model_options(), sigma=st.floats(1e-3, 10.0), min_sigma=st.floats(1e-4, 1.0))
def test_config_round_trip(tmp_path_factory, opts, sigma, min_sigma):
    cfg = LadderConfig(**opts, observation_sigma=sigma, min_sigma=min_sigma)
    assert LadderConfig.from_dict(cfg.to_dict()) == cfg
    assert LadderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path_factory.mktemp("cfg") / "ladder.json"
    cfg.save(path)
    assert LadderConfig.load(path) == cfg
    model = LadderModel.from_config(cfg)
    assert model.config == cfg


def test_config_load_errors(tmp_path):
    with pytest.raises(UserError):
        LadderConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError):
        LadderConfig.load(bad)
    with pytest.raises(UserError):
        LadderConfig.from_dict({"num_layers": 2, "colour": 3})


def test_constructor_options_match_config():
    sig = inspect.signature(LadderModel.__init__, eval_str=True)
    params = [p for name, p in sig.parameters.items() if name != "self"]
    fields = LadderConfig.__dataclass_fields__
    assert [p.name for p in params] == list(fields)
    for p in params:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY
        base = typing.get_args(p.annotation)[0] if typing.get_origin(p.annotation) is typing.Annotated \
            else p.annotation  # Annotated: a bound checked when the option is coerced
        assert base in (int, float, str, tuple[int, ...]), p.name
        assert p.default == fields[p.name].default, p.name
    assert LadderModel(latent_dims="4,3,2", nf=2, image_size=16).latent_shapes == ((4,), (3,), (2,))


@pytest.mark.parametrize(
    "options",
    [
        {"num_layers": 0},
        {"num_layers": -1},
        {"num_layers": 2.5},
        {"num_layers": True},
        {"num_layers": 3, "latent_dims": (4, 4)},
        {"num_layers": 2, "latent_dims": (4, 0)},
        {"latent_dims": "a,b"},
        {"nf": 0},
        {"channels": 0},
        {"image_size": 31},
        {"image_size": 6},
        {"image_size": 512},
        {"observation_sigma": 0.0},
        {"observation_sigma": -0.1},
        {"observation_sigma": float("nan")},
        {"parameterization": "diagonal"},
        {"min_sigma": 0.0},
        {"min_sigma": float("inf")},
        {"projection_channels": 0},
        {"sigma_head": "exp"},
        {"output_block": "linear"},
    ],
)
def test_bad_options_raise_user_error(options):
    with pytest.raises(UserError) as info:
        LadderModel(**options)
    message = str(info.value)
    assert message.startswith("ladder: ") and "\n" not in message


def test_entry_point_registers_ladder():
    eps = metadata.entry_points(group="inferkit.models")
    found = [ep for ep in eps if ep.name == "ladder"]
    if not found:
        pytest.skip("inferkit-ladder is not installed")
    assert found[0].load() is LadderModel


# -- inferkit.HasLayerConditionals (what the Ladder-VAE walks top-down) ------------------------------
@pytest.mark.parametrize("parameterization", ["centered", "whitened"])
def test_layer_conditionals_walked_top_down_match_the_prior(parameterization):
    from inferkit.interfaces import HasLayerConditionals

    model = small_model(num_layers=3, latent_dims=(4, 3, 2), parameterization=parameterization).double()
    assert isinstance(model, HasLayerConditionals)
    eps = tuple(torch.randn(5, d, generator=gen(l), dtype=torch.float64) for l, d in enumerate((4, 3, 2)))
    z = model.center(eps)  # centered latents
    walked, state = [None] * 3, None
    for layer in (2, 1, 0):
        mean, std, state = model.layer_conditional(layer, None if layer == 2 else z[layer + 1], state)
        walked[layer] = (mean, std)
    assert torch.equal(walked[2][0], torch.zeros(1, 2, dtype=torch.float64))
    for (mean, std), (ref_mean, ref_std) in zip(walked, model.conditionals(z)):
        torch.testing.assert_close(mean.expand_as(ref_mean), ref_mean)
        torch.testing.assert_close(std.expand_as(ref_std), ref_std)
    # log p(z) in centered coordinates from the walked conditionals
    centered_prior = sum(Normal(m, s).log_prob(t).sum(-1) for t, (m, s) in zip(z, walked))
    latents, log_det = model.from_centered(z, walked)
    if parameterization == "centered":
        assert all(torch.equal(a, b) for a, b in zip(latents, z)) and torch.equal(log_det, torch.zeros(5))
        torch.testing.assert_close(model.log_prior(latents), centered_prior)
    else:
        for a, b in zip(latents, eps):
            torch.testing.assert_close(a, b)
        # change of variables: log p_eps(eps) = log p_z(z) + log|det dz/deps| = log p_z(z) - log_det
        torch.testing.assert_close(model.log_prior(latents), centered_prior - log_det)


def test_from_centered_log_det_is_the_jacobian_of_whitening():
    model = small_model(num_layers=2, latent_dims=(3, 2)).double()
    z = model.center(tuple(torch.randn(1, d, dtype=torch.float64, generator=gen(d)) for d in (3, 2)))

    def whiten_flat(flat):
        parts = (flat[:3].unsqueeze(0), flat[3:].unsqueeze(0))
        return torch.cat([t[0] for t in model.whiten(parts)])

    jac = torch.func.jacrev(whiten_flat)(torch.cat([t[0] for t in z]))
    _, log_det = model.from_centered(z, model.conditionals(z))
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jac)[1])


def test_layer_conditional_user_errors():
    model = small_model()
    with pytest.raises(UserError, match="layers are 0..1"):
        model.layer_conditional(2, None)
    with pytest.raises(UserError, match="layer above"):
        model.layer_conditional(0, None)


# -- Table 4 (appendix 8.1) and the authors' code, layer by layer ---------------------------------
def record_shapes(model: LadderModel, n: int):
    """``{name: output shape}`` of every p_l, d_l, mu_l / sigma_l head conv and the decoded x, in one
    decode of ``n`` prior samples (hooks on the submodules)."""
    shapes, handles = {}, []
    for l in range(model.num_layers):
        handles.append(model.proj[l].register_forward_hook(
            lambda _m, _i, out, l=l: shapes.__setitem__(f"p_{l}", tuple(out.shape))))
        handles.append(model.proj[l].linear.register_forward_hook(
            lambda _m, _i, out, l=l: shapes.__setitem__(f"p_{l}.linear", tuple(out.shape))))
        handles.append(model.det[l].register_forward_hook(
            lambda _m, _i, out, l=l: shapes.__setitem__(f"d_{l}", tuple(out.shape))))
    for l in range(1, model.num_layers):
        handles.append(model.mu[l - 1].conv.register_forward_hook(
            lambda _m, _i, out, l=l: shapes.__setitem__(f"mu_{l}.conv", tuple(out.shape))))
    with torch.no_grad():
        z = model.center(model.sample_prior(n, generator=gen(0)))
        shapes["x"] = tuple(model.decode(model.sample_prior(n, generator=gen(0))).shape)
    for handle in handles:
        handle.remove()
    return shapes, [tuple(t.shape) for t in z]


@pytest.mark.parametrize("num_layers,dims", [(3, (128, 64, 32)), (5, (128, 96, 64, 64, 64))])
def test_layer_shapes_follow_table_4(num_layers, dims):
    # Table 4: x [n, 3, 32, 32], nf = 64; every z_{l+1,p} = p_l(z_{l+1}) and z_{l+1,d} is [n, nf, 16, 16],
    # every z_l is [n, d_l] (the table's [n, d_l, 1, 1]). L=3: d = (128, 64, 32); L=5: the code's dims.
    torch.manual_seed(0)
    model = LadderModel(num_layers=num_layers, latent_dims=dims, nf=64, image_size=32, channels=3)
    n = 2
    shapes, z_shapes = record_shapes(model, n)
    assert z_shapes == [(n, d) for d in dims]
    for l in range(num_layers):
        assert shapes[f"p_{l}"] == (n, 64, 16, 16) and shapes[f"d_{l}"] == (n, 64, 16, 16)
        assert shapes[f"p_{l}.linear"] == (n, 4 * 16 * 16)  # the code: Linear(z_dim, coef * ngf * ngf)
    for l in range(1, num_layers):
        assert shapes[f"mu_{l}.conv"] == (n, dims[l - 1], 12, 12)  # the code: Linear(z_dim * 12 * 12, z_dim)
    assert shapes["x"] == (n, 3, 32, 32)


def authors_parameter_count(dims_top_first, ngf=16, coef=4, nc=3):
    """Parameters of the authors' ``G`` (train_celeba_five_layers.py, use_bn=False, use_ladder=False)
    written out from its layers: Projection, Deterministic (+ the extra one), Stochastic, output."""
    nf = ngf * coef
    projection = sum(z * coef * ngf * ngf + coef * ngf * ngf + coef * nf * 25 for z in dims_top_first)
    deterministic = (len(dims_top_first) + 1) * ((nf * nf * 25 + nf) + (nf * nf * 9 + nf))
    stochastic = sum(2 * ((nf * z * 25 + z) + (z * 12 * 12 * z + z)) for z in dims_top_first[1:])
    output = nf * nc * 4 * 4 + nc
    return projection + deterministic + stochastic + output


@pytest.mark.parametrize("dims", [(128, 96, 64, 64, 64), (128, 64, 32)])
def test_parameter_count_equals_the_authors_generator(dims):
    model = LadderModel(num_layers=len(dims), latent_dims=dims, nf=64, image_size=32, channels=3)
    assert sum(p.numel() for p in model.parameters()) == authors_parameter_count(dims[::-1])
    # Table 4's reading drops the extra d block before o_0: exactly one block fewer.
    text = LadderModel(num_layers=len(dims), latent_dims=dims, nf=64, image_size=32, channels=3,
                       output_block="deconv")
    block = (64 * 64 * 25 + 64) + (64 * 64 * 9 + 64)
    assert sum(p.numel() for p in text.parameters()) == authors_parameter_count(dims[::-1]) - block
