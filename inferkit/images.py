"""PNG image grids (Pillow) for samples, reconstructions and inpainting."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from inferkit.errors import UserError


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """True for ``(C, H, W)`` with one or three channels."""
    return len(shape) == 3 and shape[0] in (1, 3)


def grid(images: Tensor, *, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images in ``[-1, 1]`` into one ``uint8`` array ``[rows*H, cols*W, C]``."""
    images = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = images.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    canvas = torch.ones(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[:, top:top + h, left:left + w] = images[i]
    array = ((canvas + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return array[:, :, 0] if c == 1 else array


def save_grid(images: Tensor, path: str | os.PathLike[str], *, nrow: int | None = None) -> Path:
    """Write an image grid as PNG (atomically: a temporary file renamed into place). A failed write
    (disk full, no permission, missing folder) removes the temporary file and is a :class:`UserError`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    array = grid(images, nrow=nrow)
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); check the free space and the "
                        f"permissions of {path.parent}") from None
    return path
