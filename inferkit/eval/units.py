"""Log-likelihoods in bits per dimension of quantised data, with uniform dequantisation.

Data with ``K`` levels per entry (``K = 256`` for 8-bit images) enter the model scaled to ``[-1, 1]``:
the level ``v in {0, ..., K-1}`` is ``x = a v - 1`` with bin width ``a = 2 / (K - 1)``. Uniform
dequantisation adds ``a (u - 1/2)``, ``u ~ U[0, 1)^D``, so that ``x~ = a (v + u - 1/2) - 1`` fills the
bin of ``v``; ``y = v + u - 1/2`` has the density ``p_y(y) = p(x~) a^D`` (the Jacobian of
``y -> x~ = a y - 1`` is ``a`` per entry). The model's probability of the integer data
``P(v) = int_bin p_y`` satisfies (Jensen) ``log P(v) >= E_u[log p(x~)] + D log a``, hence

    bits/dim = -(log p(x~) + D log a) / (D ln 2),      a = 2 / (K - 1),

an upper bound, in expectation over ``u``, on the model's ``-log2 P(v) / D`` for the K-level data, the
figure image-likelihood papers report. A density uniform on ``[-1 - a/2, 1 + a/2]^D`` has
``log p = -D log(K a)`` and so exactly ``log2 K`` bits per dimension (8 for 8-bit data).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def bin_width(levels: int) -> float:
    """``a = 2 / (K - 1)``: the spacing of ``K`` levels on ``[-1, 1]``."""
    if levels < 2:
        raise ValueError(f"quantised data need at least 2 levels, got {levels}")
    return 2.0 / (levels - 1)


def dequantise(x: Tensor, levels: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``x + a (u - 1/2)``, ``u ~ U[0, 1)`` per entry: a uniform draw from the bin of each level."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + bin_width(levels) * (u - 0.5)


def bits_per_dim(log_p: Tensor | float, num_dims: int, levels: int) -> Tensor | float:
    """``-(log p(x~) + D log a) / (D ln 2)`` for ``log p(x~)`` in nats at dequantised ``x~`` (module
    docstring)."""
    return -(log_p + num_dims * math.log(bin_width(levels))) / (num_dims * math.log(2))
