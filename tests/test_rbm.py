"""Discrete latents under an RBM prior: the RBM's algebra and Gibbs sampler against enumeration, VIMCO's
and RWS's gradient estimators against exact gradients on tiny models, AIS / RAISE / log p(x) against
exact enumeration, and the command line on real MNIST."""

from __future__ import annotations

import json
import math
from importlib.metadata import entry_points

import pytest
import torch
from cli_helpers import one_line_error, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributions import constraints

from inferkit import UserError
from inferkit.eval.rbm import (
    ais_log_partition,
    exact_log_likelihood,
    log_likelihood_ais,
    log_likelihood_raise,
    raise_log_prior,
)
from inferkit.models.gibbs import PersistentChains, gibbs_sweeps
from inferkit.models.rbm import RBM, all_binary_vectors
from inferkit.models.rbm_prior import RBMPrior
from inferkit.samplers.rws import RWS, rws_wake_surrogates
from inferkit.samplers.vimco import VIMCO, leave_one_out_bounds, vimco_surrogate

FAST = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_rbm(n: int, m: int, seed: int, scale: float = 1.0) -> RBM:
    torch.manual_seed(seed)
    rbm = RBM(n, m).double()
    with torch.no_grad():
        rbm.weight.normal_(0, scale)
        rbm.visible_bias.normal_(0, scale)
        rbm.hidden_bias.normal_(0, scale)
    return rbm


def exact_prior(rbm: RBM) -> tuple[torch.Tensor, torch.Tensor]:
    """Every z and its exact p(z), by enumerating the joint over (z, h)."""
    zs = all_binary_vectors(rbm.num_visible, dtype=torch.float64)
    hs = all_binary_vectors(rbm.num_hidden, dtype=torch.float64)
    energy = rbm.energy(zs[:, None, :], hs[None, :, :])  # [2^n, 2^m]
    log_joint = -energy
    return zs, torch.softmax(torch.logsumexp(log_joint, 1), 0).detach()


def tiny_model(seed: int = 0, n: int = 8, m: int = 6, data: int = 6, **options) -> RBMPrior:
    torch.manual_seed(seed)
    model = RBMPrior(num_latents=n, num_hidden=m, decoder_hidden=(16,), data_shape=(data,), gibbs_steps=20,
                     **options).double()
    with torch.no_grad():
        model.rbm.weight.normal_(0, 0.8)
        model.rbm.visible_bias.normal_(0, 0.5)
        model.rbm.hidden_bias.normal_(0, 0.5)
        for p in model.decoder.parameters():
            p.mul_(3.0)
    return model


