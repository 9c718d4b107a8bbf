"""The stochastic (Lanczos) log-determinant against exact linear algebra and the other estimators."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inferkit.latents import hessians
from inferkit.objective import (
    LogDetEstimator,
    hessian_vector_product_operator,
    kl_objective,
    lanczos_quadrature,
)
from inferkit.samplers.shortrun import ShortRun
from inferkit.tuners.kl_grid import KLGrid

FLOAT64 = torch.float64


def random_symmetric(dim: int, seed: int, *, indefinite: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=FLOAT64))
    eigenvalues = 0.2 + 3 * torch.rand(dim, generator=generator, dtype=FLOAT64)
    if indefinite:
        eigenvalues[0] = -eigenvalues[0]
    return basis @ torch.diag(eigenvalues) @ basis.T


@settings(max_examples=25, deadline=None)
@given(dim=st.integers(1, 12), seed=st.integers(0, 10_000), indefinite=st.booleans())
def test_lanczos_with_full_krylov_space_is_exact_per_probe(dim, seed, indefinite):
    """With m = D steps Gauss quadrature is exact: ``v^T log|M| v`` for every probe."""
    matrix = random_symmetric(dim, seed, indefinite=indefinite)
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    log_abs = vectors @ torch.diag(eigenvalues.abs().log()) @ vectors.T
    generator = torch.Generator().manual_seed(seed + 1)
    probes = torch.randint(0, 2, (3, 2, dim), generator=generator).to(FLOAT64) * 2 - 1
    estimate, ritz_min = lanczos_quadrature(lambda v: v @ matrix, probes, dim)
    expected = torch.einsum("pbi,ij,pbj->pb", probes, log_abs, probes).mean(0)
    torch.testing.assert_close(estimate, expected, rtol=1e-8, atol=1e-8)
    assert torch.all(ritz_min >= eigenvalues.min() - 1e-8)
    assert (ritz_min < 0).all() == indefinite or dim == 1 or not indefinite


def test_lanczos_breakdown_on_an_invariant_subspace_is_exact():
    """A probe inside a 2-d invariant subspace stops after 2 steps instead of producing garbage."""
    matrix = torch.diag(torch.tensor([2.0, 3.0, 5.0, 7.0], dtype=FLOAT64))
    probe = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]], dtype=FLOAT64)
    estimate, ritz_min = lanczos_quadrature(lambda v: v @ matrix, probe, 4)
    assert estimate.item() == pytest.approx(math.log(2.0) + math.log(3.0), abs=1e-10)
    assert ritz_min.item() == pytest.approx(2.0, abs=1e-10)


def test_hutchinson_average_converges_to_the_trace():
    """Many probes: the mean of ``v^T log M v`` approaches ``tr log M`` within a few standard errors."""
    dim = 20
    matrix = random_symmetric(dim, 3, indefinite=False)
    exact = torch.linalg.eigvalsh(matrix).log().sum()
    generator = torch.Generator().manual_seed(0)
    probes = torch.randint(0, 2, (400, 1, dim), generator=generator).to(FLOAT64) * 2 - 1
    per_probe = torch.stack([lanczos_quadrature(lambda v: v @ matrix, p[None], 10)[0] for p in probes])
    standard_error = per_probe.std() / math.sqrt(len(per_probe))
    assert abs(per_probe.mean() - exact) < 4 * standard_error
    assert abs(per_probe.mean() - exact) < 0.05 * abs(exact) + 1e-9


@settings(max_examples=10, deadline=None)
@given(latent_dim=st.integers(1, 6), seed=st.integers(0, 1000))
def test_hessian_vector_product_operator_matches_the_hessian(tiny_linear_gaussian, latent_dim, seed):
    model = tiny_linear_gaussian(latent_dim=latent_dim, sigma=0.7, seed=seed)
    x = model.sample(3, generator=torch.Generator().manual_seed(seed)).detach()
    z = model.sample_prior(3, generator=torch.Generator().manual_seed(seed + 1))
    vectors = torch.randn(2, 3, latent_dim, dtype=FLOAT64, generator=torch.Generator().manual_seed(seed + 2))
    products = hessian_vector_product_operator(model, x, z, num_vectors=2)(vectors)
    expected = torch.einsum("bij,pbj->pbi", hessians(model, x, z), vectors)
    torch.testing.assert_close(products, expected, rtol=1e-10, atol=1e-10)
    # the linear-Gaussian Hessian is -P everywhere
    precision = model.posterior_precision().detach()
    torch.testing.assert_close(products, -vectors @ precision, rtol=1e-10, atol=1e-10)


def test_stochastic_log_det_error_shrinks_with_probes_and_j_stays_close(tiny_linear_gaussian):
    model = tiny_linear_gaussian(latent_dim=6, data_dim=10, seed=4)
    x = model.sample(4, generator=torch.Generator().manual_seed(1)).detach()
    sampler = ShortRun(num_steps=4, step_size=0.02)

    def objective(logdet, **kwargs):
        with torch.no_grad():
            result = kl_objective(model, sampler, x, estimator=LogDetEstimator(logdet, **kwargs),
                                  generator=torch.Generator().manual_seed(0))
        return result.objective, result.info

    exact, exact_info = objective("stepwise")
    few, few_info = objective("stochastic", num_probes=4, lanczos_steps=6)
    many, many_info = objective("stochastic", num_probes=256, lanczos_steps=6)
    few_error = (few_info.log_det - exact_info.log_det).abs()
    many_error = (many_info.log_det - exact_info.log_det).abs()
    # Hutchinson's error falls like 1/sqrt(probes): 64x the probes, ~8x smaller error.
    assert many_error.mean() < few_error.mean() / 3
    assert torch.all(many_error <= 0.02 * exact_info.log_det.abs())
    assert torch.all((few - exact).abs() <= 0.1 * exact.abs())
    assert torch.all((many - exact).abs() <= 0.01 * exact.abs())


def test_stochastic_objective_is_differentiable_in_the_step_size(tiny_linear_gaussian):
    model = tiny_linear_gaussian(latent_dim=4, data_dim=6, seed=2)
    x = model.sample(2, generator=torch.Generator().manual_seed(1)).detach()
    sampler = ShortRun(num_steps=3, step_size=0.02)
    step = torch.tensor(0.02, dtype=FLOAT64, requires_grad=True)
    j_sto = kl_objective(model, sampler, x, hyperparameters={"step_size": step},
                         estimator=LogDetEstimator("stochastic", num_probes=64),
                         generator=torch.Generator().manual_seed(0)).objective.mean()
    (g_sto,) = torch.autograd.grad(j_sto, step)
    j_step = kl_objective(model, sampler, x, hyperparameters={"step_size": step},
                          generator=torch.Generator().manual_seed(0)).objective.mean()
    (g_step,) = torch.autograd.grad(j_step, step)
    assert torch.isfinite(g_sto) and g_sto.item() == pytest.approx(g_step.item(), rel=0.05)


def test_kl_grid_with_the_stochastic_estimator_picks_the_same_step_size(tiny_linear_gaussian):
    model = tiny_linear_gaussian(latent_dim=5, data_dim=8, seed=7)
    x = model.sample(4, generator=torch.Generator().manual_seed(3)).detach()
    grid = tuple(0.004 * i for i in range(1, 9))
    chosen = {}
    for logdet in ("stepwise", "stochastic"):
        sampler = ShortRun(num_steps=4, step_size=0.01)
        result = KLGrid(grid=grid, logdet=logdet, num_samples=4).tune(model, sampler, x)
        chosen[logdet] = (result.hyperparameters["step_size"].item(), result)
    assert chosen["stepwise"][0] == pytest.approx(chosen["stochastic"][0])
    for a, b in zip(chosen["stepwise"][1].history, chosen["stochastic"][1].history):
        assert b["J"] == pytest.approx(a["J"], rel=0.05)
        assert a["invertible"] == b["invertible"]


@pytest.fixture(scope="module")
def ladder_224():
    """The ladder generator with latent dimension 224 (128 + 64 + 32) in float64, on 8x8 images."""
    load_model = pytest.importorskip("inferkit_ladder").LadderModel
    torch.manual_seed(0)
    model = load_model(image_size=8, latent_dims=(128, 64, 32)).double()
    x = model.sample(2, generator=torch.Generator().manual_seed(1)).detach()
    return model, x


def test_on_the_ladder_stepwise_equals_exact_and_stochastic_is_within_two_percent(ladder_224):
    model, x = ladder_224
    sampler = ShortRun(num_steps=3, step_size=0.02)
    values = {}
    for logdet in ("exact", "stepwise", "stochastic"):
        with torch.no_grad():
            result = kl_objective(model, sampler, x, estimator=LogDetEstimator(logdet),
                                  generator=torch.Generator().manual_seed(0))
        values[logdet] = (result.objective, result.info)
    (j_exact, info_exact), (j_step, info_step), (j_sto, _) = values.values()
    torch.testing.assert_close(info_step.log_det, info_exact.log_det, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(j_step, j_exact, rtol=1e-11, atol=1e-11)
    assert info_exact.min_eigenvalue == info_step.min_eigenvalue
    assert torch.all((j_sto - j_exact).abs() <= 0.02 * j_exact.abs())


@pytest.mark.slow
def test_on_the_ladder_kl_grid_picks_the_same_step_size_with_every_estimator(ladder_224):
    model, x = ladder_224
    grid = (0.005, 0.01, 0.02, 0.04, 0.08)
    chosen = {}
    for logdet in ("stepwise", "stochastic"):
        sampler = ShortRun(num_steps=3, step_size=0.01)
        chosen[logdet] = KLGrid(grid=grid, logdet=logdet).tune(model, sampler, x).hyperparameters["step_size"].item()
    assert chosen["stochastic"] == chosen["stepwise"]
