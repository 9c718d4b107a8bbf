"""What the KL tuners share: how they evaluate ``J(s)`` on a batch.

    J(s) = E_{z_0 ~ p_0}[ log p_0(z_0) - log|det dF_s/dz_0| - log p(x, F_s(z_0)) ]

Each evaluation reseeds its own generator with ``seed`` (common random numbers: the same ``z_0``,
noise path and Lanczos probes at every ``s``), so differences in J are differences in s. J is
evaluated at hyperparameter values the tuner passes in; the sampler is never changed. In a
data-parallel run each process evaluates J on its own examples and the tuners average it over
processes with the ``reduce`` they are given (:func:`mean_over_processes`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Model, Reduce, Sampler, require_gradient_flow
from inferkit.objective import LOGDET_METHODS, KLObjective, LogDetEstimator, kl_objective


@dataclass
class KLObjectiveOptions:
    """Options of the ``J(s)`` estimate a KL tuner minimises.

    Args:
        num_samples: draws of ``z_0`` per example for the expectation in J.
        batch_size: examples of the given batch to use (0: all).
        logdet: ``"stepwise"``, ``"exact"`` or ``"stochastic"`` (see :mod:`inferkit.objective`).
        seed: seed of the common random numbers.
        num_probes, lanczos_steps: the ``stochastic`` estimator's probes and Lanczos steps per step.
    """

    num_samples: int = 1
    batch_size: int = 4
    logdet: str = "stepwise"
    seed: int = 0
    num_probes: int = 4
    lanczos_steps: int = 4

    def validate(self, tuner: str) -> None:
        if self.num_samples < 1 or self.batch_size < 0:
            raise UserError(f"{tuner}: num_samples must be >= 1 and batch_size >= 0")
        if self.logdet not in LOGDET_METHODS:
            raise UserError(f"{tuner}: logdet must be one of {', '.join(LOGDET_METHODS)}, got {self.logdet!r}")
        if self.num_probes < 1 or self.lanczos_steps < 1:
            raise UserError(f"{tuner}: num_probes and lanczos_steps must be positive integers")

    @property
    def estimator(self) -> LogDetEstimator:
        return LogDetEstimator(method=self.logdet, num_probes=self.num_probes, lanczos_steps=self.lanczos_steps)

    def select(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The first ``batch_size`` rows of ``x`` (and of a per-row mask; a broadcast mask is kept)."""
        if not self.batch_size:
            return x, mask
        if mask is not None and mask.dim() == x.dim() and mask.shape[0] == x.shape[0]:
            mask = mask[: self.batch_size]
        return x[: self.batch_size], mask

    def evaluate(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None,
                 hyperparameters: Mapping[str, Tensor], *, differentiable: bool, entropy: bool = True
                 ) -> KLObjective:
        """``J`` per example at the hyperparameter values ``hyperparameters``, with this tuner's seed;
        with ``differentiable`` a graph to those values is kept (the values are the same either way)."""
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        with torch.enable_grad() if differentiable else torch.no_grad():
            return kl_objective(model, sampler, x, mask=mask, hyperparameters=hyperparameters,
                                num_samples=self.num_samples, estimator=self.estimator, generator=generator,
                                entropy=entropy)


def mean_over_processes(objective: Tensor, invertible: bool, reduce: Reduce | None) -> tuple[float, bool]:
    """``(J, invertible)`` over all processes of a data-parallel run, from this process's mean ``J``
    over its examples: ``J = (1/W) sum_r J_r``, invertible only where every process's flow is (one
    call of ``reduce``, which sums over processes; ``None``: one process, ``J`` and ``invertible``
    themselves). The same on every process, so every process picks the same hyperparameters."""
    (value,), invertible = means_over_processes(objective, invertible, reduce)
    return value, invertible


def means_over_processes(values: Tensor, invertible: bool, reduce: Reduce | None) -> tuple[list[float], bool]:
    """:func:`mean_over_processes` for several per-process means at once (``values``, any shape, read
    flat), in the same one call of ``reduce``."""
    flat = values.detach().to(torch.float64).reshape(-1)
    if reduce is None:
        return flat.tolist(), bool(invertible)
    flags = torch.tensor([0.0 if invertible else 1.0, 1.0], dtype=torch.float64, device=flat.device)
    *totals, singular, processes = reduce(torch.cat([flat, flags])).tolist()
    return [total / processes for total in totals], singular == 0


def paired_mean_over_processes(difference: Tensor, reduce: Reduce | None) -> tuple[float, float]:
    """Mean and standard error of per-example differences ``d`` pooled over every process's examples:
    ``mean = sum d / n``, ``se = sqrt((sum d^2 - n mean^2) / (n - 1) / n)`` (``nan`` for ``n < 2``), from one
    call of ``reduce`` on this process's ``(n, sum d, sum d^2)``; the same on every process."""
    d = difference.detach().to(torch.float64).reshape(-1)
    packed = torch.stack([torch.tensor(float(d.numel()), dtype=torch.float64, device=d.device), d.sum(),
                          (d * d).sum()])
    n, total, squares = (packed if reduce is None else reduce(packed)).tolist()
    mean = total / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(max(squares - n * mean * mean, 0.0) / (n - 1) / n)


def count_processes(reduce: Reduce | None, device: torch.device) -> int:
    """``W``, the number of processes ``reduce`` sums over (1 without one)."""
    if reduce is None:
        return 1
    return int(reduce(torch.ones((), dtype=torch.float64, device=device)).item())


def require_step_size(tuner: str, sampler: Sampler) -> Tensor:
    """The sampler's current ``step_size``, or a :class:`UserError` saying why J does not apply
    (not a gradient flow from the prior: amortized or persistent samplers)."""
    step_size = require_gradient_flow(sampler, tuner=tuner).hyperparameters().get("step_size")
    if step_size is None:
        raise UserError(f"{tuner}: sampler {type(sampler).__name__} has no step_size to tune; "
                        "use the 'fixed' tuner (--tuner fixed)")
    return step_size
