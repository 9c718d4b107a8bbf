"""Log-likelihoods that can rank models: AIS at its default settings against the closed-form linear-Gaussian
``log p(x)`` and against quadrature on a non-Gaussian posterior, BDMC bracketing, paired statistics on known
numbers, bits per dimension against exactly known cases, the Inception weights' SHA-256 check, and
``inferkit compare`` end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import inferkit
from inferkit.cli import main
from inferkit.errors import UserError
from inferkit.eval import ais, inception, paired, units
from inferkit.evaluation import EvalConfig, evaluate, seeded_subset
from inferkit.interfaces import DataSet, DataSplit

LOG_2PI = math.log(2 * math.pi)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ais_accuracy import TanhDecoder


def _simulate(model, n, seed):
    """``z ~ p(z)``, ``x ~ p(x | z)``: ``z`` is an exact posterior sample of ``x``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = model.sample_prior(n, generator=generator)
        return z[0], model.sample_observation(z, generator=generator)


# --------------------------------------------------------------------------------------- AIS accuracy
def test_default_ais_is_within_a_nat_of_the_closed_form_on_a_sharp_posterior():
    model = inferkit.load_model("linear-gaussian", latent_dim=8, data_dim=64, sigma=0.1, dtype="float64")
    _, x = _simulate(model, 8, seed=1)
    exact = model.log_marginal(x).detach()
    result = ais.ais_log_likelihood(model, x, generator=torch.Generator().manual_seed(0))
    error = result.log_likelihood - exact
    assert error.abs().mean() < 1.0 and error.abs().max() < 1.0
    assert result.monte_carlo_error.shape == (8,) and result.log_weights.shape == (8, 16)
    assert 0.5 < result.acceptance_rate < 1.0


def test_annealing_from_the_prior_is_far_off_on_the_same_posterior():
    """What the Laplace base fixes: 50 distributions from the prior miss log p(x) by many nats."""
    model = inferkit.load_model("linear-gaussian", latent_dim=8, data_dim=64, sigma=0.1, dtype="float64")
    _, x = _simulate(model, 4, seed=1)
    exact = model.log_marginal(x).detach()
    result = ais.ais_log_likelihood(model, x, base="prior", num_chains=4, num_steps=50, leapfrog_steps=5,
                                    generator=torch.Generator().manual_seed(0))
    assert (exact - result.log_likelihood).mean() > 5.0




def test_ais_matches_quadrature_on_a_non_gaussian_posterior():
    model = TanhDecoder()
    generator = torch.Generator().manual_seed(1)
    z = model.sample_prior(4, generator=generator)
    x = model.decode(z) + model.sigma * torch.randn(4, 3, generator=generator, dtype=torch.float64)
    exact = model.log_marginal(x)
    assert torch.allclose(exact, model.log_marginal(x, n=801, width=6.5), atol=1e-6)  # the grid has converged
    one = ais.ais_log_likelihood(model, x, num_chains=1, num_steps=1, generator=torch.Generator().manual_seed(0))
    assert (one.log_likelihood - exact).abs().mean() > 2.0  # the Laplace base alone is not the posterior
    result = ais.ais_log_likelihood(model, x, num_chains=8, num_steps=100, generator=torch.Generator().manual_seed(0))
    assert (result.log_likelihood - exact).abs().mean() < 0.5


# ----------------------------------------------------------------------------------------------- BDMC
def test_bdmc_brackets_the_exact_log_marginal_and_the_gap_shrinks():
    """Prior base on a small linear-Gaussian (the Laplace base would be exact there): forward AIS below,
    reverse AIS from the simulated z above log p(x), on average over 8 images, and the gap narrows with T."""
    model = inferkit.load_model("linear-gaussian", latent_dim=4, data_dim=8, sigma=0.3, dtype="float64")
    z, x = _simulate(model, 8, seed=3)
    exact = model.log_marginal(x).detach()
    gaps = []
    for steps in (5, 100):
        options = {"base": "prior", "num_chains": 4, "num_steps": steps, "leapfrog_steps": 5}
        forward = ais.ais_log_likelihood(model, x, generator=torch.Generator().manual_seed(0), **options)
        reverse = ais.reverse_ais_log_likelihood(model, x, z, generator=torch.Generator().manual_seed(1), **options)
        assert (forward.log_likelihood - exact).mean() < 0.1
        assert (reverse.log_likelihood - exact).mean() > -0.1
        gaps.append(float((reverse.log_likelihood - forward.log_likelihood).mean()))
    assert gaps[0] > 1.0 and gaps[1] < 0.5 * gaps[0]


