"""The baselines ABP (persistent Langevin chains), VAE and Ladder-VAE: the same trainer, data and
checkpoints as short-run inference, checked against closed forms where there are some."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_helpers import one_line_error, run_cli, train_until_crash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import inferkit
from inferkit import HasLayerConditionals, Inference, Model, UserError, kl_objective
from inferkit.models.linear_gaussian import LinearGaussian, gaussian_kl
from inferkit.samplers import ABP, VAE, LadderVAE
from inferkit.samplers.lvae import precision_weighted
from inferkit.tuners import Fixed, KLGrid

FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_LOG_2PI = math.log(2 * math.pi)

TINY = ["--model", "ladder", "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8",
        "--data-opt", "num_train=64", "--data-opt", "num_test=16", "--data-opt", "image_size=16",
        "--batch-size", "8", "--quiet", "--train-opt", "log_every=1", "--train-opt", "checkpoint_every=3",
        "--train-opt", "image_every=3", "--train-opt", "eval_examples=16"]
SAMPLER_OPTS = {"abp": ["--sampler-opt", "num_steps=3", "--sampler-opt", "test_steps=4"],
                "vae": ["--sampler-opt", "hidden=32", "--sampler-opt", "nf=8"],
                "lvae": ["--sampler-opt", "hidden=32", "--sampler-opt", "nf=8"]}


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["abp", "vae", "lvae"])
def test_each_baseline_trains_the_ladder_from_the_cli(name, tmp_path, capsys):
    out = tmp_path / name
    code, _, err = run_cli(["run", *TINY, "--sampler", name, *SAMPLER_OPTS[name], "--iterations", "4",
                            "--tune-every", "2", "--out", out], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["sampler"]["name"] == name
    assert config["tuner"]["name"] == "fixed"  # the default tuner for samplers J(s) does not apply to
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1, 2, 3] and all(math.isfinite(m["loss"]) for m in metrics)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4
    if name == "abp":
        assert state["sampler"]["_extra_state"]["seen"].sum() == 4 * 8  # 4 batches of 8 distinct examples
    else:
        assert any(key.startswith("trunk.") for key in state["sampler"])  # the encoder is checkpointed
    # eval / sample / tune rebuild the sampler through the same setup hook and load the checkpoint.
    code, _, err = run_cli(["eval", out, "--num-examples", "8", "--reference-steps", "0", "--inpaint-examples", "0",
                            "--ais-examples", "0", "--iwae-samples", "4", "--fd-samples", "0", "--no-figures"],
                           capsys)
    assert code == 0, err
    assert json.loads((out / "eval.json").read_text())["test_reconstruction_mse"] > 0
    assert run_cli(["sample", out, "--num", "4", "--output", tmp_path / "s.png"], capsys)[0] == 0
    assert run_cli(["tune", out, "--num-examples", "2"], capsys)[0] == 0  # the run's own tuner: fixed
    line = one_line_error(*run_cli(["tune", out, "--tuner", "kl-grid", "--num-examples", "2"], capsys)[::2])
    assert "KL objective does not apply" in line


@pytest.mark.parametrize("name, reason", [("abp", "persistent"), ("vae", "amortized"), ("lvae", "amortized")])
def test_kl_tuner_is_refused_with_the_reason_before_training(name, reason, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *TINY, "--sampler", name, "--tuner", "kl-grid", "--iterations", "2",
                            "--out", out], capsys)
    line = one_line_error(code, err)
    assert "KL objective does not apply" in line and reason in line and "fixed" in line
    assert not out.exists()  # refused before anything was written


def test_lvae_needs_a_model_with_layer_conditionals(tiny_linear_gaussian):
    model = tiny_linear_gaussian(latent_dim=2, data_dim=4, dtype="float32")
    assert not isinstance(model, HasLayerConditionals)
    with pytest.raises(UserError, match="per-layer conditionals"):
        LadderVAE().setup(model)
    with pytest.raises(UserError, match="setup"):
        LadderVAE().infer(model, torch.zeros(1, 4))
    with pytest.raises(UserError, match="setup"):
        VAE().infer(model, torch.zeros(1, 4))


def test_kl_objective_states_why_it_does_not_apply(tiny_linear_gaussian):
    model = tiny_linear_gaussian(latent_dim=2, data_dim=4, dtype="float32")
    x = torch.zeros(2, 4)
    for sampler, reason in ((ABP(units="raw"), "persistent"), (VAE(), "amortized"), (LadderVAE(), "amortized")):
        with pytest.raises(UserError, match=reason):
            kl_objective(model, sampler, x)
        with pytest.raises(UserError, match=reason):
            KLGrid().check(model, sampler)
    Fixed().check(model, ABP(units="raw"))  # the fixed tuner works with all of them
    abp = ABP(step_size=0.01, units="raw")
    result = Fixed(step_size=0.02).tune(model, abp, x)
    assert abp.step_size.item() == 0.01 and result.per is None
    abp.set_hyperparameters(result.hyperparameters)
    assert abp.step_size.item() == 0.02


def _tiny_ladder_data():
    spec = inferkit.runs.RunSpec.from_dict({
        "model": {"name": "ladder", "options": {"num_layers": 2, "latent_dims": [3, 2], "nf": 4}},
        "sampler": {"name": "vae", "options": {}}, "tuner": {"name": "fixed", "options": {}},
        "data": {"name": "shapes", "options": {"num_train": 32, "num_test": 8, "image_size": 16}},
        "train": {"iterations": 4, "batch_size": 8, "tune_every": 0, "eval_examples": 8, "log_every": 1}})
    return spec


@pytest.mark.parametrize("name, options", [("vae", {"hidden": 16, "nf": 4}),
                                           ("lvae", {"hidden": 16, "nf": 4, "kl_warmup": 1.0})])
def test_trainer_sets_up_the_encoder_before_the_optimiser(name, options, tmp_path):
    from inferkit.runs import build_objects
    from inferkit.trainer import train

    spec = _tiny_ladder_data()
    spec.sampler = inferkit.runs.PluginSpec(name=name, options=options)
    data, model, sampler, tuner = build_objects(spec)
    sampler.setup(model, num_examples=len(data.train))  # idempotent: the trainer's call keeps these
    before = {k: v.clone() for k, v in sampler.state_dict().items()}
    train(model, sampler, tuner, data, spec, tmp_path / "run", progress=False)
    after = sampler.state_dict()
    assert before.keys() == after.keys() and len(before) > 0
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    if name == "lvae":  # begin_iteration was called: warm-up over the whole run, last iteration t = 3 of 4
        assert sampler.kl_weight == pytest.approx(3 / 4)


# -- ABP: persistent chains ----------------------------------------------------------------------
def test_abp_chains_resume_exactly_from_a_checkpoint(tmp_path, capsys):
    from inferkit.runs import RunSpec, build_objects

    args = ["run", *TINY, "--sampler", "abp", *SAMPLER_OPTS["abp"], "--iterations", "6", "--tune-every", "0"]
    full = tmp_path / "full"
    assert run_cli([*args, "--out", full], capsys)[0] == 0
    spec = RunSpec.load(full)
    stopped = tmp_path / "stopped"
    data, _, sampler, _ = train_until_crash(spec, stopped, 3)
    # Round trip: a fresh sampler, set up and loaded from the checkpoint, holds identical chains.
    saved = torch.load(stopped / "checkpoint.pt", weights_only=True)["sampler"]["_extra_state"]
    assert 0 < int(saved["seen"].sum()) < len(data.train)
    _, model2, fresh, _ = build_objects(spec, resolve=False)
    fresh.setup(model2, num_examples=len(data.train))
    fresh.load_state_dict(torch.load(stopped / "checkpoint.pt", weights_only=True)["sampler"])
    assert torch.equal(fresh.seen, saved["seen"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.chains, saved["chains"]))
    assert all(torch.equal(a, b) for a, b in zip(fresh.chains, sampler.chains))
    # Resuming continues exactly as the uninterrupted run did: same chains, same generator.
    code, _, err = run_cli(["run", "--resume", stopped, "--quiet"], capsys)
    assert code == 0, err
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert b["iteration"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["sampler"]["_extra_state"]["seen"], b["sampler"]["_extra_state"]["seen"])
    assert all(torch.equal(x, y) for x, y in zip(a["sampler"]["_extra_state"]["chains"],
                                                  b["sampler"]["_extra_state"]["chains"]))


class Recording(LinearGaussian):
    """Linear-Gaussian model that records the ``z`` of every ``log_joint`` call (ABP's z_0 first)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls: list[torch.Tensor] = []

    def log_joint(self, x, z, mask=None):
        self.calls.append(z[0].detach().clone())
        return super().log_joint(x, z, mask)


def test_abp_shuffled_loader_gives_each_example_its_own_chain():
    torch.manual_seed(0)
    n, steps = 12, 2
    model = Recording(latent_dim=3, data_dim=5, dtype="float64")
    x = model.sample(n, generator=torch.Generator().manual_seed(1)).detach()
    sampler = ABP(num_steps=steps, step_size=0.05, units="raw")
    sampler.setup(model, num_examples=n)
    loader = DataLoader(TensorDataset(x, torch.arange(n)), batch_size=5, shuffle=True,
                        generator=torch.Generator().manual_seed(2))
    last: dict[int, torch.Tensor] = {}
    seed = 0
    for _ in range(3):
        for xb, index in loader:
            seed += 1
            model.calls.clear()
            prior = model.sample_prior(len(index), generator=torch.Generator().manual_seed(seed))[0]
            out = sampler.infer(model, xb, index=index, generator=torch.Generator().manual_seed(seed))
            z0 = model.calls[0]
            assert len(model.calls) == steps
            for row, i in enumerate(index.tolist()):
                # a seen example continues its own chain; a new one starts from the prior draw
                expected = last[i] if i in last else prior[row]
                assert torch.equal(z0[row], expected), (i, row)
                last[i] = out.z[0][row].clone()
    assert len(last) == n and bool(sampler.seen.all())
    assert all(torch.equal(sampler.chains[0][i], last[i]) for i in range(n))
    # Test data (no index) run test_steps from the prior and leave the store alone.
    stored = sampler.chains[0].clone()
    model.calls.clear()
    result = sampler.infer(model, x[:4], generator=torch.Generator().manual_seed(99))
    assert result.info["num_steps"] == sampler.test_steps == len(model.calls)
    assert torch.equal(model.calls[0], model.sample_prior(4, generator=torch.Generator().manual_seed(99))[0])
    assert torch.equal(sampler.chains[0], stored)


def test_abp_persistent_chains_reach_the_langevin_stationary_law(tiny_linear_gaussian):
    """Two steps per visit, 100 visits: persistent chains converge where 2 steps from the prior cannot.
    Unadjusted Langevin on ``N(m, P^-1)`` is stationary at ``N(m, (P - s P^2 / 2)^-1)``."""
    torch.manual_seed(0)
    model = tiny_linear_gaussian(latent_dim=2, data_dim=4, sigma=1.0, seed=3)
    precision = model.posterior_precision().detach()
    s = 0.2 / float(torch.linalg.eigvalsh(precision).max())
    x_one = model.bias.detach() + 2.0 * model.weight.detach().sum(1)
    mean, _ = model.posterior(x_one[None])
    mean = mean.detach()[0]
    assert mean.norm() > 1.0
    n = 3000
    x = x_one.expand(n, -1)
    sampler = ABP(num_steps=2, step_size=s, units="raw")
    sampler.setup(model, num_examples=n)
    g = torch.Generator().manual_seed(0)
    first = None
    for visit in range(100):
        perm = torch.randperm(n, generator=g)
        z = sampler.infer(model, x[perm], index=perm, generator=g).z[0]
        if visit == 0:
            first = z
    assert (first.mean(0) - mean).norm() > 0.5  # two steps from the prior are far from the posterior
    chains = sampler.chains[0]
    stationary = torch.linalg.inv(precision - s * precision @ precision / 2)
    torch.testing.assert_close(chains.mean(0), mean, atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(chains.T), stationary, atol=0.06, rtol=0.08)


def test_abp_options_and_store_errors(tiny_linear_gaussian):
    for kwargs in ({"num_steps": 0}, {"test_steps": -1}, {"step_size": 0.0}, {"step_size": math.inf},
                   {"store": "gpu"}):
        with pytest.raises(UserError):
            ABP(**kwargs, units="raw")
    model = tiny_linear_gaussian(latent_dim=2, data_dim=4, dtype="float32")
    with pytest.raises(UserError, match="setup"):
        ABP(units="raw").infer(model, torch.zeros(2, 4), index=torch.tensor([0, 1]))
    sampler = ABP(num_steps=1, units="raw")
    sampler.setup(model, num_examples=3)
    with pytest.raises(UserError, match="out of range"):
        sampler.infer(model, torch.zeros(2, 4), index=torch.tensor([0, 3]))
    other = ABP(units="raw")
    other.setup(model, num_examples=5)
    with pytest.raises(UserError, match="shapes"):
        other.load_state_dict(sampler.state_dict())


# -- VAE: the ELBO on the linear-Gaussian model ---------------------------------------------------
def _elbo_samples(model, sampler, x, repeats, seed):
    x_rep = x.repeat_interleave(repeats, dim=0)
    inference = sampler.infer(model, x_rep, generator=torch.Generator().manual_seed(seed))
    return sampler.elbo(model, x_rep, inference).detach().view(x.shape[0], repeats), inference


@given(latent_dim=st.integers(1, 3), data_dim=st.integers(2, 6), seed=st.integers(0, 1000))
@FAST
def test_vae_elbo_is_log_marginal_minus_the_kl_to_the_posterior(tiny_linear_gaussian, latent_dim, data_dim, seed):
    """``E_q[log p(x,z) - log q] = log p(x) - KL(q || p(z|x))`` (closed form), ``< log p(x)``."""
    torch.manual_seed(seed)
    model = tiny_linear_gaussian(latent_dim=latent_dim, data_dim=data_dim, sigma=0.7, seed=seed)
    sampler = VAE(hidden=8, depth=1, encoder="mlp", log_std_init=-0.5)
    sampler.setup(model)
    x = model.sample(3, generator=torch.Generator().manual_seed(seed)).detach() + 0.3
    repeats = 4000
    samples, _ = _elbo_samples(model, sampler, x, repeats, seed)
    with torch.no_grad():
        ((mean_q, log_std_q),) = sampler.encode(model, x)
        post_mean, post_cov = model.posterior(x)
        cov_q = torch.diag_embed(torch.exp(2 * log_std_q))
        kl = gaussian_kl(mean_q, cov_q, post_mean, post_cov.expand(3, -1, -1))
        log_marginal = model.log_marginal(x)
    assert (kl > 0).all()
    expected = log_marginal - kl
    standard_error = samples.std(1) / math.sqrt(repeats)
    assert ((samples.mean(1) - expected).abs() < 5 * standard_error + 1e-9).all()
    assert (expected < log_marginal).all()
    assert (samples.mean(1) - 5 * standard_error < log_marginal).all()
    clear = kl > 10 * standard_error  # where q is visibly off the posterior the estimate is visibly below
    assert (samples.mean(1) + 5 * standard_error < log_marginal)[clear].all()


def test_vae_elbo_is_tight_at_the_true_posterior(tiny_linear_gaussian):
    """With orthogonal columns of W the posterior is diagonal and its mean linear in x, so a linear
    encoder (``depth=0``) can be set to it exactly: then every sample's ELBO is ``log p(x)``."""
    torch.manual_seed(0)
    d, D = 3, 7
    model = tiny_linear_gaussian(latent_dim=d, data_dim=D, sigma=0.6)
    q, _ = torch.linalg.qr(torch.randn(D, d, dtype=torch.float64))
    with torch.no_grad():
        model.weight.copy_(q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))
    post_mean_map = model.weight / model.sigma**2 @ torch.linalg.inv(model.posterior_precision())  # [D, d]
    _, post_cov = model.posterior(torch.zeros(1, D, dtype=torch.float64))
    assert torch.allclose(post_cov, torch.diag(post_cov.diagonal()), atol=1e-12)
    sampler = VAE(depth=0, encoder="mlp")
    sampler.setup(model)
    head = sampler.heads[0].linear
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[:d] = post_mean_map.T
        head.bias[:d] = -model.bias @ post_mean_map
        head.bias[d:] = 0.5 * post_cov.diagonal().log()
    x = model.sample(5, generator=torch.Generator().manual_seed(1)).detach() + 0.5
    samples, inference = _elbo_samples(model, sampler, x, 50, 0)
    log_marginal = model.log_marginal(x).detach()
    torch.testing.assert_close(samples, log_marginal[:, None].expand_as(samples), atol=1e-9, rtol=0)
    x_rep = x.repeat_interleave(50, dim=0)
    torch.testing.assert_close(sampler.loss(model, x_rep, inference).detach(), -log_marginal.mean(),
                               atol=1e-9, rtol=0)