# -- the RBM ----------------------------------------------------------------------------------------
@FAST
@given(n=st.integers(1, 5), m=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_free_energies_are_minus_log_sums_of_exp_minus_energy(n, m, seed):
    rbm = random_rbm(n, m, seed)
    zs = all_binary_vectors(n, dtype=torch.float64)
    hs = all_binary_vectors(m, dtype=torch.float64)
    energy = rbm.energy(zs[:, None, :], hs[None, :, :])
    torch.testing.assert_close(rbm.free_energy(zs), -torch.logsumexp(-energy, 1))
    torch.testing.assert_close(rbm.free_energy_hidden(hs), -torch.logsumexp(-energy, 0))
    torch.testing.assert_close(rbm.log_partition_exact(), torch.logsumexp(-energy.flatten(), 0))


def test_exact_log_partition_enumerates_either_side_and_refuses_large_ones():
    wide, tall = random_rbm(3, 9, 1), random_rbm(9, 3, 2)
    for rbm in (wide, tall):
        zs = all_binary_vectors(rbm.num_visible, dtype=torch.float64)
        torch.testing.assert_close(rbm.log_partition_exact(), torch.logsumexp(-rbm.free_energy(zs), 0))
    with pytest.raises(UserError, match="AIS"):
        RBM(21, 22).log_partition_exact()


@FAST
@given(seed=st.integers(0, 10_000))
def test_gibbs_conditionals_match_the_enumerated_joint(seed):
    rbm = random_rbm(3, 4, seed)
    zs, hs = all_binary_vectors(3, dtype=torch.float64), all_binary_vectors(4, dtype=torch.float64)
    joint = torch.exp(-rbm.energy(zs[:, None, :], hs[None, :, :])).detach()  # unnormalised p(z, h)
    p_h_given_z = joint / joint.sum(1, keepdim=True)
    p_z_given_h = joint / joint.sum(0, keepdim=True)
    torch.testing.assert_close(p_h_given_z @ hs, rbm.hidden_probs(zs).detach())  # E[h_j | z] = p(h_j=1|z)
    torch.testing.assert_close(p_z_given_h.T @ zs, rbm.visible_probs(hs).detach())


def test_gibbs_chains_reach_the_exact_prior():
    rbm = random_rbm(4, 3, 5, scale=1.0)
    _, p = exact_prior(rbm)
    generator = torch.Generator().manual_seed(0)
    start = torch.zeros(20_000, 4, dtype=torch.float64)
    z = gibbs_sweeps(rbm, start, 30, generator)
    codes = (z * 2 ** torch.arange(4, dtype=torch.float64)).sum(1).long()
    empirical = torch.bincount(codes, minlength=16).double() / z.shape[0]
    tv = 0.5 * (empirical - p).abs().sum()
    assert tv < 0.02, float(tv)
    far = 0.5 * (torch.full((16,), 1 / 16, dtype=torch.float64) - p).abs().sum()
    assert far > 0.1  # the target is far from uniform, so the check has teeth


def test_persistent_chains_advance_and_live_in_the_state_dict():
    rbm = random_rbm(5, 4, 3)
    chains = PersistentChains(7, 5).double()
    before = chains.state.clone()
    out = chains.advance(rbm, 3, torch.Generator().manual_seed(1))
    assert out.shape == (7, 5) and set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(chains.state, out) and not torch.equal(before, out)
    assert "state" in chains.state_dict()


# -- the model --------------------------------------------------------------------------------------
def test_rbm_prior_model_log_joint_sampling_and_normalisation():
    model = tiny_model(n=5, m=4, data=4, binarize="threshold")
    assert model.latent_support is constraints.boolean and model.normalized is False
    (z,) = model.sample_prior(6, generator=torch.Generator().manual_seed(0))
    assert z.shape == (6, 5) and set(z.unique().tolist()) <= {0.0, 1.0}
    x = torch.tensor([[-1.0, 0.3, 0.9, -0.2]], dtype=torch.float64).expand(6, -1)  # binarises to 0, 1, 1, 0
    logits = model.decoder_logits(z)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    manual = (target * torch.nn.functional.logsigmoid(logits)
              + (1 - target) * torch.nn.functional.logsigmoid(-logits)).sum(-1)
    torch.testing.assert_close(model.log_joint(x, (z,)), -model.rbm.free_energy(z) + manual)
    # sum over every binary x of p(x) = 1: the likelihood is a normalised Bernoulli over binarised pixels
    xs = 2 * all_binary_vectors(4, dtype=torch.float64) - 1
    total = torch.logsumexp(exact_log_likelihood(model, xs), 0)
    assert abs(float(total)) < 1e-9
    decoded = model.decode((z,)).detach()
    assert decoded.shape == (6, 4) and float(decoded.abs().max()) <= 1


@pytest.mark.parametrize("options, fragment", [
    ({"num_latents": 0}, "num_latents"), ({"decoder_hidden": (0,)}, "decoder_hidden"),
    ({"pixel_range": (1.0, 0.0)}, "pixel_range"), ({"gibbs_steps": -1}, "gibbs_steps")])
def test_bad_model_options_are_user_errors(options, fragment):
    with pytest.raises(UserError, match=fragment) as info:
        RBMPrior(**options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls, options, fragment", [
    (VIMCO, {"num_samples": 1}, "num_samples"), (VIMCO, {"baseline": "mean"}, "baseline"),
    (RWS, {"hidden": (0,)}, "hidden"), (RWS, {"pretrain_fraction": 0.8, "rbm_pretrain_fraction": 0.5}, "fraction"),
    (RWS, {"pcd_steps": 0}, "pcd_steps")])
def test_bad_sampler_options_are_user_errors(cls, options, fragment):
    with pytest.raises(UserError, match=fragment) as info:
        cls(**options)
    assert "\n" not in str(info.value)


# -- VIMCO ------------------------------------------------------------------------------------------
def test_leave_one_out_bound_matches_its_definition():
    log_w = torch.randn(3, 5, dtype=torch.float64)
    out = leave_one_out_bounds(log_w)
    for b in range(3):
        for i in range(5):
            others = torch.cat([log_w[b, :i], log_w[b, i + 1:]])
            replaced = torch.cat([others, others.mean().unsqueeze(0)])
            torch.testing.assert_close(out[b, i], torch.logsumexp(replaced, 0) - math.log(5))


