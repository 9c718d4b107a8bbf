"""Evaluation of a trained model and sampler: test reconstruction error."""

from __future__ import annotations

import torch
from torch import Tensor

from inferkit.interfaces import Model, Sampler


def seeded_generator(seed: int, stream: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` fixed by ``(seed, stream)`` alone, e.g. stream = iteration."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + stream) % (2**63 - 1))


def reconstruct(model: Model, sampler: Sampler, x: Tensor, *, generator: torch.Generator | None = None,
                mask: Tensor | None = None) -> Tensor:
    """``E[x | z]`` at ``z ~ q(z | x)`` inferred by ``sampler``."""
    z = sampler.infer(model, x, mask=mask, generator=generator).z
    with torch.no_grad():
        return model.decode(z)


def reconstruction_mse(model: Model, sampler: Sampler, x: Tensor, *, seed: int = 0, batch_size: int = 64) -> float:
    """Mean squared error ``mean (x - E[x | z])^2`` over ``x``, with ``z`` inferred by ``sampler``."""
    total, count = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        generator = seeded_generator(seed, start, chunk.device)
        recon = reconstruct(model, sampler, chunk, generator=generator)
        total += float((recon - chunk).pow(2).sum())
        count += chunk.numel()
    return total / count
