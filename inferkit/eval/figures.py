"""PNG figures of an evaluation: samples, reconstructions, inpainting, and the hierarchy grids."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from inferkit.images import save_grid


def interleave_rows(*groups: Tensor, per_row: int = 8) -> Tensor:
    """Images of several groups of equal size, row by row: group 1 row 1, group 2 row 1, ...,
    so each original sits above its reconstruction (and its masked / filled versions)."""
    n = min(g.shape[0] for g in groups)
    rows = []
    for start in range(0, n - n % per_row or n, per_row):
        for g in groups:
            rows.append(g[start:start + per_row])
    return torch.cat(rows)


def save_samples(images: Tensor, path: Path) -> Path:
    return save_grid(images, path, nrow=8)


def save_reconstructions(originals: Tensor, reconstructions: Tensor, path: Path) -> Path:
    return save_grid(interleave_rows(originals, reconstructions), path, nrow=8)


def save_inpainting(originals: Tensor, mask: Tensor, filled: Tensor, path: Path) -> Path:
    """Rows of originals, masked (hidden pixels grey) and filled-in images."""
    masked = originals * mask
    return save_grid(interleave_rows(originals, masked.expand_as(originals), filled), path, nrow=8)


def save_traversal(images: Tensor, num_columns: int, path: Path) -> Path:
    return save_grid(images, path, nrow=num_columns)
