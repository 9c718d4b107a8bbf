"""Evaluators against exact mathematics: AIS and IWAE against the linear-Gaussian log p(x),
inpainting against its closed-form conditional, Fréchet distance against the Gaussian closed form,
the FID network's architecture and weight loading, the classifier, the hierarchy check, and
``inferkit eval`` end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
from inferkit.cli import main
from inferkit.errors import UserError
from inferkit.eval import ais, frechet, hierarchy, inception, inpainting, iwae
from inferkit.interfaces import Inference, Sampler


def _linear_gaussian(sigma=0.5):
    return inferkit.load_model("linear-gaussian", latent_dim=4, data_dim=8, sigma=sigma, dtype="float64")


# ------------------------------------------------------------------------------------------------ AIS
def test_ais_matches_the_exact_log_marginal_within_half_a_nat():
    model = _linear_gaussian()
    x = model.sample(6, generator=torch.Generator().manual_seed(1)).detach()
    result = ais.ais_log_likelihood(model, x, num_chains=8, num_steps=500, leapfrog_steps=5,
                                    generator=torch.Generator().manual_seed(0))
    exact = model.log_marginal(x).detach()
    assert result.log_likelihood.dtype == torch.float64
    assert (result.log_likelihood - exact).abs().max() < 0.5
    assert 0.3 < result.acceptance_rate < 1.0


def test_ais_with_one_step_is_importance_sampling_from_the_prior():
    """T = 1: log w = log p(x | z_0), z_0 ~ p(z); with many chains its mean is near log p(x)
    but, with few intermediate steps on a sharp posterior, clearly worse than T = 300."""
    model = _linear_gaussian(sigma=0.2)
    x = model.sample(4, generator=torch.Generator().manual_seed(2)).detach()
    exact = model.log_marginal(x).detach()
    options = {"base": "prior", "num_chains": 4, "generator": torch.Generator().manual_seed(0)}
    one = ais.ais_log_likelihood(model, x, num_steps=1, **options)
    many = ais.ais_log_likelihood(model, x, num_steps=300, **options)
    assert (exact - many.log_likelihood).abs().mean() < (exact - one.log_likelihood).abs().mean()


def test_sigmoid_schedule_runs_from_zero_to_one_increasing():
    betas = ais.sigmoid_schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and betas.dtype == torch.float64
    assert (betas.diff() > 0).all()


# ----------------------------------------------------------------------------------------------- IWAE
class ExactPosterior(Sampler):
    """An amortized sampler whose q is the exact linear-Gaussian posterior (or that posterior with
    its covariance scaled by ``widen``)."""

    def __init__(self, widen: float = 1.0):
        super().__init__()
        self.widen = widen

    def infer(self, model, x, *, index=None, mask=None, generator=None):
        mean, cov = model.posterior(x)
        q = torch.distributions.MultivariateNormal(mean, covariance_matrix=self.widen * cov)
        z = mean + torch.randn(mean.shape, generator=generator, dtype=mean.dtype) @ torch.linalg.cholesky(
            self.widen * cov).T
        return Inference(z=(z,), log_q=q.log_prob(z))


def test_iwae_bound_equals_log_p_x_when_q_is_the_posterior():
    model = _linear_gaussian()
    x = model.sample(5, generator=torch.Generator().manual_seed(3)).detach()
    bound = iwae.iwae_bound(model, ExactPosterior(), x, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bound, model.log_marginal(x).detach(), atol=1e-8, rtol=0)


def test_iwae_bound_is_below_log_p_x_and_tightens_with_k():
    model = _linear_gaussian()
    x = model.sample(16, generator=torch.Generator().manual_seed(4)).detach()
    exact = model.log_marginal(x).detach()
    sampler = ExactPosterior(widen=3.0)
    k1 = iwae.iwae_bound(model, sampler, x, 1, generator=torch.Generator().manual_seed(0))
    k64 = iwae.iwae_bound(model, sampler, x, 64, generator=torch.Generator().manual_seed(0))
    assert k1.mean() < k64.mean() < exact.mean()


def test_iwae_refuses_a_sampler_without_log_q():
    model = _linear_gaussian()
    sampler = inferkit.load_sampler("shortrun", num_steps=2)
    assert not iwae.is_amortized(model, sampler, model.sample(2).detach())
    with pytest.raises(UserError, match="not amortized"):
        iwae.iwae_bound(model, sampler, model.sample(2).detach(), 4)


# ----------------------------------------------------------------------------------------- inpainting
def test_inpainting_fills_hidden_entries_with_the_closed_form_conditional_mean():
    """Noise-free flow run long converges to the mode = mean of p(z | x_obs); the fill of the hidden
    entries is then W_h m + b_h with m = P_o^{-1} W_o^T (x_o - b_o) / sigma^2."""
    model = _linear_gaussian()
    x = model.sample(3, generator=torch.Generator().manual_seed(5)).detach()
    mask = inpainting.make_mask("random-pixels", 3, (8,), generator=torch.Generator().manual_seed(1)).double()
    sampler = inferkit.load_sampler("shortrun", num_steps=3000, step_size=0.02, units="raw")
    filled = inpainting.inpaint(model, sampler, x, mask)
    weight, bias, var = model.weight.detach(), model.bias.detach(), model.sigma ** 2
    for i in range(3):
        observed = mask[i].bool()
        w_o = weight[observed]
        precision = torch.eye(4, dtype=torch.float64) + w_o.T @ w_o / var
        mean = torch.linalg.solve(precision, w_o.T @ (x[i, observed] - bias[observed]) / var)
        expected = weight[~observed] @ mean + bias[~observed]
        torch.testing.assert_close(filled[i, ~observed], expected, atol=1e-6, rtol=0)
    _, hidden = inpainting.hidden_mse(x, filled, mask)
    assert hidden == float((1 - mask).sum())


def test_mask_patterns_hide_the_stated_regions():
    n, shape = 4, (3, 16, 16)
    centre = inpainting.make_mask("centre-square", n, shape)
    assert centre.shape == (n, 1, 16, 16) and (1 - centre).mean() == 0.25 and centre[:, :, 8, 8].eq(0).all()
    half = inpainting.make_mask("half", n, shape)
    assert (1 - half).mean() == 0.5 and half[:, :, 15].eq(0).all() and half[:, :, 0].eq(1).all()
    blocks = inpainting.make_mask("random-blocks", n, shape, generator=torch.Generator().manual_seed(0))
    assert 0 < (1 - blocks).mean() <= 4 * 16 / 256
    pixels = inpainting.make_mask("random-pixels", 64, shape, generator=torch.Generator().manual_seed(0))
    assert abs(float((1 - pixels).mean()) - 0.5) < 0.02
    with pytest.raises(UserError):
        inpainting.make_mask("centre-square", 2, (8,))


# ------------------------------------------------------------------------------------------- Fréchet
@settings(max_examples=10, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_frechet_distance_matches_the_gaussian_closed_form(dim, seed):
    """Against ``|mu_1 - mu_2|^2 + tr S_1 + tr S_2 - 2 tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2}``, computed
    by symmetric eigendecompositions (not the routine under test)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    s1, s2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
    m1, m2 = rng.normal(size=dim), rng.normal(size=dim)

    def sqrt_psd(m):
        values, vectors = np.linalg.eigh(m)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root = sqrt_psd(s1)
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrt_psd(root @ s2 @ root))
    assert frechet.frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-7, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_and_of_samples():
    var1, var2 = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    closed = 1.0 + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()  # means differ by 1 in one coordinate
    got = frechet.frechet_distance(np.array([0.0, 0.0]), np.diag(var1), np.array([1.0, 0.0]), np.diag(var2))
    assert got == pytest.approx(closed)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 2, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 2.0])
    y = torch.randn(20_000, 2, generator=generator, dtype=torch.float64) * torch.tensor([3.0, 1.0])
    y[:, 0] += 1
    assert frechet.frechet_distance_of_features(x, y) == pytest.approx(closed, rel=0.05)


