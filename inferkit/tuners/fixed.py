"""The ``fixed`` tuner: keeps (or sets) the sampler's step size; no objective is evaluated."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Model, Reduce, Sampler, Tuner, TuneResult


class Fixed(Tuner):
    """Leave the sampler's hyperparameters as they are, or set ``step_size`` to a given value."""

    def __init__(self, step_size: float | None = None):
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise UserError(f"fixed: step_size must be positive and finite, got {step_size}")
        self.step_size = step_size

    def tune(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None = None, *,
             reduce: Reduce | None = None) -> TuneResult:
        """The sampler's current hyperparameters, with every entry of ``step_size`` set to the given one."""
        chosen = {k: v.detach().clone() for k, v in sampler.hyperparameters().items()}
        if self.step_size is not None and "step_size" in chosen:
            chosen["step_size"] = torch.full_like(chosen["step_size"], self.step_size)
        return TuneResult(hyperparameters=chosen, objective=math.nan, history=[], per=sampler.per)