# ------------------------------------------------------------------------------------- paired statistics
def test_paired_difference_on_known_numbers():
    a = [1.0, 2.0, 3.0, 4.0]
    b = [2.0, 3.5, 3.5, 5.0]  # d = 1, 1.5, 0.5, 1: mean 1, s_d = sqrt(1/6)
    r = paired.paired_difference(a, b)
    se = math.sqrt(1 / 6) / 2
    t = 1 / se
    # Student t with 3 degrees of freedom: F(t) = 1/2 + (1/pi) (u / (1 + u^2) + atan u), u = t / sqrt 3
    u = t / math.sqrt(3)
    p = 2 * (1 - (0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi))
    assert r["mean_difference"] == pytest.approx(1.0) and r["standard_error"] == pytest.approx(se)
    assert r["t"] == pytest.approx(t) and r["p_value"] == pytest.approx(p, rel=1e-9)
    assert r["examples"] == 4 and r["significant"]  # p = 0.016, |mean| = 4.9 s.e.
    noisy = paired.paired_difference(a, [1.5, 1.5, 3.5, 3.5])  # d = +-0.5: mean 0
    assert noisy["mean_difference"] == 0 and not noisy["significant"]


def test_compare_records_pairs_by_test_index():
    a = {"subset_seed": 0, "indices": [5, 7, 9], "measures": {"reconstruction_mse": [1.0, 2.0, 3.0]}}
    b = {"subset_seed": 0, "indices": [9, 5, 7, 11], "measures": {"reconstruction_mse": [3.5, 1.5, 2.5, 99.0]}}
    rows = paired.compare_records(a, b)
    assert rows["reconstruction_mse"]["examples"] == 3
    assert rows["reconstruction_mse"]["mean_difference"] == pytest.approx(0.5)
    assert rows["reconstruction_mse"]["standard_error"] == 0 and rows["reconstruction_mse"]["significant"]
    with pytest.raises(UserError, match="different test subsets"):
        paired.compare_records(a, {**b, "subset_seed": 1})


def test_the_test_subset_is_a_seeded_permutation_prefix():
    full = seeded_subset(50, seed=3)
    assert sorted(full.tolist()) == list(range(50))
    assert seeded_subset(50, seed=3, count=10).tolist() == full[:10].tolist()
    assert seeded_subset(50, seed=4).tolist() != full.tolist()


# ----------------------------------------------------------------------------------------- bits per dim
def test_a_uniform_density_over_the_bins_has_exactly_log2_levels_bits_per_dim():
    levels, dims = 256, 784
    a = units.bin_width(levels)
    log_p = -dims * math.log(levels * a)  # uniform on [-1 - a/2, 1 + a/2]^D
    assert units.bits_per_dim(log_p, dims, levels) == pytest.approx(8.0, abs=1e-12)
    assert units.bits_per_dim(-4 * math.log(4 * units.bin_width(4)), 4, 4) == pytest.approx(2.0)


def test_bits_per_dim_of_a_gaussian_bounds_its_discrete_probability():
    """A 1-d Gaussian density N(0, 0.3^2) on 8-bit data: E_u[bits/dim] at dequantised points (in closed
    form, E[(x + a (u - 1/2))^2] = x^2 + a^2 / 12) is at least -log2 P(v), P(v) the Gaussian mass of v's
    bin, and within 0.001 bits of it (the bin is narrow); Monte Carlo dequantisation agrees."""
    levels, sigma = 256, 0.3
    a = units.bin_width(levels)
    v = torch.arange(100, 160, dtype=torch.float64)
    x = a * v - 1
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), sigma)
    discrete = -torch.log2(normal.cdf(x + a / 2) - normal.cdf(x - a / 2))
    expected_log_p = -0.5 * (x.pow(2) + a * a / 12) / sigma**2 - math.log(sigma) - 0.5 * LOG_2PI
    bpd = units.bits_per_dim(expected_log_p, 1, levels)
    assert (bpd >= discrete).all() and (bpd - discrete).max() < 1e-3
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([units.dequantise(x, levels, generator=generator) for _ in range(2000)])
    assert ((draws - x).abs() <= a / 2).all()
    assert (units.bits_per_dim(normal.log_prob(draws), 1, levels).mean(0) - bpd).abs().max() < 1e-3