# --------------------------------------------------------------------------------- FID Inception net
def test_fid_inception_has_the_published_layout_and_loads_a_state_dict_by_path(tmp_path):
    torch.manual_seed(0)
    network = inception.FIDInceptionV3().eval()
    state = network.state_dict()
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert state["fc.weight"].shape == (1008, 2048)
    assert not any(key.startswith("AuxLogits") for key in state)
    path = tmp_path / inception.WEIGHTS_NAME
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    loaded = inception.load_fid_inception(path, expected_sha256=inception.file_sha256(path))
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    features = inception.inception_features(loaded, images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    torch.testing.assert_close(features, inception.inception_features(network, images))


def test_fid_weights_errors_name_the_option(tmp_path):
    with pytest.raises(UserError, match="--inception-weights"):
        inception.load_fid_inception(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="--inception-weights"):
        inception.load_fid_inception(bad, expected_sha256=None)


# --------------------------------------------------------------------------------- hierarchy/factors
def test_disagreement_is_the_chance_two_columns_differ():
    levels = torch.tensor([[0], [0], [0], [0], [0], [1], [2], [3]])  # row 1 constant, row 2 all different
    assert float(hierarchy.disagreement(levels, 2, 4)[0]) == pytest.approx((0 + 0.75) / 2)


def test_vary_layer_changes_only_that_layer_within_a_row(tiny_ladder):
    model = tiny_ladder(num_layers=3, latent_dims=(4, 3, 2), image_size=8)
    z = hierarchy.vary_layer(model, 1, 2, 3, generator=torch.Generator().manual_seed(0))
    for layer, t in enumerate(z):
        rows = t.view(2, 3, -1)
        same = (rows == rows[:, :1]).all()
        assert bool(same) == (layer != 1)


# ------------------------------------------------------------------------------------- CLI end to end
TINY_RUN = ["run", "--model", "ladder", "--sampler", "shortrun", "--tuner", "fixed",
            "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8",
            "--sampler-opt", "num_steps=4", "--sampler-opt", "step_size=0.02",
            "--data-opt", "num_train=256", "--data-opt", "num_test=48", "--data-opt", "image_size=16",
            "--batch-size", "16", "--iterations", "10", "--tune-every", "0", "--quiet",
            "--train-opt", "eval_examples=16"]


@pytest.mark.slow
def test_eval_command_writes_every_measure_and_figure(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TINY_RUN, "--out", str(run)]) == 0
    args = ["eval", str(run), "--reference-steps", "10", "--inpaint-examples", "16", "--ais-examples", "4",
            "--ais-steps", "10", "--fd-samples", "64", "--classifier-iterations", "150", "--quiet"]
    assert main(args) == 0
    result = json.loads((run / "eval.json").read_text())
    for key in ("test_reconstruction_mse", "test_reconstruction_mse_reference", "classifier_frechet_distance"):
        assert math.isfinite(result[key]) and result[key] >= 0
    assert set(result["inpainting_mse"]) == set(inpainting.MASK_PATTERNS)
    assert result["ais_log_likelihood"]["examples"] == 4 and math.isfinite(result["ais_log_likelihood"]["mean"])
    assert result["iwae_bound"] is None and "not amortized" in result["skipped"]["IWAE"]  # shortrun
    assert result["reference_inference"]["num_steps"] == 10
    factors = result["hierarchy_factors"]
    assert set(factors["dominant_layer"]) == {"background", "shape", "foreground", "scale", "pos_x", "pos_y"}
    assert result["classifier"]["test_accuracy"]["background"] > 0.5  # 4 levels: chance is 0.25
    for name in ("eval_samples.png", "eval_reconstructions.png", "eval_inpainting_half.png",
                 "eval_hierarchy_z1.png", "eval_hierarchy_z2.png"):
        assert (run / name).is_file() and name in result["figures"]
    trained_at = (run / "feature_classifier.pt").stat().st_mtime_ns
    assert main([*args, "--no-figures"]) == 0  # the saved classifier is reused, not retrained
    assert (run / "feature_classifier.pt").stat().st_mtime_ns == trained_at
    capsys.readouterr()
    assert main(["eval", str(run), "--inception-weights", str(tmp_path / "nope.pth")]) == 2
    assert "--inception-weights" in capsys.readouterr().err