def test_vae_loss_trains_encoder_and_generator_in_one_step(tiny_linear_gaussian):
    torch.manual_seed(0)
    model = tiny_linear_gaussian(latent_dim=2, data_dim=4, dtype="float32")
    sampler = VAE(hidden=8)
    sampler.setup(model)
    x = model.sample(6).detach()
    loss = sampler.loss(model, x, sampler.infer(model, x))
    loss.backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sampler.heads.parameters())
    for kwargs in ({"hidden": 0}, {"depth": -1}, {"encoder": "transformer"}):
        with pytest.raises(UserError):
            VAE(**kwargs)


def test_vae_conv_encoder_on_images_and_masked_input(tiny_ladder):
    model = tiny_ladder()
    sampler = VAE(hidden=16, nf=4)
    sampler.setup(model)
    assert sampler.trunk.kind == "conv"
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    mask = torch.ones_like(x)
    mask[..., 8:] = 0
    hidden = x.clone()
    hidden[..., 8:] = math.nan  # what hides behind the mask never reaches the encoder or the ELBO
    a = sampler.infer(model, x * mask, mask=mask, generator=torch.Generator().manual_seed(0))
    b = sampler.infer(model, hidden, mask=mask, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(u, v) for u, v in zip(a.z, b.z))
    assert [tuple(t.shape) for t in a.z] == [(3, 3), (3, 2)]
    assert torch.isfinite(sampler.loss(model, hidden, b, mask))


