"""The ``kl-grid`` tuner: grid search of the step size minimising ``J(s)`` (papers, section 4.4).

    s* = argmin_{s in grid, J(s) finite} J(s),
    J(s) = E_{z_0 ~ p_0}[log p_0(z_0) - log|det dF_s/dz_0| - log p(x, F_s(z_0))]

By default the step size applied is a moving average in ``log s`` of the tunings' choices ``s*``
(``memory``, "Averaging over tunings" below).

Every grid point uses the same ``z_0`` draws (common random numbers), so differences in J are
differences in s. Every evaluated point is recorded in the history with its J, ``invertible``
(every eigenvalue of every ``I + s H_k`` along the paths is > 0), ``min_eigenvalue`` and ``chosen``
(whether it is this tuning's choice ``s*``).

When J at an end of the grid is below J at its neighbour (a minimum of J may lie beyond that end;
in particular whenever the chosen point is at an end), the grid is extended on that side,
geometrically (by ``extend_factor``, or by the ratio of the grid's two end points on that side),
until that is no longer so (the argmin is then interior), J stops being finite, or
``max_extensions`` points were added, the small-s side first. This matters because J need not have
one minimum: on a sharp generator it has a valley at small s, rises, and falls again far inside the
non-invertible region, where the under-counting described below grows with s; a grid that starts
on the valley's rising side would otherwise only see the second minimum. When
no point of the grid has a finite J, the grid is scaled by ``shrink`` and searched again, up to
``max_shrinks`` times. Every extension and every round is recorded in the history.

The grid is in the sampler's units: by default the authors' ``s`` (gradient coefficient ``s^2 / 2``,
:mod:`inferkit.samplers.units`), so the default grid is the papers' ``{0.01, ..., 0.15}`` as they
meant it.

Choosing by J over every point (the default) or among invertible points
(``require_invertible=True``). J is ``KL(q_s || p(z|x)) - log p(x)`` when ``F_s`` is one-to-one, as
it is when every ``I + s H_k`` is positive definite (each step is then the gradient map of a
strictly convex function). A non-positive eigenvalue is where a step can fold the space (on ``linear-gaussian`` it does not: H is
constant, F is linear and one-to-one wherever ``det != 0``, and J is exactly the KL at every such s).
Where F is not one-to-one the density of ``z_K = F_s(z_0)`` is the sum over all its preimages,
``q_s(z) = sum_{z' in F_s^{-1}(z)} p_0(z') / |det dF_s/dz_0 (z')|``, while J's change-of-variables
term uses only the drawn preimage, ``p_0(z_0) / |det dF_s/dz_0 (z_0)|``, at each draw: it
under-counts ``q_s``'s density, so ``J + log p(x) <= KL(q_s || p(z|x))``, a lower bound on the KL
rather than the KL itself (equality where F is one-to-one). J is finite on both sides of a fold and
blows up (``-log|det| -> +inf``) only as some eigenvalue of ``I + s H_k`` nears 0. The veto
(``require_invertible=True``: never choose a non-invertible point) is decided by the worst Hessian
on any path, typically the one at step 0, where ``z_0`` is a prior draw far from the posterior and
the curvature is largest, not where the flow converges, where it is much smaller. On a sharp
generator the veto therefore holds s far below the argmin of J (and below the step size that
reconstructs best), and the gap grows as training sharpens the posterior: learning with the veto
cuts s at every tuning and the generator's reconstructions get worse with training, while the
argmin of J and the step size with the lowest reconstruction error agree (benchmarks/RESULTS.md).
That is why J decides over every point by default, invertible or not.

How J is estimated decides how much the choice is worth. J is a mean over the tuning images, and
near its minimum J is flat in s while each image's own minimum lies elsewhere, so the argmin on a
few images follows the images more than the generator. By default J is estimated on 16 images of
the training batch the trainer hands over (``batch_size=16``) and the search is local
(``search="local"``): from the grid point nearest the sampler's current step size (the last
applied value, or the sampler's starting s) it walks to a lower neighbour while there is one, a
local minimum of J on the grid, then extended as above where the walk reached an end of the grid.
Where J changes little between tunings that takes three to five evaluations instead of one per grid
point, which pays for the larger batch, and a choice moves away from the last one only where J on the
new images says so.
On the Pyro MNIST decoder after 4,800 iterations, tuning on 20 different training batches, the
whole grid on 4 images chooses anywhere in 0.05-0.15 (test MSE at the choice 0.067 +- 0.010 sd),
the local walk on 16 images mostly 0.07-0.11 (0.056 +- 0.006) in less time per tuning; trained
with it (applying J's argmin, ``memory=0``), that model's own-inference test MSE after 4,800
iterations is 0.058 against 0.068 (3 seeds, benchmarks/RESULTS.md). J is the KL criterion, not the reconstruction
error: it can be nearly flat over a range of s across which the reconstruction error changes by half, and its
argmin can lie a grid step or two from the error's (on that model after 1,200 iterations J is
lowest at 0.05, the test MSE at 0.07, and there the walk, which found 0.05, reconstructs worse than
the whole grid on 4 images). ``search="grid"`` evaluates every grid point, as the papers' grid
search does (Figure 6); where J has one minimum on the grid both searches choose the same point,
and where it has several the walk stays with the one nearest the current s.

Ties (``tie_se``). Where J is flat, the step sizes the tuning batch cannot tell apart are ties, and
the argmin among them follows the batch. With ``tie_se=c > 0`` a point ``s`` is a tie with the
argmin ``s*`` when the paired per-image difference ``d_i = J_i(s) - J_i(s*)`` (the same ``z_0`` at
both) has ``mean(d) <= c * sd(d) / sqrt(n)`` over the ``n`` tuning images, the one-standard-error
rule of model selection; among the ties (the evaluated points: with ``search="local"`` the argmin's
neighbours at least) the one with the lowest energy ``E_q[-log p(x, z_K)]``, J's reconstruction
part, is chosen. J itself is unchanged, and so is the choice wherever J's minimum is sharp on the
batch; ``c = 0`` (the default) is the argmin. Every point's ``energy`` is recorded in the history.
On the Pyro MNIST decoder, trained with the walk on 16 images and ``memory=0``, the argmin's
own-inference test error rose from 300 to 1,200 iterations on two of three seeds while the generator
improved (the error follows where in J's flat stretch the last tuning lands); with ``c = 1`` it fell
from 300 to 1,200 on every seed and was lower than the argmin's at 300 and 1,200 iterations on every
seed. On the ladder generator on MNIST (two seeds, 300 iterations, ``memory=0``) the same rule chose
0.09 where the argmin chose 0.08 at the first tuning of seed 0, and that run's generator stopped
depending on z before iteration 100; on seed 1 it reconstructed as well as the argmin
(benchmarks/RESULTS.md). It is not the default.

Averaging over tunings (``memory``). One tuning batch decides the step size until the next tuning,
and late in training, where the generator changes little between tunings, the choice still moves
with the batch: on the Pyro MNIST decoder the last eight tunings of a 4,800-iteration run
(``tie_se=1``) chose 0.05-0.08 on their batches of 16 images while J on 64 test images was lowest at
0.07, and the last one, 0.05, reconstructs the test images with 1.5 times the error of 0.07. With
``memory=m > 0`` the step size applied at the n-th tuning is a moving average in ``log s`` of the
choices,

    log s_n = (1 - w_n) log s_{n-1} + w_n log s*_n,    w_n = max(1 - m, 1 / n),

``s*_n`` the n-th tuning's choice and ``s_{n-1}`` the sampler's step size (the last applied value):
the running mean of the choices over the first ``1 / (1 - m)`` tunings (the first one applies its
choice, not the sampler's starting step size), an exponential moving average with weight ``1 - m``
after them. The sampling noise of the choice shrinks by ``sqrt((1 - m) / (1 + m))``, at the cost of
following a moving optimum about ``m / (1 - m)`` tunings late (the averaged iterate of Stan's dual
averaging plays the same part). The count n is the tuner's state (``state_dict``, kept in the
run's checkpoint). ``objective`` and the history are J at the grid points; ``m = 0`` applies
``s*_n``. On that decoder, trained with the walk on 16 images and ``m = 0.7`` (the default), the
own-inference test error fell from 300 to 1,200 to 4,800 iterations on each of three seeds (0.080 ->
0.073 -> 0.055 over the seeds), where with ``m = 0`` it rose from 300 to 1,200 on two of them
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Model, Reduce, Sampler, Tuner, TuneResult, require_real_latents
from inferkit.tuners.kl_common import (
    KLObjectiveOptions,
    means_over_processes,
    paired_mean_over_processes,
    require_step_size,
)

PAPER_GRID = tuple(round(0.01 * i, 2) for i in range(1, 16))  # 0.01, 0.02, ..., 0.15
SEARCHES = ("grid", "local")
PER_EXAMPLE = "_J_per_example"
"""The key of a point's per-example J while the search runs (dropped from the history it returns)."""


