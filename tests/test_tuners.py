"""Tuners: kl-grid against the linear-Gaussian closed forms, non-invertible grid points, grid
extension, fixed.
Tuners return values and never change the sampler; the caller applies them."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
from inferkit import Inference, Model, Sampler, TuneResult, UserError
from inferkit.samplers import Langevin, ShortRun
from inferkit.tuners import Fixed, KLGrid
from inferkit.tuners.kl_common import paired_mean_over_processes
from inferkit.tuners.kl_grad import KLGrad
from inferkit.tuners.kl_grid import PAPER_GRID, PER_EXAMPLE

F64 = torch.float64
WholeGrid = functools.partial(KLGrid, search="grid", tie_se=0.0)
"""``kl-grid`` evaluating every grid point and choosing J's argmin (the tests below reason about the
whole grid and its argmin; the tie rule has tests of its own)."""


def lambda_max(model) -> float:
    return float(torch.linalg.eigvalsh(model.posterior_precision().detach()).max())


def per_draw_kl(model, x, num_samples, seed, s, num_steps):
    """Per draw (same z_0 as the tuner's seeded generator): log q_s(z_K) - log p(z_K | x), [batch, samples]."""
    z0 = model.sample_prior(x.shape[0] * num_samples, generator=torch.Generator().manual_seed(seed))[0]
    mean, cov = (t.detach() for t in model.posterior(x.repeat_interleave(num_samples, 0)))
    a = model.flow_matrix(torch.full((num_steps,), s, dtype=F64)).detach()
    eye = torch.eye(a.shape[0], dtype=F64)
    z_k = z0 @ a.T + mean @ (eye - a).T
    q = torch.distributions.MultivariateNormal(mean @ (eye - a).T, covariance_matrix=a @ a.T)
    p = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    return (q.log_prob(z_k) - p.log_prob(z_k)).view(x.shape[0], num_samples)


def test_kl_grid_records_every_point_exactly_and_picks_the_closed_form_argmin(
        tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    num_steps, num_samples, batch, seed = 4, 150, 4, 7
    grid = tuple(r / lam for r in (0.02, 0.08, 0.3, 0.7))
    x = noisy_data(model, 10)
    sampler = ShortRun(num_steps=num_steps, step_size=0.5 / lam, units="raw")
    tuner = WholeGrid(require_invertible=False, grid=grid, num_samples=num_samples, batch_size=batch, seed=seed)
    result = tuner.tune(model, sampler, x)
    assert isinstance(result, TuneResult)
    assert [h["step_size"] for h in result.history] == list(grid)
    used = x[:batch]  # batch_size: only the first rows are used
    log_marginal = model.log_marginal(used).detach()
    closed_form, stderr = [], []
    for h in result.history:
        draws = per_draw_kl(model, used, num_samples, seed, h["step_size"], num_steps)
        # Every recorded J is exactly the mean of the closed-form per-draw values minus log p(x).
        assert h["J"] == pytest.approx(float((draws.mean(1) - log_marginal).mean()), abs=1e-8)
        assert h["invertible"] is True
        assert h["min_eigenvalue"] == pytest.approx(1 - h["step_size"] * lam, abs=1e-9)
        closed_form.append(float(model.flow_kl(used, torch.full((num_steps,), h["step_size"], dtype=F64))
                                 .detach().mean()))
        stderr.append(float(draws.mean(0).std() / math.sqrt(num_samples)))
    order = sorted(range(len(grid)), key=closed_form.__getitem__)
    best, runner_up = order[0], order[1]
    # The closed-form gap is far beyond the Monte-Carlo error, so the argmin must agree.
    assert closed_form[runner_up] - closed_form[best] > 5 * (stderr[best] + stderr[runner_up])
    assert result.hyperparameters["step_size"].item() == pytest.approx(grid[best])
    assert result.per == "shared"
    assert sampler.step_size.item() == pytest.approx(0.5 / lam)  # the tuner changed nothing
    assert result.objective == pytest.approx(result.history[best]["J"])
    sampler.set_hyperparameters(result.hyperparameters)  # the caller applies the choice
    assert sampler.step_size.item() == pytest.approx(grid[best])
    # The result holds a copy, not the live tensor.
    sampler.set_hyperparameters({"step_size": torch.tensor(1.0, dtype=F64)})
    assert result.hyperparameters["step_size"].item() == pytest.approx(grid[best])


def test_with_require_invertible_non_invertible_points_are_recorded_and_never_chosen_even_with_a_lower_j(
        tiny_linear_gaussian, noisy_data):
    """K = 2: s = 1.2 / lambda_max makes I - s P have a negative eigenvalue (its J can be lower than a
    timid step's); s = 2.5 / lambda_max makes the flow diverge. Both are flagged and skipped, with
    either log-det method (with the exact one det A > 0 here: the sign alone would not tell)."""
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    grid = (0.001 / lam, 1.2 / lam, 2.5 / lam)
    x = noisy_data(model, 4)
    for logdet in ("stepwise", "exact"):
        sampler = ShortRun(num_steps=2, step_size=0.5 / lam, units="raw")
        result = WholeGrid(grid=grid, num_samples=4, logdet=logdet, require_invertible=True).tune(model, sampler, x)
        assert [h["invertible"] for h in result.history] == [True, False, False]
        assert [h["step_size"] for h in result.history] == list(grid)  # never extended
        assert result.history[1]["J"] < result.history[0]["J"]  # would have won on J alone
        assert result.history[1]["min_eigenvalue"] == pytest.approx(1 - 1.2, abs=1e-9)
        assert result.hyperparameters["step_size"].item() == pytest.approx(grid[0])
        assert result.objective == pytest.approx(result.history[0]["J"])


def test_all_non_invertible_grid_raises_and_leaves_the_step_size(tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    sampler = ShortRun(num_steps=3, step_size=0.123, units="raw")
    with pytest.raises(UserError, match="not invertible"):
        WholeGrid(grid=(2.5 / lam, 4.0 / lam), max_shrinks=0, require_invertible=True).tune(
            model, sampler, noisy_data(model, 4))
    assert sampler.step_size.item() == pytest.approx(0.123)
    # Shrinking cannot rescue a grid that stays above 1 / lambda_max: still an error, step size kept.
    with pytest.raises(UserError, match="not invertible"):
        WholeGrid(grid=(400 / lam,), shrink=0.5, max_shrinks=2, require_invertible=True).tune(
            model, sampler, noisy_data(model, 4))
    assert sampler.step_size.item() == pytest.approx(0.123)


def test_with_require_invertible_a_grid_beyond_the_posterior_is_shrunk_until_some_point_is_invertible(
        tiny_linear_gaussian, noisy_data):
    """Every point of the grid is non-invertible: the grid is scaled by `shrink` and searched again;
    every round is in the history and the choice comes from the first round with a usable point."""
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    grid = (1.5 / lam, 3.0 / lam)
    sampler = ShortRun(num_steps=3, step_size=0.5 / lam, units="raw")
    result = WholeGrid(grid=grid, shrink=0.25, max_shrinks=3, require_invertible=True).tune(
        model, sampler, noisy_data(model, 4))
    rounds = [h["round"] for h in result.history]
    assert rounds == [0, 0, 1, 1]  # 1.5/4 and 3/4 of 1/lambda_max are invertible: stop after round 1
    assert [h["invertible"] for h in result.history] == [False, False, True, True]
    assert [h["step_size"] for h in result.history[2:]] == pytest.approx([0.25 * g for g in grid])
    best = min(result.history[2:], key=lambda h: h["J"])
    assert result.hyperparameters["step_size"].item() == pytest.approx(best["step_size"])


def closed_form_optimum(model, x, num_steps, lam):
    """``argmin_s KL(q_s || p(z|x))`` (mean over x) on a fine grid of ``(0, 1 / lambda_max)``."""
    sizes = torch.linspace(0.005, 0.995, 991, dtype=F64) / lam
    kl = torch.stack([model.flow_kl(x, torch.full((num_steps,), float(s), dtype=F64)).detach().mean()
                      for s in sizes])
    return float(sizes[kl.argmin()])


def neighbours(history, chosen):
    """The evaluated step sizes just below and just above ``chosen`` (None at an end)."""
    sizes = sorted(h["step_size"] for h in history if h["evaluated"])
    i = sizes.index(chosen)
    return (sizes[i - 1] if i else None), (sizes[i + 1] if i + 1 < len(sizes) else None)


def test_without_the_veto_a_lower_j_at_a_non_invertible_point_is_chosen_and_is_the_exact_kl(
        tiny_linear_gaussian, noisy_data):
    """The case of the veto test above, default rule: s = 1.2 / lambda_max has the lowest J and is
    chosen, flagged ``invertible: False``. The flow of linear-gaussian is linear, so it is one-to-one
    there (det A != 0) and J is exactly the closed-form per-draw KL minus log p(x), as at any s."""
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    grid = (0.001 / lam, 1.2 / lam, 2.5 / lam)
    x = noisy_data(model, 4)
    num_samples, seed = 4, 0
    vetoed = WholeGrid(grid=grid, num_samples=num_samples, require_invertible=True).tune(
        model, ShortRun(num_steps=2, units="raw"), x)
    result = WholeGrid(require_invertible=False, grid=grid, num_samples=num_samples).tune(model, ShortRun(num_steps=2, units="raw"), x)
    assert vetoed.hyperparameters["step_size"].item() == pytest.approx(grid[0])
    assert result.hyperparameters["step_size"].item() == pytest.approx(grid[1])
    assert [h["invertible"] for h in result.history] == [True, False, False]  # recorded, not a veto
    assert [h["step_size"] for h in result.history] == list(grid)  # interior argmin: no extension
    assert [h["extended"] for h in result.history] == [False] * 3
    log_marginal = model.log_marginal(x).detach()
    for h in result.history:
        assert h["evaluated"] and h["min_eigenvalue"] == pytest.approx(1 - h["step_size"] * lam, abs=1e-9)
        draws = per_draw_kl(model, x, num_samples, seed, h["step_size"], 2)
        assert h["J"] == pytest.approx(float((draws.mean(1) - log_marginal).mean()), abs=1e-8)
    assert result.objective == result.history[1]["J"] < vetoed.objective


def test_stop_at_singular_follows_require_invertible(tiny_linear_gaussian, noisy_data):
    """Walking past the first non-invertible point is what finds the argmin without the veto."""
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    grid = (0.3 / lam, 1.2 / lam, 1.5 / lam, 1.7 / lam)
    x = noisy_data(model, 4)
    invertible_only = WholeGrid(grid=grid, require_invertible=True, max_extensions=0).tune(model, ShortRun(num_steps=3, units="raw"), x)
    assert [h["evaluated"] for h in invertible_only.history] == [True, True, False, False]
    new = WholeGrid(require_invertible=False, grid=grid, max_extensions=0).tune(model, ShortRun(num_steps=3, units="raw"), x)
    assert all(h["evaluated"] and math.isfinite(h["J"]) for h in new.history)
    assert [h["invertible"] for h in new.history] == [True, False, False, False]


def test_a_grid_entirely_above_the_optimum_is_extended_down_until_the_argmin_is_interior(
        tiny_linear_gaussian, noisy_data):
    """K = 4: the closed-form optimum s* is near 0.4 / lambda_max; a grid 0.7..0.9 / lambda_max has its
    argmin at its smallest point, so it grows down by 0.7 / 0.8 per point until J rises again: the
    choice is interior and its two neighbours bracket s*."""
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    num_steps, batch = 4, 4
    x = noisy_data(model, 10)
    optimum = closed_form_optimum(model, x[:batch], num_steps, lam)
    grid = tuple(r / lam for r in (0.7, 0.8, 0.9))
    assert optimum < grid[0] * (0.7 / 0.8) ** 2  # at least two extensions away
    result = WholeGrid(require_invertible=False, grid=grid, num_samples=64, batch_size=batch).tune(model, ShortRun(num_steps=num_steps, units="raw"), x)
    history = result.history
    added = [h for h in history if h["extended"]]
    assert [h["step_size"] for h in history[:3]] == list(grid) and not any(h["extended"] for h in history[:3])
    assert 2 <= len(added) < 8 and all(h["round"] == 0 and h["evaluated"] for h in added)
    assert [h["step_size"] for h in added] == pytest.approx([grid[0] * (0.7 / 0.8) ** (i + 1)
                                                             for i in range(len(added))])
    chosen = result.hyperparameters["step_size"].item()
    assert chosen == min((h for h in history if math.isfinite(h["J"])), key=lambda h: h["J"])["step_size"]
    below, above = neighbours(history, chosen)
    assert below is not None and above is not None  # interior
    assert below < optimum < above
    # The invertible-only rule on the same grid stops at its end: no extension, the grid's smallest point.
    invertible_only = WholeGrid(grid=grid, num_samples=64, batch_size=batch, require_invertible=True).tune(
        model, ShortRun(num_steps=num_steps, units="raw"), x)
    assert len(invertible_only.history) == 3 and invertible_only.hyperparameters["step_size"].item() == pytest.approx(grid[0])
    # max_extensions bounds the search: two points, the last of them chosen (still at the end).
    bounded = WholeGrid(require_invertible=False, grid=grid, num_samples=64, batch_size=batch, max_extensions=2).tune(
        model, ShortRun(num_steps=num_steps, units="raw"), x)
    unmarked = lambda points: [{k: v for k, v in h.items() if k != "chosen"} for h in points]
    assert unmarked(bounded.history) == unmarked(history[:5]) and bounded.history[-1]["chosen"]
    assert bounded.hyperparameters["step_size"].item() == pytest.approx(history[4]["step_size"])


def test_a_grid_entirely_below_the_optimum_is_extended_up_by_extend_factor(tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    num_steps, batch = 4, 4
    x = noisy_data(model, 10)
    optimum = closed_form_optimum(model, x[:batch], num_steps, lam)
    grid = (0.02 / lam, 0.03 / lam)
    result = WholeGrid(require_invertible=False, grid=grid, num_samples=64, batch_size=batch, extend_factor=2.0).tune(
        model, ShortRun(num_steps=num_steps, units="raw"), x)
    added = [h["step_size"] for h in result.history if h["extended"]]
    assert added == pytest.approx([grid[1] * 2 ** (i + 1) for i in range(len(added))])
    chosen = result.hyperparameters["step_size"].item()
    below, above = neighbours(result.history, chosen)
    assert below is not None and above is not None and below < optimum < above


def test_a_valley_beyond_the_small_end_is_found_when_the_grids_own_argmin_is_interior(
        tiny_linear_gaussian, noisy_data):
    """K = 4 on linear-gaussian: J (here exactly the KL minus log p(x), F being linear) has its valley
    near 0.4 / lambda_max, a peak at 1 / lambda_max and a second, higher minimum near 1.8 / lambda_max.
    A grid 0.9..2.2 / lambda_max has its own argmin at 1.8, interior; J at its small end is below its
    neighbour's, so the grid grows down (by 0.9 / 1.05) into the valley, whose bottom is chosen."""
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    num_steps, batch = 4, 4
    x = noisy_data(model, 10)
    optimum = closed_form_optimum(model, x[:batch], num_steps, lam)
    grid = tuple(r / lam for r in (0.9, 1.05, 1.2, 1.5, 1.8, 2.2))
    result = WholeGrid(require_invertible=False, grid=grid, num_samples=64, batch_size=batch).tune(model, ShortRun(num_steps=num_steps, units="raw"), x)
    on_grid = result.history[:len(grid)]
    assert min(on_grid, key=lambda h: h["J"])["step_size"] == pytest.approx(1.8 / lam)
    added = [h["step_size"] for h in result.history if h["extended"]]
    assert added == pytest.approx([grid[0] * (0.9 / 1.05) ** (i + 1) for i in range(len(added))])
    chosen = result.hyperparameters["step_size"].item()
    below, above = neighbours(result.history, chosen)
    assert below is not None and above is not None and below < optimum < above
    kl = {s: float(model.flow_kl(x[:batch], torch.full((num_steps,), s, dtype=F64)).detach().mean())
          for s in (chosen, 1.8 / lam)}
    assert kl[chosen] < kl[1.8 / lam] - 1  # the valley is lower than the interior minimum the grid had


@settings(max_examples=25, deadline=None)
@given(ratios=st.lists(st.floats(0.01, 2.6), min_size=1, max_size=4, unique_by=lambda r: round(r, 2)),  # no ties
       num_steps=st.integers(1, 4), max_extensions=st.integers(0, 4),
       extend_factor=st.sampled_from([None, 1.5, 3.0]), require_invertible=st.booleans())
def test_the_choice_is_the_argmin_of_finite_j_over_every_recorded_point(
        tiny_linear_gaussian, noisy_data, ratios, num_steps, max_extensions, extend_factor, require_invertible):
    """Any grid: every evaluated point is recorded with J, invertible and min_eigenvalue; the choice is
    the smallest finite J among them (among the invertible ones with require_invertible); extensions
    come after the grid, at most max_extensions of them, and unless the bound was reached they end
    with an interior choice and no end whose J is below its neighbour's; require_invertible never
    extends."""
    model = tiny_linear_gaussian()
    lam = lambda_max(model)
    grid = tuple(r / lam for r in ratios)
    tuner = WholeGrid(grid=grid, num_samples=2, max_extensions=max_extensions, extend_factor=extend_factor,
                   require_invertible=require_invertible, max_shrinks=1)
    result = tuner.tune(model, ShortRun(num_steps=num_steps, units="raw"), noisy_data(model, 4))  # 0.25 * 2.6 < 1: never refused
    history = result.history
    for h in history:
        assert {"step_size", "J", "invertible", "min_eigenvalue", "evaluated", "round", "extended"} <= h.keys()
        if h["evaluated"]:
            assert h["min_eigenvalue"] == pytest.approx(1 - h["step_size"] * lam, abs=1e-9)
            assert h["invertible"] == (h["min_eigenvalue"] > 0)
    candidates = [h for h in history if math.isfinite(h["J"]) and (h["invertible"] or not require_invertible)]
    best = min(candidates, key=lambda h: h["J"])
    assert result.hyperparameters["step_size"].item() == best["step_size"] and result.objective == best["J"]
    extended = [h["extended"] for h in history]
    assert extended == sorted(extended)  # grid points first
    assert sum(extended) <= (0 if require_invertible else max_extensions)
    if not require_invertible and sum(extended) < max_extensions:
        last = sorted((h for h in history if h["round"] == history[-1]["round"]), key=lambda h: h["step_size"])
        assert last[0]["step_size"] < best["step_size"] < last[-1]["step_size"]
        # Neither end is left with a finite J below its neighbour's.
        for end, neighbour in ((last[0], last[1]), (last[-1], last[-2])):
            assert not (math.isfinite(end["J"]) and end["J"] < neighbour["J"])


class Cubic(Model):
    """Nonlinear: log N(z; 0, I) + log N(x; z^3, 0.25 I); a large step blows the path up to inf."""

    def __init__(self):
        super().__init__()
        self.latent_shapes = ((2,),)
        self.data_shape = (2,)
        self.register_buffer("anchor", torch.zeros((), dtype=F64))

    def sample_prior(self, n, *, generator=None):
        return (torch.randn(n, 2, generator=generator, dtype=F64),)

    def log_prior(self, z):
        return -0.5 * (z[0].pow(2).sum(-1) + 2 * math.log(2 * math.pi))

    def decode(self, z):
        return z[0] ** 3

    def log_joint(self, x, z, mask=None):
        per = -2.0 * (x - self.decode(z)) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
        return self.log_prior(z) + per.sum(-1)


def test_diverging_grid_point_on_a_nonlinear_model_is_skipped():
    model = Cubic()
    sampler = ShortRun(num_steps=10, step_size=0.5, units="raw")
    for require_invertible in (True, False):
        result = WholeGrid(grid=(1e-4, 10.0), require_invertible=require_invertible).tune(
            model, sampler, torch.ones(3, 2, dtype=F64))
        assert [h["invertible"] for h in result.history[:2]] == [True, False]
        assert not math.isfinite(result.history[1]["J"])
        assert result.hyperparameters["step_size"].item() == pytest.approx(1e-4)
    # Without the veto the argmin 1e-4 sat at the low end: one point below (factor 1e-4 / 10) made it interior.
    assert [h["step_size"] for h in result.history[2:]] == pytest.approx([1e-9])
    assert result.history[2]["extended"] and result.history[2]["J"] > result.history[0]["J"]


def test_a_grid_where_the_flow_diverges_everywhere_is_shrunk_and_then_extended():
    """No finite J at any grid point: the grid is scaled by `shrink`; the extension goes on from that
    round (the diverged round's points do not stop it) until J is no longer finite above the argmin."""
    model = Cubic()
    sampler = ShortRun(num_steps=10, step_size=0.5, units="raw")
    result = WholeGrid(require_invertible=False, grid=(10.0, 20.0), shrink=1e-4, max_shrinks=2).tune(model, sampler, torch.ones(3, 2, dtype=F64))
    history = result.history
    assert [h["round"] for h in history] == [0, 0, 1, 1, 1, 1]
    assert [h["extended"] for h in history] == [False] * 4 + [True] * 2
    assert [h["step_size"] for h in history] == pytest.approx([10.0, 20.0, 1e-3, 2e-3, 4e-3, 8e-3])
    assert not any(math.isfinite(h["J"]) for h in history[:2]) and not math.isfinite(history[-1]["J"])
    # The chosen point is not invertible: J is finite and lowest there, and only the veto would refuse it.
    assert result.hyperparameters["step_size"].item() == pytest.approx(4e-3)
    assert history[4]["invertible"] is False and result.objective == history[4]["J"]
    with pytest.raises(UserError, match="not finite at any grid step size"):
        WholeGrid(require_invertible=False, grid=(10.0, 20.0), max_shrinks=0).tune(model, sampler, torch.ones(3, 2, dtype=F64))


def test_the_sampler_is_untouched_when_an_evaluation_fails(tiny_linear_gaussian, noisy_data, monkeypatch):
    from inferkit.tuners import kl_common

    real = kl_common.kl_objective
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(kl_common, "kl_objective", failing)
    model = tiny_linear_gaussian(data_dim=6)
    sampler = ShortRun(num_steps=2, step_size=0.0123, units="raw")
    with pytest.raises(RuntimeError, match="boom"):
        WholeGrid(require_invertible=False, grid=(0.01, 0.02, 0.03)).tune(model, sampler, noisy_data(model, 2))
    assert sampler.step_size.item() == pytest.approx(0.0123)


@pytest.mark.parametrize("make_tuner", [lambda: WholeGrid(require_invertible=False, grid=(0.01, 0.02, 0.04)),
                                        lambda: KLGrad(max_iterations=3), lambda: Fixed(step_size=0.02)])
def test_tuners_change_nothing_and_take_the_reduction_they_are_given(make_tuner, tiny_linear_gaussian, noisy_data):
    """No tuner writes into, or swaps, the sampler's buffers. `reduce` sums over processes: two processes
    holding the same batch (a reduce that doubles, in place) give exactly one process's J and choice."""
    model = tiny_linear_gaussian(data_dim=6)
    x = noisy_data(model, 4)
    sampler = ShortRun(num_steps=3, step_size=0.015, units="raw")
    buffer = sampler.step_size
    reduced = []

    def two_identical_processes(tensor):
        reduced.append(tuple(tensor.shape))
        return tensor.mul_(2)

    alone = make_tuner().tune(model, sampler, x)
    together = make_tuner().tune(model, sampler, x, reduce=two_identical_processes)
    assert sampler.step_size is buffer and buffer.item() == 0.015 and not buffer.requires_grad
    assert dict(sampler.named_buffers()).keys() == {"step_size"}
    assert together.history == alone.history
    assert torch.equal(together.hyperparameters["step_size"], alone.hyperparameters["step_size"])
    assert bool(reduced) == (not isinstance(make_tuner(), Fixed))  # J (and kl-grad's gradients) were reduced


@pytest.mark.parametrize("mask_shape", ["vector", "row", "batch"])
def test_kl_grid_with_a_mask_uses_the_observed_coordinates(tiny_linear_gaussian, noisy_data, mask_shape):
    """batch_size < D: a broadcast mask ([D] or [1, D]) must not be cut like a batch."""
    model = tiny_linear_gaussian(latent_dim=2, data_dim=24, sigma=0.8, seed=1)
    observed = (torch.arange(24) % 3 != 0).to(F64)
    sub = tiny_linear_gaussian(latent_dim=2, data_dim=16, sigma=0.8, seed=1)
    with torch.no_grad():
        sub.weight.copy_(model.weight[observed.bool()])
        sub.bias.copy_(model.bias[observed.bool()])
    x = noisy_data(model, 20)
    mask = {"vector": observed, "row": observed[None], "batch": observed.expand(20, -1).clone()}[mask_shape]
    grid = (0.01, 0.03, 0.05)
    masked = WholeGrid(require_invertible=False, grid=grid, batch_size=16).tune(model, ShortRun(num_steps=3, units="raw"), x, mask=mask)
    direct = WholeGrid(require_invertible=False, grid=grid, batch_size=16).tune(sub, ShortRun(num_steps=3, units="raw"), x[:, observed.bool()])
    for h_masked, h_direct in zip(masked.history, direct.history):
        assert h_masked["J"] == pytest.approx(h_direct["J"], abs=1e-9)


def test_kl_grid_on_per_step_and_langevin_samplers(tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6)
    x = noisy_data(model, 4)
    per_step = ShortRun(num_steps=3, step_size=(0.01, 0.02, 0.03), per="step", units="raw")
    result = WholeGrid(require_invertible=False, grid=(0.01, 0.02)).tune(model, per_step, x)
    chosen = result.hyperparameters["step_size"]
    assert chosen.shape == (3,) and torch.all(chosen == chosen[0]) and result.per == "step"
    per_step.set_hyperparameters(result.hyperparameters)
    assert torch.equal(per_step.step_size, chosen)
    langevin = Langevin(num_steps=3, step_size=0.05, units="raw")
    result = WholeGrid(require_invertible=False, grid=(0.01, 0.02, 0.04)).tune(model, langevin, x)
    assert [h["step_size"] for h in result.history[:3]] == [0.01, 0.02, 0.04]
    assert all(math.isfinite(h["J"]) for h in result.history[:3])
    assert result.hyperparameters["step_size"].item() in [h["step_size"] for h in result.history]
    assert langevin.step_size.item() == 0.05


def test_kl_grid_does_not_build_a_graph_or_warn(tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6)  # parameters require grad
    x = noisy_data(model, 4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = WholeGrid(require_invertible=False, grid=(0.01, 0.02)).tune(model, ShortRun(num_steps=2, units="raw"), x)
    assert all(isinstance(h["J"], float) for h in result.history)
    assert model.weight.grad is None


class NoStepSize(Sampler):
    def infer(self, model, x, *, index=None, mask=None, generator=None):
        return Inference(z=model.sample_prior(x.shape[0], generator=generator))


def test_kl_grid_errors(tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6)
    with pytest.raises(UserError, match="does not apply to sampler NoStepSize.*--tuner fixed"):
        WholeGrid(require_invertible=False).tune(model, NoStepSize(), noisy_data(model, 2))
    for kwargs in ({"grid": ()}, {"grid": (0.1, -0.1)}, {"grid": (math.nan,)}, {"num_samples": 0},
                   {"batch_size": -1}, {"logdet": "approx"}, {"shrink": 1.0}, {"shrink": 0.0},
                   {"max_shrinks": -1}, {"num_probes": 0}, {"lanczos_steps": 0}, {"extend_factor": 1.0},
                   {"extend_factor": 0.5}, {"extend_factor": math.inf}, {"max_extensions": -1},
                   {"stop_at_singular": True, "require_invertible": False}):
        with pytest.raises(UserError):
            KLGrid(**{"require_invertible": False, **kwargs})


def test_kl_grid_defaults_and_options_by_name():
    assert KLGrid().grid == PAPER_GRID
    default = KLGrid()
    assert default.require_invertible is False and default.stop_at_singular is False
    assert default.search == "local" and default.objective.batch_size == 16
    assert default.max_extensions == 8 and default.extension_factors() == pytest.approx((0.5, 0.15 / 0.14))
    assert KLGrid(require_invertible=True).stop_at_singular is True
    assert KLGrid(require_invertible=True, stop_at_singular=False).stop_at_singular is False
    assert KLGrid(require_invertible=False, grid=(0.3,)).extension_factors() == (0.5, 2.0)
    assert KLGrid(require_invertible=False, extend_factor=3.0).extension_factors() == pytest.approx((1 / 3, 3.0))
    invertible_only = inferkit.load_tuner("kl-grid", require_invertible="true", extend_factor="2", max_extensions="3")
    assert invertible_only.require_invertible and invertible_only.extend_factor == 2.0 and invertible_only.max_extensions == 3
    assert PAPER_GRID == pytest.approx([0.01 * i for i in range(1, 16)], abs=1e-12)
    tuner = inferkit.load_tuner("kl-grid", grid="0.01,0.05", num_samples="3", logdet="exact")
    assert isinstance(tuner, KLGrid) and tuner.grid == (0.01, 0.05)
    assert tuner.objective.num_samples == 3 and tuner.objective.logdet == "exact"


def test_fixed_tuner(tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6)
    x = noisy_data(model, 2)
    sampler = ShortRun(num_steps=2, step_size=0.05, units="raw")
    result = Fixed().tune(model, sampler, x)
    assert result.hyperparameters["step_size"].item() == pytest.approx(0.05)
    assert math.isnan(result.objective) and result.history == []
    result = Fixed(step_size=0.02).tune(model, sampler, x)
    assert sampler.step_size.item() == pytest.approx(0.05)  # changed by the caller only
    assert result.hyperparameters["step_size"].item() == pytest.approx(0.02)
    sampler.set_hyperparameters(result.hyperparameters)
    assert sampler.step_size.item() == pytest.approx(0.02)
    per_step = ShortRun(num_steps=3, step_size=(0.1, 0.2, 0.3), per="step", units="raw")
    per_step.set_hyperparameters(Fixed(step_size=0.04).tune(model, per_step, x).hyperparameters)
    assert torch.allclose(per_step.step_size, torch.full((3,), 0.04, dtype=F64))
    assert Fixed(step_size=0.5).tune(model, NoStepSize(), x).hyperparameters == {}
    by_name = inferkit.load_tuner("fixed", step_size="0.07")
    assert isinstance(by_name, Fixed) and by_name.step_size == pytest.approx(0.07)
    assert inferkit.load_tuner("fixed", step_size="none").step_size is None
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(UserError):
            Fixed(step_size=bad)
    with pytest.raises(UserError):
        inferkit.load_tuner("fixed", step_size="fast")


@pytest.mark.parametrize("start", [0.02, 0.1, 0.5, 0.9])
def test_local_search_walks_to_the_grids_argmin_with_fewer_evaluations(tiny_linear_gaussian, noisy_data, start):
    """On linear-gaussian J is the closed-form KL (minus log p(x)), with one minimum over s: the walk
    from any starting step size ends at the full grid's choice, evaluating fewer points."""
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    grid = tuple(r / lam for r in (0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.5, 0.7, 0.9))
    x = noisy_data(model, 4)
    options = {"grid": grid, "num_samples": 64, "batch_size": 4, "max_extensions": 0}
    sampler = ShortRun(num_steps=4, step_size=start / lam, units="raw")
    full = WholeGrid(**options).tune(model, sampler, x)
    local = KLGrid(search="local", **options).tune(model, sampler, x)
    assert local.hyperparameters["step_size"].item() == pytest.approx(full.hyperparameters["step_size"].item())
    assert local.objective == pytest.approx(full.objective)
    assert len(local.history) < len(full.history)
    by_s = {h["step_size"]: h["J"] for h in full.history}
    assert all(h["J"] == pytest.approx(by_s[h["step_size"]]) for h in local.history)  # the same J values
    chosen = [h["step_size"] for h in full.history].index(full.hyperparameters["step_size"].item())
    closed = [float(model.flow_kl(x, torch.full((4,), s, dtype=F64)).detach().mean()) for s in grid]
    assert closed.index(min(closed)) == chosen


def test_local_search_at_a_grid_end_is_extended(tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6)
    lam = lambda_max(model)
    grid = tuple(r / lam for r in (0.001, 0.002, 0.004))  # all below the optimum
    sampler = ShortRun(num_steps=4, step_size=0.001 / lam, units="raw")
    result = KLGrid(search="local", grid=grid, num_samples=64, batch_size=4, extend_factor=2.0).tune(
        model, sampler, noisy_data(model, 4))
    assert any(h["extended"] for h in result.history)
    assert result.hyperparameters["step_size"].item() > grid[-1]


class ScriptedJ(KLGrid):
    """``kl-grid`` whose J at each grid point is given (a table), to test the search's logic alone."""

    def __init__(self, table: dict[float, float], off_grid: float = 0.0, **options):
        super().__init__(grid=tuple(table), tie_se=0.0, **options)  # J's argmin: no per-image values here
        self.table, self.off_grid = table, off_grid

    def _evaluate(self, model, sampler, step_size, x, mask, s, reduce):
        return {"step_size": s, "J": self.table.get(s, self.off_grid), "invertible": True,
                "min_eigenvalue": 1.0, "evaluated": True}


def test_a_local_walk_extends_only_at_the_grids_own_ends(tiny_linear_gaussian, noisy_data):
    """From 0.04 the walk evaluates 0.03 and 0.05, moves to 0.03 and stops there (0.02 is higher). Its
    outermost point 0.05 is below its neighbour 0.04 but interior to the grid, so nothing is added beyond
    it (0.06 is on the grid, higher); off the grid, any point would be lower (J = 0 there). A walk that
    ends at the grid's end 0.07, below its neighbour, is extended there, once (J is higher beyond)."""
    table = {0.01: 5.0, 0.02: 3.0, 0.03: 1.0, 0.04: 2.0, 0.05: 1.5, 0.06: 4.0, 0.07: 6.0}
    model = tiny_linear_gaussian(data_dim=6)
    sampler = ShortRun(num_steps=4, step_size=0.04)
    result = ScriptedJ(table, batch_size=4).tune(model, sampler, noisy_data(model, 4))
    assert [h["step_size"] for h in result.history] == [0.02, 0.03, 0.04, 0.05]
    assert not any(h["extended"] for h in result.history)
    assert result.hyperparameters["step_size"].item() == pytest.approx(0.03)
    at_the_end = ScriptedJ({**table, 0.06: 1.2, 0.07: 1.1}, off_grid=1.15, batch_size=4, extend_factor=2.0)
    at_the_end = at_the_end.tune(model, ShortRun(num_steps=4, step_size=0.06), noisy_data(model, 4))
    # 0.07 is the grid's end: extended once, to 0.14, whose J (1.15) is above 0.07's
    assert [h["step_size"] for h in at_the_end.history if h["extended"]] == pytest.approx([0.14])
    assert at_the_end.hyperparameters["step_size"].item() == pytest.approx(0.07)


def test_unknown_search_is_one_user_error():
    with pytest.raises(UserError, match="search must be one of grid, local"):
        KLGrid(search="golden")


class ScriptedPerImageJ(KLGrid):
    """``kl-grid`` whose per-image J and mean energy at each grid point are given, to test the tie rule."""

    def __init__(self, table: dict[float, tuple[list[float], float]], **options):
        super().__init__(grid=tuple(table), max_extensions=0, **options)
        self.table = table

    def _evaluate(self, model, sampler, step_size, x, mask, s, reduce):
        per_image, energy = self.table[s]
        values = torch.tensor(per_image, dtype=F64)
        return {"step_size": s, "J": float(values.mean()), "energy": energy, "invertible": True,
                "min_eigenvalue": 1.0, "evaluated": True, PER_EXAMPLE: values}


TIE_TABLE = {0.03: ([13.0, 15.0, 17.0, 19.0], 25.0),
             0.04: ([10.0, 12.0, 14.0, 16.0], 20.0),   # the argmin of J (mean 13.0)
             0.05: ([11.2, 11.0, 15.2, 15.0], 18.0),   # mean difference +0.1, s.e. 0.635: a tie
             0.06: ([10.5, 12.5, 14.5, 16.5], 15.0)}   # +0.5 on every image (s.e. 0): no tie, however low


@pytest.mark.parametrize("search", ["grid", "local"])
def test_tie_se_chooses_the_lowest_energy_point_that_j_cannot_tell_from_its_argmin(
        search, tiny_linear_gaussian, noisy_data):
    model = tiny_linear_gaussian(data_dim=6)
    x = noisy_data(model, 4)

    def choose(tie_se):
        result = ScriptedPerImageJ(TIE_TABLE, search=search, tie_se=tie_se).tune(
            model, ShortRun(num_steps=4, step_size=0.04), x)
        assert all(PER_EXAMPLE not in h and "energy" in h for h in result.history)
        return result.hyperparameters["step_size"].item(), result.objective

    assert choose(0.0) == pytest.approx((0.04, 13.0))  # the default: the argmin of J
    assert choose(1.0) == pytest.approx((0.05, 13.1))
    assert choose(0.1) == pytest.approx((0.04, 13.0))  # +0.1 > 0.1 x 0.635: no longer a tie
    assert choose(1e6) == pytest.approx((0.05, 13.1))  # 0.06's difference has no spread: never a tie


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=12), st.integers(1, 11))
def test_the_paired_standard_error_pools_every_processs_images(values, cut):
    """Two processes holding the two halves of the images give the mean and standard error of all of them."""
    cut = min(cut, len(values) - 1)
    first, second = torch.tensor(values[:cut], dtype=F64), torch.tensor(values[cut:], dtype=F64)
    alone = paired_mean_over_processes(torch.tensor(values, dtype=F64), None)
    other = torch.stack([torch.tensor(float(second.numel()), dtype=F64), second.sum(),
                         (second * second).sum()])
    pooled = paired_mean_over_processes(first, lambda packed: packed + other)
    reference = torch.tensor(values, dtype=F64)
    assert alone[0] == pytest.approx(float(reference.mean()), abs=1e-9)
    assert alone[1] == pytest.approx(float(reference.std() / math.sqrt(len(values))), rel=1e-6, abs=1e-6)
    assert pooled == pytest.approx(alone, rel=1e-6, abs=1e-6)
    assert math.isnan(paired_mean_over_processes(torch.tensor([1.0], dtype=F64), None)[1])


def test_tie_se_is_validated_and_read_by_name():
    assert inferkit.load_tuner("kl-grid", tie_se="1.5").tie_se == 1.5 and KLGrid().tie_se == 0.0
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(UserError, match="tie_se must be a finite number >= 0"):
            KLGrid(tie_se=bad)


def test_kl_grid_records_the_energy_part_of_j(tiny_linear_gaussian, noisy_data):
    """Each point's ``energy`` is J without its entropy term: the mode-seeking objective at that s."""
    from inferkit import kl_objective

    model = tiny_linear_gaussian(data_dim=6)
    x = noisy_data(model, 4)
    sampler = ShortRun(num_steps=3, step_size=0.05)
    result = WholeGrid(grid=(0.02, 0.05), batch_size=4, max_extensions=0).tune(model, sampler, x)
    for point in result.history:
        at_s = {"step_size": torch.tensor(point["step_size"], dtype=F64)}
        with torch.no_grad():
            mode_seeking = kl_objective(model, sampler, x, hyperparameters=at_s,
                                        generator=torch.Generator().manual_seed(0), entropy=False)
        assert point["energy"] == pytest.approx(float(mode_seeking.objective.mean()), rel=1e-12)
        assert point["energy"] == pytest.approx(float(mode_seeking.info.energy.mean()), rel=1e-12)


GRID_FOR_MEMORY = (0.01, 0.02, 0.03, 0.04, 0.05)


def tune_with_argmin(tuner_options: dict, model, sampler, argmin: float, state: dict | None = None):
    """One tuning by a ``ScriptedJ`` whose J is lowest at ``argmin``; returns (result, tuner)."""
    tuner = ScriptedJ({s: (s - argmin) ** 2 for s in GRID_FOR_MEMORY}, batch_size=4, search="grid",
                      max_extensions=0, **tuner_options)
    if state is not None:
        tuner.load_state_dict(state)
    return tuner.tune(model, sampler, torch.zeros(4, *model.data_shape)), tuner


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(GRID_FOR_MEMORY), st.floats(0.005, 0.2), st.floats(0.0, 0.95), st.integers(0, 12))
def test_memory_moves_the_step_size_towards_the_choice_by_its_weight(tiny_linear_gaussian, argmin, current,
                                                                     memory, before):
    """After ``before`` tunings the applied step size is ``exp((1 - w) log s_current + w log s*)`` with
    ``w = max(1 - m, 1 / (before + 1))``; J and the history stay those of the grid's argmin."""
    model = tiny_linear_gaussian()
    result, tuner = tune_with_argmin({"memory": memory}, model, ShortRun(num_steps=4, step_size=current),
                                     argmin, state={"tunings": before})
    weight = max(1 - memory, 1 / (before + 1))
    expected = math.exp((1 - weight) * math.log(current) + weight * math.log(argmin))
    assert result.hyperparameters["step_size"].item() == pytest.approx(expected, rel=1e-5)
    assert result.objective == pytest.approx(0.0) and tuner.state_dict() == {"tunings": before + 1}


def test_memory_is_the_running_mean_of_log_s_then_a_moving_average(tiny_linear_gaussian):
    """With ``m = 0.75``: the geometric mean of the first four choices (the sampler's starting step size
    counts for nothing), then each new choice weighted 1/4."""
    model = tiny_linear_gaussian()
    sampler = ShortRun(num_steps=4, step_size=0.15)
    choices = (0.05, 0.02, 0.04, 0.01, 0.05, 0.03)
    state = {"tunings": 0}
    applied = []
    for choice in choices:
        result, tuner = tune_with_argmin({"memory": 0.75}, model, sampler, choice, state)
        sampler.set_hyperparameters(result.hyperparameters)
        state = tuner.state_dict()
        applied.append(float(sampler.step_size.mean()))
    logs = [math.log(c) for c in choices]
    expected = [math.exp(sum(logs[:n]) / n) for n in range(1, 5)]
    for log_choice in logs[4:]:
        expected.append(math.exp(0.75 * math.log(expected[-1]) + 0.25 * log_choice))
    assert applied == pytest.approx(expected, rel=1e-5)
    without = tune_with_argmin({"memory": 0.0}, model, sampler, 0.02, {"tunings": 5})[0]
    assert without.hyperparameters["step_size"].item() == pytest.approx(0.02)  # memory=0: the choice


def test_memory_is_validated_and_read_by_name():
    assert inferkit.load_tuner("kl-grid", memory="0.5").memory == 0.5 and KLGrid().memory == 0.7
    for bad in (-0.1, 1.0, 2.0, math.nan):
        with pytest.raises(UserError, match=r"memory must be a number in \[0, 1\)"):
            KLGrid(memory=bad)


def test_the_history_marks_the_choice_where_the_applied_step_size_is_averaged(tiny_linear_gaussian):
    """``chosen`` flags exactly one evaluated point, the choice ``s*``, also when the step size applied is
    the moving average (between grid points)."""
    model = tiny_linear_gaussian()
    result, _ = tune_with_argmin({"memory": 0.5}, model, ShortRun(num_steps=4, step_size=0.05), 0.02,
                                 state={"tunings": 3})
    marked = [h["step_size"] for h in result.history if h["chosen"]]
    assert marked == [0.02] and result.hyperparameters["step_size"].item() != pytest.approx(0.02)
