"""``shapes``: inferkit's built-in synthetic data set (no download, no files).

RGB images of one coloured shape on a plain background, rendered with anti-aliased
edges from six known generative factors, each on a grid of levels:

==============  ======  =============================================
factor          levels  meaning
==============  ======  =============================================
``background``  4       background colour (dark palette)
``shape``       4       square, disc, triangle, cross (also ``label``)
``foreground``  6       shape colour (bright palette)
``scale``       6       radius, 0.14 .. 0.24 of the image side
``pos_x``       16      centre x, 0.25 .. 0.75 of the image side
``pos_y``       16      centre y, 0.25 .. 0.75 of the image side
==============  ======  =============================================

``factors`` holds the level index of each factor (int64 ``[N, 6]``). Train and test
are drawn together *without replacement* from the 147,456 factor combinations, so
no combination, and hence no image, is in both splits. Same seed, same tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from inferkit.data.base import ImageData, TensorSplit, as_int
from inferkit.errors import UserError

__all__ = ["ShapesDataset", "render_shapes"]

FACTOR_NAMES = ("background", "shape", "foreground", "scale", "pos_x", "pos_y")
FACTOR_SIZES = (4, 4, 6, 6, 16, 16)
NUM_COMBINATIONS = math.prod(FACTOR_SIZES)
SHAPE_NAMES = ("square", "disc", "triangle", "cross")
BACKGROUND_COLOURS = np.array(
    [[0.06, 0.06, 0.08], [0.10, 0.14, 0.36], [0.34, 0.10, 0.12], [0.10, 0.28, 0.14]], dtype=np.float32
)
FOREGROUND_COLOURS = np.array(
    [
        [0.95, 0.25, 0.20],  # red
        [0.30, 0.90, 0.30],  # green
        [0.35, 0.55, 1.00],  # blue
        [1.00, 0.90, 0.25],  # yellow
        [0.30, 0.95, 0.95],  # cyan
        [0.95, 0.40, 0.90],  # magenta
    ],
    dtype=np.float32,
)
SCALES = np.linspace(0.14, 0.24, FACTOR_SIZES[3], dtype=np.float32)
POSITIONS = np.linspace(0.25, 0.75, FACTOR_SIZES[4], dtype=np.float32)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 256


def _box(u: np.ndarray, v: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """Signed distance to an axis-aligned box of half-sizes ``(ax, ay)``."""
    qx, qy = np.abs(u) - ax, np.abs(v) - ay
    outside = np.sqrt(np.square(np.maximum(qx, 0)) + np.square(np.maximum(qy, 0)))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _signed_distance(shape: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) of shape class ``shape`` of radius ``r``
    at offsets ``u`` ``[n, 1, S]``, ``v`` ``[n, S, 1]`` from its centre (``v`` up)."""
    if shape == 0:  # square
        return _box(u, v, 0.7 * r, 0.7 * r)
    if shape == 1:  # disc
        return np.sqrt(u * u + v * v) - r
    if shape == 2:  # equilateral triangle, apex up, circumradius r
        c, h = np.float32(math.sqrt(3) / 2), np.float32(0.5)
        return np.maximum(np.maximum(-v, c * u + h * v), h * v - c * u) - h * r
    if shape == 3:  # cross
        return np.minimum(_box(u, v, 0.9 * r, 0.3 * r), _box(u, v, 0.3 * r, 0.9 * r))
    raise ValueError(f"unknown shape class {shape}")