def _tiny_bound_problem(k: int = 3):
    torch.manual_seed(0)
    zs = all_binary_vectors(2, dtype=torch.float64)  # 4 states
    log_p_table = torch.tensor([0.0, 2.5, -1.0, 1.0], dtype=torch.float64)  # log p*(x, z) for one x
    logits = torch.tensor([0.3, -0.4], dtype=torch.float64)
    return zs, log_p_table, logits, k


def _exact_bound_gradient(zs, log_p_table, logits, k):
    """grad_phi E_{z_1..k ~ q}[log (1/k) sum_i p*(z_i)/q(z_i)], enumerating all 4^k tuples."""
    phi = logits.clone().requires_grad_(True)
    log_q_table = torch.distributions.Bernoulli(logits=phi).log_prob(zs).sum(-1)
    tuples = torch.cartesian_prod(*[torch.arange(4)] * k)
    log_q = log_q_table[tuples]
    log_w = log_p_table[tuples] - log_q
    bound = (torch.exp(log_q.sum(1)) * (torch.logsumexp(log_w, 1) - math.log(k))).sum()
    (grad,) = torch.autograd.grad(bound, phi)
    return grad


def _estimator_gradients(zs, log_p_table, logits, k, baseline, replicates=20_000):
    generator = torch.Generator().manual_seed(1)
    phi = logits.expand(replicates, -1).clone().requires_grad_(True)  # one copy per replicate
    samples = torch.bernoulli(torch.sigmoid(phi.detach()).unsqueeze(1).expand(-1, k, -1), generator=generator)
    log_q = torch.distributions.Bernoulli(logits=phi.unsqueeze(1)).log_prob(samples).sum(-1)
    index = (samples * torch.tensor([1.0, 2.0], dtype=torch.float64)).sum(-1).long()
    log_p = log_p_table[index]
    (grads,) = torch.autograd.grad(vimco_surrogate(log_p, log_q, baseline).sum(), phi)
    return grads


def test_vimco_estimator_is_unbiased_and_the_baseline_lowers_its_variance():
    zs, table, logits, k = _tiny_bound_problem()
    exact = _exact_bound_gradient(zs, table, logits, k)
    assert float(exact.abs().max()) > 0.05
    variances = {}
    for baseline in ("leave-one-out", "none"):
        grads = _estimator_gradients(zs, table, logits, k, baseline)
        mean, se = grads.mean(0), grads.std(0) / math.sqrt(grads.shape[0])
        assert ((mean - exact).abs() < 4 * se + 1e-9).all(), (baseline, mean, exact, se)
        variances[baseline] = float(grads.var(0).sum())
    assert variances["leave-one-out"] < 0.7 * variances["none"], variances


def test_vimco_surrogate_value_is_the_bound_and_model_gradient_is_weighted():
    log_p = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    log_q = torch.randn(2, 4, dtype=torch.float64)
    value = vimco_surrogate(log_p, log_q)
    torch.testing.assert_close(value, torch.logsumexp(log_p - log_q, -1) - math.log(4))
    (grad,) = torch.autograd.grad(value.sum(), log_p)
    torch.testing.assert_close(grad, torch.softmax((log_p - log_q).detach(), -1))


# -- RWS --------------------------------------------------------------------------------------------
def test_rws_wake_q_update_follows_minus_grad_kl_p_q_and_lowers_it():
    torch.manual_seed(0)
    zs = all_binary_vectors(3, dtype=torch.float64)
    log_p_table = torch.tensor([0.0, 2.0, -1.0, 1.5, 0.5, -2.0, 3.0, 0.0], dtype=torch.float64)
    posterior = torch.softmax(log_p_table, 0)

    def kl(phi):
        log_q = torch.distributions.Bernoulli(logits=phi).log_prob(zs).sum(-1)
        return (posterior * (posterior.log() - log_q)).sum()

    def wake_q_gradient(phi, k, generator):
        phi = phi.detach().clone().requires_grad_(True)
        samples = torch.bernoulli(torch.sigmoid(phi.detach()).expand(1, k, -1), generator=generator)
        log_q = torch.distributions.Bernoulli(logits=phi).log_prob(samples).sum(-1)
        log_p = log_p_table[(samples * torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)).sum(-1).long()]
        _, wake_q = rws_wake_surrogates(log_p, log_q)
        return torch.autograd.grad(wake_q.sum(), phi)[0]

    phi = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (exact,) = torch.autograd.grad(-kl(phi), phi)
    phi = phi.detach()
    generator = torch.Generator().manual_seed(0)
    estimate = wake_q_gradient(phi, 20_000, generator)
    torch.testing.assert_close(estimate, exact, atol=0.03, rtol=0.0)
    # The best mean-field q for KL(p || q) matches the marginals p(z_i = 1).
    best = float(kl(torch.logit(posterior @ zs)))
    start = float(kl(phi))
    assert start > best + 0.1
    for _ in range(100):
        phi = (phi + 0.5 * wake_q_gradient(phi, 50, generator)).detach()
    assert float(kl(phi)) < best + 0.1 * (start - best)