class KLGrid(Tuner):
    """Grid search over one shared step size.

    Args:
        grid: candidate step sizes in the sampler's units (default the papers' 0.01, 0.02, ..., 0.15).
        num_samples, batch_size, logdet, seed, num_probes, lanczos_steps: the estimate of J
            (:class:`~inferkit.tuners.kl_common.KLObjectiveOptions`); ``batch_size`` defaults to 16
            (module docstring).
        require_invertible: ``False`` (default): the smallest finite J among all evaluated points,
            invertible or not, with the grid extended at its ends; ``True``: choose only points where
            the flow is invertible (every eigenvalue of every ``I + S H_k`` > 0), with the grid shrunk
            but not extended (see the module docstring).
        extend_factor: (> 1) the grid grows below its smallest point by ``1 / extend_factor`` and above
            its largest by ``extend_factor`` per extension; default the ratio of the grid's two end
            points on that side (0.01 / 0.02 below and 0.15 / 0.14 above the default grid; 2 for a
            one-point grid).
        max_extensions: how many points the extension may add in all (0: none). Not with
            ``require_invertible``.
        shrink, max_shrinks: scale factor of the grid, and how many times, when no point is usable (no
            finite J; with ``require_invertible``, no invertible point with a finite J).
        stop_at_singular: walk the grid in increasing order and skip the step sizes above the first
            non-invertible one (recorded as ``evaluated: False``): ``1 + s lambda`` only falls as s grows
            for the negative curvature that makes F singular, so they would not be usable either.
            Defaults to ``require_invertible``; it applies only with ``require_invertible`` (without it
            the skipped points are where the argmin of J usually is, so asking for it is an error).
        search: ``local`` (default): from the grid point nearest the sampler's step size, downhill to a
            local minimum (module docstring); without a finite J there, the whole grid; ``grid``: J at
            every grid point.
        tie_se: ``0`` (default): the argmin of J. ``c > 0``: among the evaluated usable points whose J
            is above the smallest by at most ``c`` standard errors of the paired per-image difference
            (points J cannot tell apart on this batch), the one with the lowest energy
            ``E_q[-log p(x, z_K)]`` (module docstring, "Ties").
        memory: ``m`` in ``[0, 1)``, default 0.7: apply a moving average in ``log s`` of the choices, the
            last one weighted ``max(1 - m, 1 / n)`` at the n-th tuning (module docstring, "Averaging over
            tunings"); ``0``: apply each tuning's choice.
    """

    def __init__(self, grid: tuple[float, ...] = PAPER_GRID, num_samples: int = 1, batch_size: int = 16,
                 logdet: str = "stepwise", seed: int = 0, require_invertible: bool = False,
                 extend_factor: float | None = None, max_extensions: int = 8, shrink: float = 0.25,
                 max_shrinks: int = 4, stop_at_singular: bool | None = None, num_probes: int = 4,
                 lanczos_steps: int = 4, search: str = "local", tie_se: float = 0.0, memory: float = 0.7):
        grid = tuple(sorted(float(s) for s in grid))
        if not grid or not all(math.isfinite(s) and s > 0 for s in grid):
            raise UserError(f"kl-grid: grid must be positive, finite step sizes, got {grid}")
        self.objective = KLObjectiveOptions(num_samples=num_samples, batch_size=batch_size, logdet=logdet,
                                            seed=seed, num_probes=num_probes, lanczos_steps=lanczos_steps)
        self.objective.validate("kl-grid")
        if not 0 < shrink < 1 or max_shrinks < 0:
            raise UserError("kl-grid: shrink must lie in (0, 1) and max_shrinks must be >= 0")
        if extend_factor is not None and not (math.isfinite(extend_factor) and extend_factor > 1):
            raise UserError(f"kl-grid: extend_factor must be a finite number > 1, got {extend_factor}")
        if max_extensions < 0:
            raise UserError("kl-grid: max_extensions must be >= 0")
        if stop_at_singular is None:
            stop_at_singular = require_invertible
        if stop_at_singular and not require_invertible:
            raise UserError("kl-grid: stop_at_singular=true applies only with require_invertible=true (without "
                            "it the points past the first non-invertible one are candidates, and usually hold "
                            "the argmin of J)")
        if search not in SEARCHES:
            raise UserError(f"kl-grid: search must be one of {', '.join(SEARCHES)}, got {search!r}")
        if not (math.isfinite(tie_se) and tie_se >= 0):
            raise UserError(f"kl-grid: tie_se must be a finite number >= 0, got {tie_se}")
        if not (math.isfinite(memory) and 0 <= memory < 1):
            raise UserError(f"kl-grid: memory must be a number in [0, 1), got {memory}")
        self.memory = float(memory)
        self.tunings = 0
        self.search = search
        self.tie_se = float(tie_se)
        self.require_invertible = bool(require_invertible)
        self.stop_at_singular = bool(stop_at_singular)
        self.extend_factor = extend_factor
        self.max_extensions = max_extensions
        self.shrink = shrink
        self.max_shrinks = max_shrinks
        self.grid = grid

    def check(self, model: Model, sampler: Sampler) -> None:
        """Refuse, before training starts, a model or sampler the KL objective does not apply to."""
        require_real_latents("kl-grid", model)
        require_step_size("kl-grid", sampler)

    def usable(self, point: dict) -> bool:
        """Whether ``point`` may be chosen: a finite J (and, with ``require_invertible``, an invertible flow)."""
        return math.isfinite(point["J"]) and (point["invertible"] or not self.require_invertible)

    def extension_factors(self) -> tuple[float, float]:
        """``(below, above)``: the factors a step size is multiplied by to extend the grid on each side."""
        if self.extend_factor is not None:
            return 1 / self.extend_factor, self.extend_factor
        if len(self.grid) < 2:
            return 0.5, 2.0
        return self.grid[0] / self.grid[1], self.grid[-1] / self.grid[-2]

    def tune(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None = None, *,
             reduce: Reduce | None = None) -> TuneResult:
        step_size = require_step_size("kl-grid", sampler)
        x, mask = self.objective.select(x, mask)
        history = self._walk(model, sampler, step_size, x, mask, reduce) if self.search == "local" else []
        usable = [h for h in history if self.usable(h)]
        if not usable:
            history = []  # no finite J where the walk starts: the whole grid, as search="grid"
        for round_ in range(self.max_shrinks + 1 if not usable else 0):
            history += self._search(model, sampler, step_size, x, mask, round_, reduce)
            usable = [h for h in history if self.usable(h)]
            if usable:
                break
        if not usable:
            if self.require_invertible:
                raise UserError(f"kl-grid: the flow is not invertible at any grid step size, even scaled by "
                                f"{self.shrink}^{self.max_shrinks} (some I + s H has a non-positive eigenvalue); "
                                "give smaller step sizes with --tuner-opt grid=... or a larger max_shrinks")
            raise UserError(f"kl-grid: J is not finite at any grid step size, even scaled by "
                            f"{self.shrink}^{self.max_shrinks} (the flow diverges); give smaller step sizes "
                            "with --tuner-opt grid=... or a larger max_shrinks")
        if not self.require_invertible:
            history += self._extend(model, sampler, step_size, x, mask, history, reduce)
        usable = [h for h in history if self.usable(h)]
        best = min(usable, key=lambda h: h["J"])
        if self.tie_se > 0:
            best = self._break_tie(best, usable, reduce)
        history = [{**{k: v for k, v in h.items() if k != PER_EXAMPLE}, "chosen": h is best} for h in history]
        self.tunings += 1
        applied = self._averaged(step_size, best["step_size"], self.tunings)
        return TuneResult(hyperparameters={"step_size": applied}, objective=best["J"], history=history,
                          per=sampler.per)

    def state_dict(self) -> dict[str, int]:
        return {"tunings": self.tunings}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tunings = state.get("tunings", 0)
        if isinstance(tunings, bool) or not isinstance(tunings, int) or tunings < 0:
            raise UserError(f"kl-grid: the tuner state's tunings must be a count >= 0, got {tunings!r}")
        self.tunings = tunings

    def _averaged(self, step_size: Tensor, chosen: float, n: int) -> Tensor:
        """The step size to apply at the n-th tuning: ``exp((1 - w_n) log step_size + w_n log chosen)``,
        ``w_n = max(1 - memory, 1 / n)``."""
        choice = torch.full_like(step_size, chosen)
        weight = max(1 - self.memory, 1 / n)
        if weight == 1:
            return choice
        return torch.exp((1 - weight) * step_size.detach().log() + weight * choice.log())

    def _evaluate(self, model: Model, sampler: Sampler, step_size: Tensor, x: Tensor, mask: Tensor | None,
                  s: float, reduce: Reduce | None) -> dict:
        """J and its energy part at ``s`` (the sampler's ``step_size`` filled with ``s``), averaged over
        processes, and the invertibility of the flow there; this process's per-example values of both
        under :data:`PER_EXAMPLE`, for :meth:`_break_tie`."""
        result = self.objective.evaluate(model, sampler, x, mask, {"step_size": torch.full_like(step_size, s)},
                                         differentiable=False)
        means = torch.stack([result.objective.mean(), result.info.energy.mean()])
        (value, energy), invertible = means_over_processes(means, result.info.invertible, reduce)
        return {"step_size": s, "J": value, "energy": energy, "invertible": invertible,
                "min_eigenvalue": result.info.min_eigenvalue, "evaluated": True,
                PER_EXAMPLE: result.objective.detach()}

    def _break_tie(self, best: dict, usable: list[dict], reduce: Reduce | None) -> dict:
        """The lowest-energy point among ``usable`` whose J is within ``tie_se`` standard errors of
        ``best``'s: ``mean_i d_i <= tie_se * sd(d) / sqrt(n)`` with ``d_i = J_i(s) - J_i(s*)`` over the
        ``n`` tuning images of all processes (the same ``z_0`` at every s, so the difference is paired)."""
        tied = [best]
        for point in usable:
            if point is best:
                continue
            mean, standard_error = paired_mean_over_processes(point[PER_EXAMPLE] - best[PER_EXAMPLE], reduce)
            if mean <= self.tie_se * standard_error:
                tied.append(point)
        return min(tied, key=lambda h: (h["energy"], h["J"]))

    def _search(self, model: Model, sampler: Sampler, step_size: Tensor, x: Tensor, mask: Tensor | None,
                round_: int, reduce: Reduce | None) -> list[dict]:
        """One pass over the grid scaled by ``shrink**round_``: every point's J and invertibility, or
        ``evaluated: False`` past a singular one with ``stop_at_singular``."""
        points: list[dict] = []
        singular = False
        for s in (value * self.shrink**round_ for value in self.grid):
            if singular:
                points.append({"step_size": s, "J": math.nan, "round": round_, "invertible": False,
                               "min_eigenvalue": math.nan, "evaluated": False, "extended": False})
                continue
            point = self._evaluate(model, sampler, step_size, x, mask, s, reduce)
            points.append({**point, "round": round_, "extended": False})
            singular = self.stop_at_singular and not point["invertible"]
        return points

    def _walk(self, model: Model, sampler: Sampler, step_size: Tensor, x: Tensor, mask: Tensor | None,
              reduce: Reduce | None) -> list[dict]:
        """``search="local"``: from the grid point nearest (in log s) the sampler's step size, move to the
        lower of its neighbours while it is below the current point; the points evaluated, in grid order
        (none usable when J is not finite at the start)."""
        current = float(step_size.detach().double().mean())
        index = min(range(len(self.grid)), key=lambda i: abs(math.log(self.grid[i] / current)))
        points: dict[int, dict] = {}

        def value(i: int) -> float:
            if i not in points:
                points[i] = {**self._evaluate(model, sampler, step_size, x, mask, self.grid[i], reduce),
                             "round": 0, "extended": False}
            return points[i]["J"] if self.usable(points[i]) else math.inf

        if math.isfinite(value(index)):
            while True:
                neighbours = [i for i in (index - 1, index + 1) if 0 <= i < len(self.grid)]
                best = min(neighbours, key=value, default=index)
                if not value(best) < value(index):
                    break
                index = best
        return [points[i] for i in sorted(points)]

    def _extend(self, model: Model, sampler: Sampler, step_size: Tensor, x: Tensor, mask: Tensor | None,
                history: list[dict], reduce: Reduce | None) -> list[dict]:
        """Points added beyond the ends of the last round's grid (``extended: True``, the ``round`` of the
        grid they extend) while J at an end of the grid is finite and below J at its neighbour, so that a
        minimum of J may lie beyond it (always the case when the argmin is at an end); the small-s end
        first. Stops when neither end is such a point (a non-finite J ends that side), or after
        ``max_extensions`` points."""
        below, above = self.extension_factors()
        round_ = history[-1]["round"]  # earlier rounds have no finite J: the search goes on from this one
        evaluated = [h for h in history if h["evaluated"] and h["round"] == round_]
        smallest, largest = self.grid[0] * self.shrink**round_, self.grid[-1] * self.shrink**round_
        added: list[dict] = []

        def descends_to(end: dict, neighbour: dict | None) -> bool:
            return math.isfinite(end["J"]) and (neighbour is None or not end["J"] >= neighbour["J"])

        while len(added) < self.max_extensions:
            points = sorted(evaluated, key=lambda h: h["step_size"])
            # only at the grid's own ends: a local walk's outermost points can be interior to the grid
            lowest, highest = points[0], points[-1]
            if lowest["step_size"] <= smallest and descends_to(lowest, points[1] if len(points) > 1 else None):
                s = lowest["step_size"] * below
            elif highest["step_size"] >= largest and descends_to(highest, points[-2] if len(points) > 1 else None):
                s = highest["step_size"] * above
            else:
                break
            point = {**self._evaluate(model, sampler, step_size, x, mask, s, reduce), "round": round_,
                     "extended": True}
            added.append(point)
            evaluated.append(point)
        return added