def render_shapes(factors: np.ndarray | Tensor, image_size: int) -> Tensor:
    """Render images ``[N, 3, S, S]`` float32 in ``[-1, 1]`` from factor level indices
    ``[N, 6]`` (columns as ``FACTOR_NAMES``).

    Vectorised numpy over each shape class (single-threaded, so it stays fast on a
    busy machine); anti-aliased by clipping the signed distance to one pixel.
    """
    f = np.asarray(factors, dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != len(FACTOR_NAMES):
        raise ValueError(f"factors must have shape [N, {len(FACTOR_NAMES)}], got {f.shape}")
    if (f < 0).any() or (f >= np.array(FACTOR_SIZES)).any():
        raise ValueError(f"factor levels out of range; sizes are {FACTOR_SIZES}")
    s = int(image_size)
    n = f.shape[0]
    grid = np.arange(s, dtype=np.float32) + np.float32(0.5)  # pixel centres
    alpha = np.empty((n, s, s), dtype=np.float32)
    for shape in range(FACTOR_SIZES[1]):
        rows = np.flatnonzero(f[:, 1] == shape)
        if rows.size == 0:
            continue
        g = f[rows]
        cx = (POSITIONS[g[:, 4]] * s)[:, None, None]
        cy = (POSITIONS[g[:, 5]] * s)[:, None, None]
        r = (SCALES[g[:, 3]] * s)[:, None, None]
        u = grid[None, None, :] - cx  # [n, 1, S]
        v = cy - grid[None, :, None]  # [n, S, 1], image rows go down
        a = np.float32(0.5) - _signed_distance(shape, u, v, r)
        alpha[rows] = np.clip(a, 0.0, 1.0, out=a)
    bg = BACKGROUND_COLOURS[f[:, 0]] * 2 - 1  # [N, 3] in [-1, 1]
    fg = FOREGROUND_COLOURS[f[:, 2]] * 2 - 1
    img = np.empty((n, 3, s, s), dtype=np.float32)
    for c in range(3):  # bg + (fg - bg) * alpha
        np.multiply(alpha, (fg - bg)[:, c, None, None], out=img[:, c])
        img[:, c] += bg[:, c, None, None]
    return torch.from_numpy(np.clip(img, -1.0, 1.0, out=img))


class ShapesDataset(ImageData):
    """Synthetic coloured shapes with known factors (see module docstring).

    ``ShapesDataset(num_train=4096, num_test=512, image_size=16, seed=0)``; items carry
    ``x`` ``[3, S, S]``, ``index``, ``label`` (shape class) and ``factors`` (level indices).
    """

    name = "shapes"
    FACTOR_NAMES = FACTOR_NAMES
    FACTOR_SIZES = FACTOR_SIZES
    SHAPE_NAMES = SHAPE_NAMES
    NUM_COMBINATIONS = NUM_COMBINATIONS

    def __init__(
        self, num_train: int = 4096, num_test: int = 512, image_size: int = 16, seed: int = 0
    ) -> None:
        num_train = as_int("num_train", num_train, minimum=1)
        num_test = as_int("num_test", num_test, minimum=1)
        image_size = as_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
        seed = as_int("seed", seed)
        if image_size > MAX_IMAGE_SIZE:
            raise UserError(f"option image_size must be at most {MAX_IMAGE_SIZE}, got {image_size}")
        total = num_train + num_test
        if total > NUM_COMBINATIONS:
            raise UserError(
                f"shapes has {NUM_COMBINATIONS} distinct images but num_train + num_test = {total}; "
                "lower num_train or num_test"
            )
        self.image_size = image_size
        self.seed = seed
        rng = np.random.default_rng(np.random.SeedSequence([seed % 2**64, 0x5A4E]))
        codes = rng.choice(NUM_COMBINATIONS, size=total, replace=False)
        factors = np.stack(np.unravel_index(codes, FACTOR_SIZES), axis=1).astype(np.int64)
        images = render_shapes(factors, image_size)
        f = torch.from_numpy(factors)
        train = TensorSplit(images[:num_train], labels=f[:num_train, 1], factors=f[:num_train], name="train")
        test = TensorSplit(images[num_train:], labels=f[num_train:, 1], factors=f[num_train:], name="test")
        super().__init__(train, test, factor_names=FACTOR_NAMES, num_classes=len(SHAPE_NAMES))

    @property
    def factor_sizes(self) -> tuple[int, ...]:
        """Number of levels of each factor, in ``factor_names`` order."""
        return FACTOR_SIZES

    def render(self, factors: np.ndarray | Tensor) -> Tensor:
        """Images for arbitrary factor level indices ``[N, 6]`` at this set's size
        (for latent traversals and interventions)."""
        return render_shapes(factors, self.image_size)