# -- AIS, RAISE and log p(x) against enumeration ----------------------------------------------------
def test_ais_log_partition_is_accurate_and_short_runs_sit_on_either_side():
    rbm = random_rbm(10, 8, 0, scale=1.0)
    exact = float(rbm.log_partition_exact().detach())
    generator = torch.Generator().manual_seed(0)
    long = ais_log_partition(rbm, num_chains=200, num_steps=500, generator=generator)
    assert abs(long.log_partition - exact) < max(0.05, 4 * long.standard_error)
    # Short annealing: AIS is low on average (E[Z_hat] = Z), RAISE's implied log Z high on average.
    short_ais = [ais_log_partition(rbm, num_chains=10, num_steps=5, generator=generator).log_partition
                 for _ in range(60)]
    zs, p = exact_prior(rbm)
    z = zs[torch.multinomial(p, 2000, replacement=True, generator=generator)]
    implied = (-rbm.free_energy(z).detach() - raise_log_prior(rbm, z, num_steps=5, generator=generator))
    assert sum(short_ais) / len(short_ais) < exact - 0.02
    assert float(implied.mean()) > exact + 0.1
    long_implied = -rbm.free_energy(z).detach() - raise_log_prior(rbm, z, num_steps=300, generator=generator)
    assert abs(float(long_implied.mean()) - exact) < 0.05


def test_log_likelihood_estimates_match_exact_enumeration():
    model = tiny_model(seed=1, n=10, m=6, data=8)
    generator = torch.Generator().manual_seed(0)
    x = model.decode(model.sample_prior(6, generator=generator)).detach()
    x = torch.where(torch.rand(x.shape, generator=generator, dtype=x.dtype) < (x + 1) / 2, 1.0, -1.0)
    exact = exact_log_likelihood(model, x)
    # q = the mean-field of the exact posterior: p(z_i = 1 | x) by enumeration, a good proposal
    zs = all_binary_vectors(10, dtype=torch.float64)
    log_joint = (-model.rbm.free_energy(zs) + model.log_likelihood(x, zs.expand(6, -1, -1))).detach()
    logits = torch.logit(torch.softmax(log_joint, 1) @ zs)
    log_z = ais_log_partition(model.rbm, num_chains=200, num_steps=300, generator=generator).log_partition
    ais = log_likelihood_ais(model, x, logits, num_samples=4000, log_partition=log_z, generator=generator)
    torch.testing.assert_close(ais, exact, atol=0.1, rtol=0.0)
    rai = log_likelihood_raise(model, x, logits, num_samples=1000, num_steps=100, generator=generator)
    torch.testing.assert_close(rai, exact, atol=0.15, rtol=0.0)
    # With few samples the bound (exact log Z plugged in) is below log p(x) on average.
    few = torch.stack([log_likelihood_ais(model, x, logits, num_samples=2, generator=generator,
                                          log_partition=float(model.log_partition_exact().detach())) for _ in range(200)])
    assert float((few.mean(0) - exact).max()) < 0


