"""What the KL tuners share: how they evaluate ``J(s)`` on a batch.

    J(s) = E_{z_0 ~ p_0}[ log p_0(z_0) - log|det dF_s/dz_0| - log p(x, F_s(z_0)) ]

Each evaluation reseeds its own generator with ``seed`` (common random numbers: the same ``z_0``,
noise path and Lanczos probes at every ``s``), so differences in J are differences in s. In a data-parallel run each process evaluates J on its own
examples and the tuners average it over processes (:func:`mean_over_processes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import constraints

from inferkit import distributed
from inferkit.errors import UserError
from inferkit.interfaces import Model, Sampler, support_name
from inferkit.objective import LOGDET_METHODS, ObjectiveInfo, kl_objective, kl_objective_unavailable


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

    def select(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The first ``batch_size`` rows of ``x`` (and of a per-row mask; a broadcast mask is kept)."""
        if not self.batch_size:
            return x, mask
        if mask is not None and mask.dim() == x.dim() and mask.shape[0] == x.shape[0]:
            mask = mask[: self.batch_size]
        return x[: self.batch_size], mask

    def evaluate(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None, *,
                 differentiable: bool, entropy: bool = True) -> tuple[Tensor, ObjectiveInfo]:
        """``J`` per example at the sampler's current hyperparameters, with this tuner's seed."""
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return kl_objective(model, sampler, x, num_samples=self.num_samples, logdet=self.logdet, mask=mask,
                            generator=generator, return_info=True, differentiable=differentiable,
                            num_probes=self.num_probes, lanczos_steps=self.lanczos_steps, entropy=entropy)


def mean_over_processes(objective: Tensor, info: ObjectiveInfo) -> tuple[float, bool]:
    """``(J, invertible)`` over all processes of a data-parallel run, from this process's mean ``J``
    over its examples: ``J = (1/W) sum_r J_r``, invertible only where every process's flow is (one
    all-reduce; in one process: ``J`` and ``info.invertible`` themselves). The same on every rank, so
    every rank picks the same hyperparameters."""
    if not distributed.context().distributed:
        return float(objective.detach()), bool(info.invertible)
    world = distributed.context().world_size
    packed = torch.stack([objective.detach().to(torch.float64).reshape(()),
                          torch.tensor(0.0 if info.invertible else 1.0, dtype=torch.float64,
                                       device=objective.device)])
    total, singular = distributed.all_reduce_sum(packed).tolist()
    return total / world, singular == 0


def require_real_latents(tuner: str, model: Model) -> None:
    """J(s) needs a differentiable log density in ``z``: refuse a model with discrete latents."""
    if model.latent_support is not constraints.real:
        raise UserError(f"{tuner}: the KL objective needs real-valued latents, but model {type(model).__name__} has "
                        f"{support_name(model.latent_support)} latents; use the 'fixed' tuner (--tuner fixed)")


def require_step_size(tuner: str, sampler: Sampler) -> Tensor:
    """The sampler's live ``step_size`` tensor, or a :class:`UserError` saying why J does not apply
    (the sampler's own reason first: amortized or persistent samplers)."""
    reason = kl_objective_unavailable(sampler)
    if reason is not None:
        raise UserError(f"{tuner}: the KL objective does not apply to sampler {type(sampler).__name__}: "
                        f"{reason}; use the 'fixed' tuner (--tuner fixed)")
    step_size = sampler.hyperparameters().get("step_size")
    if step_size is None:
        raise UserError(f"{tuner}: sampler {type(sampler).__name__} has no step_size to tune; "
                        "use the 'fixed' tuner (--tuner fixed)")
    return step_size
