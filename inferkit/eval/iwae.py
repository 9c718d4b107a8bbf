"""The importance-weighted (IWAE) bound of Burda et al. for amortized samplers:

    L_k(x) = E[ log (1/k) sum_{i=1}^k p(x, z_i) / q(z_i | x) ],   z_i ~ q(z | x),

a lower bound on ``log p(x)`` that rises with k and equals it when ``q`` is the exact posterior.
Needs a sampler whose :class:`~inferkit.Inference` carries ``log_q`` (VAE, Ladder-VAE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Model, Sampler


def is_amortized(model: Model, sampler: Sampler, x: Tensor) -> bool:
    """True when ``sampler.infer`` returns ``log_q`` (checked on one example)."""
    with torch.no_grad():
        return sampler.infer(model, x[:1]).log_q is not None


@torch.no_grad()
def iwae_log_weights(model: Model, sampler: Sampler, x: Tensor, num_samples: int, *,
                     generator: torch.Generator | None = None) -> Tensor:
    """``log p(x, z_i) - log q(z_i | x)`` ``[B, k]`` (float64), ``z_i ~ q(z | x)``, k = ``num_samples``."""
    if num_samples < 1:
        raise UserError(f"the IWAE bound needs at least one sample, got k={num_samples}")
    repeated = x.repeat_interleave(num_samples, dim=0)
    inference = sampler.infer(model, repeated, generator=generator)
    if inference.log_q is None:
        raise UserError(f"sampler {type(sampler).__name__} is not amortized (its inference has no log q); "
                        "the IWAE bound applies to vae / lvae samplers only")
    log_weight = model.log_joint(repeated, inference.z).double() - inference.log_q.double()
    return log_weight.view(x.shape[0], num_samples)


@torch.no_grad()
def iwae_bound(model: Model, sampler: Sampler, x: Tensor, num_samples: int, *,
               generator: torch.Generator | None = None) -> Tensor:
    """``log (1/k) sum_i p(x, z_i) / q(z_i | x)`` per row of ``x`` (float64), k = ``num_samples``."""
    log_weight = iwae_log_weights(model, sampler, x, num_samples, generator=generator)
    return torch.logsumexp(log_weight, dim=1) - math.log(num_samples)