# -- samplers on the model, and the command line -----------------------------------------------------
def test_samplers_run_their_phases_and_refuse_other_models(tiny_linear_gaussian):
    model = tiny_model(n=6, m=4, data=5)
    x = 2 * torch.bernoulli(torch.full((4, 5), 0.5, dtype=torch.float64)) - 1
    for sampler in (VIMCO(num_samples=3, hidden=(8,), num_chains=5), RWS(num_samples=3, hidden=(8,), num_chains=5)):
        sampler.setup(model)
        assert sampler.schedule(10) == (3, 1)
        for t, phase in ((0, "autoencoder"), (3, "rbm"), (4, "train")):
            sampler.begin_iteration(t, 10)
            assert sampler.phase == phase
            inference = sampler.infer(model, x, index=torch.arange(4))
            loss = sampler.loss(model, x, inference)
            model.zero_grad()
            sampler.zero_grad()
            loss.backward()
            rbm_grad = model.rbm.weight.grad
            encoder_grad = sampler.encoder.net[0].weight.grad
            assert (rbm_grad is not None and rbm_grad.abs().sum() > 0) == (phase != "autoencoder"), phase
            assert (encoder_grad is not None and encoder_grad.abs().sum() > 0) == (phase != "rbm"), phase
        assert "chains.state" in sampler.state_dict()
    with pytest.raises(UserError, match="rbm-prior"):
        VIMCO().setup(tiny_linear_gaussian(latent_dim=8, data_dim=16, dtype="float32"))


def test_rbm_pretraining_runs_cd1_cd25_pcd25_in_equal_stages():
    sampler = VIMCO(num_samples=2, hidden=(8,))
    assert sampler.rbm_stages == (("cd", 1), ("cd", 25), ("pcd", 25))
    # 100 iterations: 30 autoencoder, 10 RBM (iteration i of them in stage floor(3 i / 10)), 60 training
    expected = ["autoencoder"] * 30 + ["cd1"] * 4 + ["cd25"] * 3 + ["pcd25"] * 3 + ["train"] * 60
    assert [sampler.stage_at(t, 100) for t in range(100)] == expected
    explicit = RWS(pretrain_iterations=2, rbm_pretrain_iterations=5,
                   rbm_stages=("cd1", "cd5", "cd10", "pcd25"))
    assert [explicit.stage_at(t, 9) for t in range(9)] == [
        "autoencoder", "autoencoder", "cd1", "cd1", "cd5", "cd10", "pcd25", "train", "train"]
    for t, (phase, stage) in enumerate([("autoencoder", None)] * 2 + [("rbm", ("cd", 1))] * 2 + [
            ("rbm", ("cd", 5)), ("rbm", ("cd", 10)), ("rbm", ("pcd", 25)), ("train", None)]):
        explicit.begin_iteration(t, 9)
        assert explicit.phase == phase and (stage is None or explicit.rbm_stage == stage), t
    assert [VIMCO(rbm_pretrain_iterations=0, pretrain_iterations=1).stage_at(t, 3) for t in range(3)] == [
        "autoencoder", "train", "train"]


@pytest.mark.parametrize("stages", [("cd0",), ("pc25",), ("cd",), ("cd2x",), ()])
def test_bad_rbm_stages_are_one_line_user_errors(stages):
    with pytest.raises(UserError, match="rbm_stages") as info:
        VIMCO(rbm_stages=stages)
    assert "\n" not in str(info.value)


def test_rbm_stages_come_from_the_command_line_as_a_list():
    from inferkit.registry import load

    sampler = load("sampler", "rws", rbm_stages="cd1,cd3,pcd10")
    assert sampler.rbm_stages == (("cd", 1), ("cd", 3), ("pcd", 10))


def test_cd_stages_sweep_from_the_codes_and_pcd_stages_advance_the_chains():
    model = tiny_model(n=6, m=4, data=5)
    coin = torch.full((4, 5), 0.5, dtype=torch.float64)
    x = 2 * torch.bernoulli(coin, generator=torch.Generator().manual_seed(2)) - 1
    sampler = VIMCO(num_samples=2, hidden=(8,), num_chains=5, pretrain_iterations=0,
                    rbm_pretrain_iterations=2, rbm_stages=("cd3", "pcd4"))
    sampler.setup(model)
    sampler.begin_iteration(0, 10)  # cd3
    chains_before = sampler.chains.state.clone()
    inference = sampler.infer(model, x, index=torch.arange(4), generator=torch.Generator().manual_seed(5))
    codes = inference.z[0]
    torch.testing.assert_close(codes, (sampler.encoder_logits(model, x) > 0).double())
    expected = gibbs_sweeps(model.rbm, codes, 3, torch.Generator().manual_seed(5))
    assert inference.info["rbm_stage"] == "cd3" and inference.info["negative"].shape == (4, 6)
    torch.testing.assert_close(inference.info["negative"], expected)
    assert torch.equal(sampler.chains.state, chains_before)  # CD leaves the persistent chains alone
    sampler.begin_iteration(1, 10)  # pcd4
    inference = sampler.infer(model, x, index=torch.arange(4), generator=torch.Generator().manual_seed(6))
    expected = gibbs_sweeps(model.rbm, chains_before, 4, torch.Generator().manual_seed(6))
    assert inference.info["rbm_stage"] == "pcd4"
    torch.testing.assert_close(inference.info["negative"], expected)
    torch.testing.assert_close(sampler.chains.state, expected)
    loss = sampler.loss(model, x, inference)
    pcd = model.rbm.free_energy(codes).mean() - model.rbm.free_energy(expected).mean()
    torch.testing.assert_close(loss, pcd)


