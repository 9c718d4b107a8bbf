"""Reconstruction by a sampler's inference: ``E[x | z]`` at ``z ~ q(z | x)``, and its mean squared error."""

from __future__ import annotations

import torch
from torch import Tensor

from inferkit.interfaces import Model, Sampler
from inferkit.seeding import seeded_generator


def reconstruct(model: Model, sampler: Sampler, x: Tensor, *, generator: torch.Generator | None = None,
                mask: Tensor | None = None) -> Tensor:
    """``E[x | z]`` at ``z ~ q(z | x)`` inferred by ``sampler``."""
    z = sampler.infer(model, x, mask=mask, generator=generator).z
    with torch.no_grad():
        return model.decode(z)


def reconstruction_errors(model: Model, sampler: Sampler, x: Tensor, *, seed: int = 0, batch_size: int = 64
                          ) -> Tensor:
    """Per-example mean squared error ``mean_j (x_j - E[x | z]_j)^2`` ``[N]`` (float64, on the CPU), with ``z``
    inferred by ``sampler`` in batches of ``batch_size`` (the batch starting at row ``i`` with generator
    ``seeded_generator(seed, i)``)."""
    errors = []
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        generator = seeded_generator(seed, start, chunk.device)
        recon = reconstruct(model, sampler, chunk, generator=generator)
        errors.append((recon - chunk).double().pow(2).flatten(1).mean(1).cpu())
    return torch.cat(errors)


def reconstruction_mse(model: Model, sampler: Sampler, x: Tensor, *, seed: int = 0, batch_size: int = 64) -> float:
    """Mean squared error ``mean (x - E[x | z])^2`` over ``x`` (the mean of :func:`reconstruction_errors`)."""
    return float(reconstruction_errors(model, sampler, x, seed=seed, batch_size=batch_size).mean())
