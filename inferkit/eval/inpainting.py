"""Inpainting by the masked likelihood: infer ``z`` from the observed pixels only,

    log p(x_obs, z) = log p(z) + sum_pixels m * log p(x | z)       (m = 1: observed),

then fill the hidden pixels with ``E[x | z]``. The error is the mean squared error over hidden
pixels only. Masks are ``[N, 1, H, W]`` (shared over channels) for images, ``[N, D]`` otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Model, Sampler

MASK_PATTERNS = ("random-pixels", "centre-square", "half", "random-blocks")
"""random-pixels: each pixel hidden with probability 1/2; centre-square: the central square of half
the side; half: the bottom half; random-blocks: four squares of a quarter of the side at random
places (they may overlap)."""


def make_mask(pattern: str, n: int, data_shape: tuple[int, ...], *,
              generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """A float mask (1 observed, 0 hidden) of ``pattern`` for ``n`` examples of ``data_shape``."""
    if pattern not in MASK_PATTERNS:
        raise UserError(f"unknown mask pattern {pattern!r}; use one of {', '.join(MASK_PATTERNS)}")
    image = len(data_shape) == 3
    if not image:
        if pattern != "random-pixels":
            raise UserError(f"mask pattern {pattern!r} needs image data; use random-pixels")
        return (torch.rand(n, *data_shape, generator=generator) >= 0.5).float().to(device)
    _, height, width = data_shape
    mask = torch.ones(n, 1, height, width)
    if pattern == "random-pixels":
        mask = (torch.rand(n, 1, height, width, generator=generator) >= 0.5).float()
    elif pattern == "centre-square":
        h, w = height // 2, width // 2
        top, left = (height - h) // 2, (width - w) // 2
        mask[:, :, top:top + h, left:left + w] = 0
    elif pattern == "half":
        mask[:, :, height // 2:, :] = 0
    else:  # random-blocks
        h, w = max(1, height // 4), max(1, width // 4)
        tops = torch.randint(0, height - h + 1, (n, 4), generator=generator)
        lefts = torch.randint(0, width - w + 1, (n, 4), generator=generator)
        for i in range(n):
            for top, left in zip(tops[i].tolist(), lefts[i].tolist()):
                mask[i, :, top:top + h, left:left + w] = 0
    return mask.to(device)


def inpaint(model: Model, sampler: Sampler, x: Tensor, mask: Tensor, *,
            generator: torch.Generator | None = None) -> Tensor:
    """``E[x | z]`` with ``z`` inferred from the observed pixels; the hidden pixels of ``x`` are
    zeroed before the sampler sees them, so no sampler (an encoder included) can read them."""
    observed = x * mask
    z = sampler.infer(model, observed, mask=mask, generator=generator).z
    with torch.no_grad():
        return model.decode(z)


def hidden_mse(x: Tensor, filled: Tensor, mask: Tensor) -> tuple[float, float]:
    """(sum of squared errors over hidden entries, number of hidden entries)."""
    hidden = (1 - mask).expand_as(x)
    return float(((x - filled).pow(2) * hidden).sum()), float(hidden.sum())


def hidden_errors(x: Tensor, filled: Tensor, mask: Tensor) -> Tensor:
    """Per-example mean squared error over its hidden entries ``[B]`` (float64, on the CPU; NaN where none
    is hidden)."""
    hidden = (1 - mask).expand_as(x).double()
    squared = ((x - filled).double().pow(2) * hidden).flatten(1).sum(1)
    return (squared / hidden.flatten(1).sum(1)).cpu()