# ---------------------------------------------------------------------------------------- FID weights
def test_inception_weights_with_the_wrong_sha256_give_one_line(tmp_path):
    path = tmp_path / inception.WEIGHTS_NAME
    path.write_bytes(b"not the weights")
    with pytest.raises(UserError, match="SHA-256") as caught:
        inception.load_fid_inception(path)
    assert "\n" not in str(caught.value) and inception.WEIGHTS_NAME in str(caught.value)
    assert inception.WEIGHTS_SHA256.startswith("6726825d")  # the torch.hub suffix of the file name


def test_reference_statistics_are_cached_as_plain_npz(tmp_path):
    torch.manual_seed(0)
    network = inception.FIDInceptionV3().eval()
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    mu, sigma, n = inception.reference_statistics(network, images, name="toy", split="train", cache=tmp_path)
    (path,) = tmp_path.glob("toy-train-3-*.npz")
    with np.load(path, allow_pickle=False) as stored:
        np.testing.assert_array_equal(stored["mu"], mu)
    again = inception.reference_statistics(None, images, name="toy", split="train", cache=tmp_path)  # no network
    np.testing.assert_array_equal(again[1], sigma)
    assert n == 3 and mu.shape == (2048,)


# ------------------------------------------------------------------------------------ eval and compare
class _Vectors(DataSplit):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return self.x.shape[0]

    @property
    def data_shape(self):
        return tuple(self.x.shape[1:])

    def batch(self, indices):
        return {"x": self.x[indices], "index": torch.as_tensor(indices)}

    def to(self, device):
        return _Vectors(self.x.to(device))


class _VectorData(DataSet):
    name = "vectors"

    def __init__(self, train, test):
        self.train, self.test = _Vectors(train), _Vectors(test)


def test_eval_writes_per_image_values_and_compare_finds_the_better_sampler(tmp_path, capsys):
    model = inferkit.load_model("linear-gaussian", latent_dim=3, data_dim=6, sigma=0.3, dtype="float64")
    _, x = _simulate(model, 40, seed=5)
    data = _VectorData(x[:8], x[8:])
    config = EvalConfig(reference_steps=0, inpaint_examples=16, ais_examples=6, ais_chains=2, ais_steps=10,
                        ais_leapfrog=3, bdmc_examples=2, iwae_samples=0, fd_samples=0, figures=False, factor_rows=0)
    folders = []
    for steps in (1, 200):
        folder = tmp_path / f"run{steps}"
        folder.mkdir()
        sampler = inferkit.load_sampler("shortrun", num_steps=steps, step_size=0.02)
        result = evaluate(model, sampler, data, config, out_dir=folder)
        folders.append(str(folder))
    record = json.loads((folder / "eval_per_image.json").read_text())
    assert record["indices"] == result["test_subset"]["indices"] and len(record["indices"]) == 32
    assert len(record["measures"]["reconstruction_mse"]) == 32 and len(record["measures"]["ais_log_likelihood"]) == 6
    assert result["ais_log_likelihood"]["standard_error_kind"].startswith("Monte Carlo")
    assert result["ais_bdmc"]["examples"] == 2 and math.isfinite(result["ais_bdmc"]["gap_mean"])
    capsys.readouterr()
    assert main(["compare", *folders, "--json", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    assert "reconstruction_mse" in out and "significant: B better" in out
    rows = json.loads((tmp_path / "cmp.json").read_text())["comparisons"][folders[1]]
    assert rows["reconstruction_mse"]["mean_difference"] < 0 and rows["ais_log_likelihood"]["examples"] == 6
    assert main(["compare", folders[0]]) == 2
