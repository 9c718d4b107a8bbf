"""Latents as one flat vector per example, and the curvature of ``log p(x, z)`` in them.

Low-level helpers shared by the objective (:mod:`inferkit.objective`) and by samplers that compute
their own log-determinant (:mod:`inferkit.samplers.shortrun_momentum`); they import neither.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.interfaces import Latents, Model


def flatten_latents(z: Latents) -> Tensor:
    """Concatenate the layers of ``z`` into one ``[batch, D]`` tensor."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in z], dim=1)


def unflatten_latents(flat: Tensor, shapes: tuple[tuple[int, ...], ...]) -> Latents:
    """Inverse of :func:`flatten_latents` for per-layer ``shapes`` (without batch)."""
    sizes = [math.prod(s) for s in shapes]
    return tuple(part.reshape(flat.shape[0], *s) for part, s in zip(flat.split(sizes, dim=1), shapes))


def unit_step_sizes(step_sizes: Tensor, shapes: tuple[tuple[int, ...], ...]) -> Tensor:
    """``[K, D]``: the diagonal of every ``S_k`` from the ``[K, L]`` per-layer step sizes, each layer's
    step size repeated over its ``prod(shapes[l])`` units."""
    sizes = torch.tensor([math.prod(s) for s in shapes], device=step_sizes.device)
    return step_sizes.repeat_interleave(sizes, dim=1)


def hessians(model: Model, x: Tensor, z: Latents, mask: Tensor | None = None) -> Tensor:
    """Per-example ``H = hess_z log p(x, z)`` of the flattened latents, ``[batch, D, D]``
    (``torch.func.hessian`` under ``vmap``)."""
    shapes = model.latent_shapes

    def log_joint_single(z_flat: Tensor, x_row: Tensor, mask_row: Tensor | None) -> Tensor:
        z_one = unflatten_latents(z_flat.unsqueeze(0), shapes)
        m = None if mask_row is None else mask_row.unsqueeze(0)
        return model.log_joint(x_row.unsqueeze(0), z_one, m)[0]

    in_dims = (0, 0, None if mask is None else 0)
    # torch.func.hessian is forward-over-reverse (jacfwd of jacrev): ~2x faster here than jacrev twice.
    return torch.func.vmap(torch.func.hessian(log_joint_single), in_dims=in_dims)(flatten_latents(z), x, mask)