def test_an_unnormalised_model_gets_no_log_likelihood_in_nats():
    from inferkit.evaluation import EvalConfig, evaluate
    from inferkit.interfaces import UnnormalizedModel

    data = inferkit.load_dataset("shapes", num_train=8, num_test=8)
    model = inferkit.load_model("ladder", image_size=16, nf=8)
    sampler = inferkit.load_sampler("shortrun", num_steps=2)
    config = EvalConfig(num_examples=4, reference_steps=0, inpaint_examples=0, ais_examples=2, ais_steps=2,
                        iwae_samples=0, fd_samples=0, figures=False, factor_rows=0)
    assert math.isfinite(evaluate(model, sampler, data, config)["ais_log_likelihood"]["mean"])

    class Unnormalised(type(model), UnnormalizedModel):  # as an energy-based or RBM prior declares it
        pass

    model = Unnormalised(image_size=16, nf=8)
    assert model.normalized is False
    result = evaluate(model, sampler, data, config)
    assert result["ais_log_likelihood"] is None
    assert "log Z unknown" in result["skipped"]["log-likelihood (the model's own estimator)"]
    result = evaluate(model, sampler, data, dataclasses.replace(config, iwae_samples=4))
    assert result["iwae_bound"] is None and "log Z unknown" in result["skipped"]["IWAE"]