MNIST_TINY = ["--model", "rbm-prior", "--data", "binarized-mnist", "--model-opt", "num_latents=16",
              "--model-opt", "num_hidden=8", "--model-opt", "decoder_hidden=32", "--model-opt", "gibbs_steps=5",
              "--sampler-opt", "hidden=32", "--sampler-opt", "num_samples=4", "--sampler-opt", "num_chains=8",
              "--sampler-opt", "pretrain_iterations=2", "--sampler-opt", "rbm_pretrain_iterations=2",
              "--data-opt", "num_train=64", "--data-opt", "num_test=16", "--batch-size", "8", "--quiet",
              "--train-opt", "log_every=1", "--train-opt", "eval_examples=16", "--iterations", "6"]


def binarized_mnist_registered() -> bool:
    return "binarized-mnist" in {ep.name for ep in entry_points(group="inferkit.datasets")}


@pytest.mark.parametrize("sampler", ["vimco", "rws"])
def test_cli_trains_rbm_prior_on_mnist(sampler, mnist_dir, tmp_path, capsys):
    if not binarized_mnist_registered():
        pytest.skip("the binarized-mnist entry point is not installed; reinstall inferkit (pip install -e .)")
    out = tmp_path / sampler
    code, _, err = run_cli(["run", *MNIST_TINY, "--sampler", sampler, "--data-dir", mnist_dir, "--out", out],
                           capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["tuner"]["name"] == "fixed" and config["model"]["options"]["data_shape"] == [1, 28, 28]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 6 and all(math.isfinite(m["loss"]) for m in metrics)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 6 and state["sampler"]["chains.state"].shape == (8, 16)
    code, _, err = run_cli(["eval", out, "--reference-steps", "10", "--inpaint-examples", "0", "--ais-examples", "2",
                            "--iwae-samples", "0", "--fd-samples", "0", "--no-figures", "--quiet"], capsys)
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    assert result["skipped"]["reference reconstruction"] == "the model's latents are not real-valued"
    assert result["test_reconstruction_mse_reference"] is None and "reference_inference" not in result
    estimate = result["ais_log_likelihood"]  # the RBM prior's AIS / RAISE estimator, in nats
    assert estimate["method"] == "paper eq. 6 with AIS log Z" and estimate["examples"] == 2
    assert math.isfinite(estimate["mean"]) and estimate["mean"] < 0 and math.isfinite(estimate["raise"]["mean"])
    assert math.isfinite(result["test_reconstruction_mse"])


@pytest.mark.parametrize("args, fragment", [
    (["--sampler", "shortrun"], "binary latents"),
    (["--sampler", "vimco", "--tuner", "kl-grid", "--tune-every", "1"], "fixed"),
    (["--sampler", "vimco", "--sampler-opt", "num_samples=1"], "num_samples"),
    (["--sampler", "rws", "--model-opt", "pixel_range=1,0"], "pixel_range"),
    (["--sampler", "vimco"], "--model-opt binarize=threshold"),  # shapes has grey levels
    (["--sampler", "vimco", "--sampler-opt", "rbm_stages=cd0"], "rbm_stages")])
def test_cli_refuses_wrong_combinations_with_one_line(args, fragment, tmp_path, capsys):
    code, _, err = run_cli(["run", "--model", "rbm-prior", "--model-opt", "num_latents=4", "--model-opt",
                            "num_hidden=3", "--data", "shapes", "--data-opt", "num_train=16", "--data-opt",
                            "num_test=8", "--iterations", "2", "--batch-size", "4", "--quiet",
                            *args, "--out", tmp_path / "run"], capsys)
    assert fragment in one_line_error(code, err)