# -- Ladder-VAE ----------------------------------------------------------------------------------
class TwoLayerLinear(Model):
    """``z_2 ~ N(0, I)``, ``z_1 | z_2 ~ N(A z_2 + c, diag s^2)``, ``x | z_1 ~ N(W z_1 + b, sigma^2 I)``:
    a hierarchical model with layer conditionals and a closed-form ``log p(x)``."""

    def __init__(self, d1=3, d2=2, data_dim=5, sigma=0.5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        self.A = torch.nn.Parameter(torch.randn(d1, d2, generator=g, dtype=f64))
        self.c = torch.nn.Parameter(0.3 * torch.randn(d1, generator=g, dtype=f64))
        self.log_s = torch.nn.Parameter(0.3 * torch.randn(d1, generator=g, dtype=f64))
        self.W = torch.nn.Parameter(torch.randn(data_dim, d1, generator=g, dtype=f64) / math.sqrt(d1))
        self.b = torch.nn.Parameter(0.1 * torch.randn(data_dim, generator=g, dtype=f64))
        self.sigma = sigma
        self.latent_shapes = ((d1,), (d2,))
        self.data_shape = (data_dim,)

    def layer_conditional(self, layer, z_above, state=None):
        if layer == 1:
            zeros = torch.zeros(1, self.latent_shapes[1][0], dtype=torch.float64)
            return zeros, torch.ones_like(zeros), None
        return z_above @ self.A.T + self.c, self.log_s.exp().expand(z_above.shape[0], -1), None

    def from_centered(self, z, conditionals):
        return tuple(z), torch.zeros(z[0].shape[0], dtype=z[0].dtype)

    def sample_prior(self, n, *, generator=None):
        z2 = torch.randn(n, self.latent_shapes[1][0], generator=generator, dtype=torch.float64)
        mean, std, _ = self.layer_conditional(0, z2)
        return (mean + std * torch.randn(mean.shape, generator=generator, dtype=torch.float64), z2)

    def log_prior(self, z):
        z1, z2 = z
        mean, std, _ = self.layer_conditional(0, z2)
        return (-0.5 * (z2.square().sum(-1) + z2.shape[-1] * _LOG_2PI)
                - 0.5 * (((z1 - mean) / std).square() + _LOG_2PI).sum(-1) - std.log().sum(-1))

    def decode(self, z):
        return z[0] @ self.W.T + self.b

    def log_joint(self, x, z, mask=None):
        per = -0.5 * (((x - self.decode(z)) / self.sigma).square() + _LOG_2PI) - math.log(self.sigma)
        return self.log_prior(z) + per.sum(-1)

    def log_marginal(self, x):
        cov_z1 = self.A @ self.A.T + torch.diag(self.log_s.exp().square())
        cov = self.W @ cov_z1 @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        mean = self.W @ self.c + self.b
        return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


def test_lvae_elbo_bounds_the_closed_form_log_marginal():
    torch.manual_seed(0)
    model = TwoLayerLinear()
    assert isinstance(model, HasLayerConditionals)
    sampler = LadderVAE(hidden=8, encoder="mlp", log_std_init=-0.5)
    sampler.setup(model)
    x = model.decode(model.sample_prior(3, generator=torch.Generator().manual_seed(1))).detach()
    repeats = 4000
    x_rep = x.repeat_interleave(repeats, dim=0)
    inference = sampler.infer(model, x_rep, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        analytic = sampler.elbo(model, x_rep, inference).view(3, repeats)
        monte_carlo = (model.log_joint(x_rep, inference.z) - inference.log_q).view(3, repeats)
        log_marginal = model.log_marginal(x)
    se = monte_carlo.std(1) / math.sqrt(repeats)
    # the closed-form per-layer KLs and the plain estimate have the same expectation, below log p(x)
    assert ((analytic.mean(1) - monte_carlo.mean(1)).abs() < 5 * se).all()
    assert (monte_carlo.mean(1) + 5 * se < log_marginal).all()
    assert (analytic.mean(1) < log_marginal).all()
    # with beta = 1 and no free bits the loss is the negative (analytic) ELBO
    torch.testing.assert_close(sampler.loss(model, x_rep, inference).detach(), -analytic.mean())


def test_lvae_log_q_is_the_density_of_the_latents_the_model_sees():
    """Centered and whitened ladders with the same weights define the same p(x, z) in different
    coordinates; the Ladder-VAE draws the same centered sample for both, so ``log p(x, z) - log q``
    must agree sample by sample (the log-Jacobian of ``from_centered`` is accounted for)."""
    torch.manual_seed(0)
    opts = {"num_layers": 3, "latent_dims": (4, 3, 2), "nf": 4, "image_size": 16, "channels": 1}
    whitened = inferkit.load_model("ladder", parameterization="whitened", **opts).double()
    centered = inferkit.load_model("ladder", parameterization="centered", **opts).double()
    centered.load_state_dict(whitened.state_dict())
    sampler = LadderVAE(hidden=16, nf=4)
    sampler.setup(whitened)
    x = torch.rand(4, 1, 16, 16, dtype=torch.float64) * 2 - 1
    a = sampler.infer(whitened, x, generator=torch.Generator().manual_seed(3))
    b = sampler.infer(centered, x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(centered.whiten(b.z), a.z)
    torch.testing.assert_close(whitened.log_joint(x, a.z) - a.log_q, centered.log_joint(x, b.z) - b.log_q)
    torch.testing.assert_close(sampler.elbo(whitened, x, a), sampler.elbo(centered, x, b))


@given(seed=st.integers(0, 10_000), dim=st.integers(1, 4))
@FAST
def test_precision_weighting_is_the_normalised_product_of_the_two_gaussians(seed, dim):
    g = torch.Generator().manual_seed(seed)
    mean_hat, mean_p = torch.randn(2, dim, generator=g, dtype=torch.float64)
    std_hat, std_p = torch.rand(2, dim, generator=g, dtype=torch.float64) + 0.2
    mean_q, std_q = precision_weighted(mean_hat, std_hat, mean_p, std_p)
    normal = torch.distributions.Normal
    z = torch.randn(5, dim, generator=g, dtype=torch.float64)
    product = normal(mean_hat, std_hat).log_prob(z) + normal(mean_p, std_p).log_prob(z)
    difference = normal(mean_q, std_q).log_prob(z) - product  # constant in z
    torch.testing.assert_close(difference, difference[:1].expand_as(difference))
    assert (std_q < torch.minimum(std_hat, std_p)).all()


def test_lvae_warmup_and_free_bits():
    torch.manual_seed(0)
    model = TwoLayerLinear()
    x = model.decode(model.sample_prior(8)).detach()
    sampler = LadderVAE(hidden=8, encoder="mlp", kl_warmup=0.5, free_bits=50.0)
    sampler.setup(model)
    inference = sampler.infer(model, x, generator=torch.Generator().manual_seed(0))
    reconstruction = sampler.log_likelihood(model, x, inference).mean()
    kl_means = [kl.mean() for kl in inference.info["kl"]]
    assert all(0 < k < 50 for k in kl_means)  # below the free bits: each layer counts 50 nats
    sampler.begin_iteration(0, 100)
    assert sampler.kl_weight == 0.0
    torch.testing.assert_close(sampler.loss(model, x, inference), -reconstruction)
    sampler.begin_iteration(25, 100)
    torch.testing.assert_close(sampler.loss(model, x, inference), -reconstruction + 0.5 * 2 * 50.0)
    sampler.begin_iteration(60, 100)
    assert sampler.kl_weight == 1.0
    sampler.free_bits = 0.0
    torch.testing.assert_close(sampler.loss(model, x, inference), -reconstruction + sum(kl_means))
    for kwargs in ({"free_bits": -1.0}, {"kl_warmup": 1.5}):
        with pytest.raises(UserError):
            LadderVAE(**kwargs)


def test_inference_of_the_amortized_samplers_carries_log_q():
    torch.manual_seed(0)
    model = TwoLayerLinear()
    x = model.decode(model.sample_prior(2)).detach()
    for sampler in (VAE(hidden=4, encoder="mlp"), LadderVAE(hidden=4, encoder="mlp")):
        sampler.setup(model)
        result = sampler.infer(model, x)
        assert isinstance(result, Inference) and result.log_q.shape == (2,)
        assert [tuple(t.shape) for t in result.z] == [(2, 3), (2, 2)]
