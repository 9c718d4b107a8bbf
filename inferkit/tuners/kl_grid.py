"""The ``kl-grid`` tuner: grid search of the step size minimising ``J(s)`` (papers, section 4.4).

    s* = argmin_{s in grid} J(s),  J(s) = E[log p_0(z_0) - log|det dF_s/dz_0| - log p(x, F_s(z_0))]

Every grid point uses the same ``z_0`` draws (common random numbers), so differences in J are
differences in s. A point where some ``I + s H_k`` has a non-positive eigenvalue (F not
invertible there, J not a KL) is recorded with ``invertible: False`` and never chosen. When no
point of the grid is invertible (the posterior has sharpened beyond the grid, as it does while a
generator learns), the grid is scaled by ``shrink`` and searched again, up to ``max_shrinks`` times;
every round is recorded in the history.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Model, Reduce, Sampler, Tuner, TuneResult, require_real_latents
from inferkit.tuners.kl_common import KLObjectiveOptions, mean_over_processes, require_step_size

PAPER_GRID = tuple(round(0.01 * i, 2) for i in range(1, 16))  # 0.01, 0.02, ..., 0.15


class KLGrid(Tuner):
    """Grid search over one shared step size.

    Args:
        grid: candidate step sizes (default the papers' 0.01, 0.02, ..., 0.15).
        num_samples, batch_size, logdet, seed, num_probes, lanczos_steps: the estimate of J
            (:class:`~inferkit.tuners.kl_common.KLObjectiveOptions`).
        shrink, max_shrinks: scale factor of the grid, and how many times, when no point is invertible.
        stop_at_singular: walk the grid in increasing order and skip the step sizes above the first
            non-invertible one (recorded as ``evaluated: False``): ``1 + s lambda`` only falls as s grows
            for the negative curvature that makes F singular, so they would not be usable either.
    """

    def __init__(self, grid: tuple[float, ...] = PAPER_GRID, num_samples: int = 1, batch_size: int = 4,
                 logdet: str = "stepwise", seed: int = 0, shrink: float = 0.25, max_shrinks: int = 4,
                 stop_at_singular: bool = True, num_probes: int = 4, lanczos_steps: int = 4):
        grid = tuple(sorted(float(s) for s in grid))
        if not grid or not all(math.isfinite(s) and s > 0 for s in grid):
            raise UserError(f"kl-grid: grid must be positive, finite step sizes, got {grid}")
        self.objective = KLObjectiveOptions(num_samples=num_samples, batch_size=batch_size, logdet=logdet,
                                            seed=seed, num_probes=num_probes, lanczos_steps=lanczos_steps)
        self.objective.validate("kl-grid")
        if not 0 < shrink < 1 or max_shrinks < 0:
            raise UserError("kl-grid: shrink must lie in (0, 1) and max_shrinks must be >= 0")
        self.stop_at_singular = stop_at_singular
        self.shrink = shrink
        self.max_shrinks = max_shrinks
        self.grid = grid

    def check(self, model: Model, sampler: Sampler) -> None:
        """Refuse, before training starts, a model or sampler the KL objective does not apply to."""
        require_real_latents("kl-grid", model)
        require_step_size("kl-grid", sampler)

    def tune(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None = None, *,
             reduce: Reduce | None = None) -> TuneResult:
        step_size = require_step_size("kl-grid", sampler)
        x, mask = self.objective.select(x, mask)
        history: list[dict] = []
        usable: list[dict] = []
        for round_ in range(self.max_shrinks + 1):
            history += self._search(model, sampler, step_size, x, mask, round_, reduce)
            usable = [h for h in history if h["invertible"] and math.isfinite(h["J"])]
            if usable:
                break
        if not usable:
            raise UserError(f"kl-grid: the flow is not invertible at any grid step size, even scaled by "
                            f"{self.shrink}^{self.max_shrinks} (some I + s H has a non-positive eigenvalue); give "
                            "smaller step sizes with --tuner-opt grid=... or a larger max_shrinks")
        best = min(usable, key=lambda h: h["J"])
        return TuneResult(hyperparameters={"step_size": torch.full_like(step_size, best["step_size"])},
                          objective=best["J"], history=history, per=sampler.per)

    def _search(self, model: Model, sampler: Sampler, step_size: Tensor, x: Tensor, mask: Tensor | None,
                round_: int, reduce: Reduce | None) -> list[dict]:
        """One pass over the grid scaled by ``shrink**round_``: every point's J at ``s`` (the sampler's
        ``step_size`` filled with ``s``), its invertibility, or ``evaluated: False`` past a singular one."""
        points: list[dict] = []
        singular = False
        for s in (value * self.shrink**round_ for value in self.grid):
            if singular:
                points.append({"step_size": s, "J": math.nan, "round": round_, "invertible": False,
                               "min_eigenvalue": math.nan, "evaluated": False})
                continue
            result = self.objective.evaluate(model, sampler, x, mask, {"step_size": torch.full_like(step_size, s)},
                                             differentiable=False)
            value, invertible = mean_over_processes(result.objective.mean(), result.info.invertible, reduce)
            points.append({"step_size": s, "J": value, "round": round_, "invertible": invertible,
                           "min_eigenvalue": result.info.min_eigenvalue, "evaluated": True})
            singular = self.stop_at_singular and not invertible
        return points
