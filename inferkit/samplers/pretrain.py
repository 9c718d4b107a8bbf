"""Autoencoder and RBM pre-training (the paper's sec. 3.1), used by ``vimco`` and ``rws``.

1. Autoencoder: train encoder ``E`` and decoder ``g`` on ``-log p(x | B(E(x)))`` with the soft
   binarisation ``B(e) = f(e + 1/2 + U(-1/2, 1/2))``, ``f`` the clip to ``[0, 1]`` (eq. 3). We shift by
   1/2 so that the decision boundary is ``e = 0``, the same as the later ``q = sigmoid(E(x))``, and
   ``B`` is deterministic (0 or 1) for ``|e| >= 1``: the encoder learns to code into
   ``(-inf, -1] U [1, inf)`` as the paper describes.
2. RBM: contrastive divergence on the hard codes ``z = 1[E(x) > 0]``:
   ``grad log p(z) = -grad F(z) + E_{z^- ~ p}[grad F(z^-)]`` with ``z^-`` from K Gibbs sweeps started
   at the codes (CD-K) or from persistent chains (PCD-K), in the stages the sampler's ``rbm_stages``
   lists (the paper: CD-1, then CD-25, then PCD-25).
3. Then the sampler switches to VIMCO / RWS with ``q(z | x) = Bernoulli(sigmoid(E(x)))``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_binarize(e: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``B(e) = clip(e + 1/2 + u, 0, 1)`` with ``u ~ U(-1/2, 1/2)`` elementwise (differentiable in ``e``)."""
    u = torch.rand(e.shape, generator=generator, device=e.device, dtype=e.dtype) - 0.5
    return torch.clamp(e + 0.5 + u, 0.0, 1.0)


def hard_codes(e: Tensor) -> Tensor:
    """``1[e > 0]``: the binary code the pre-trained encoder assigns (what ``B`` gives for ``|e| >= 1``)."""
    return (e.detach() > 0).to(e.dtype)


def log_partition_surrogate(rbm, z_negative: Tensor) -> Tensor:
    """A scalar with value 0 whose gradient is ``-mean_j grad F(z^-_j)``, the Monte Carlo estimate of
    ``grad log Z = -E_{z ~ p}[grad F(z)]`` from negative-phase samples ``z^-`` (paper eq. 5, second term)."""
    term = -rbm.free_energy(z_negative.detach()).mean()
    return term - term.detach()


def pcd_loss(rbm, codes: Tensor, z_negative: Tensor) -> Tensor:
    """``mean F(z) - mean F(z^-)``: minimising it ascends the PCD estimate of ``mean log p(z)`` over codes."""
    return rbm.free_energy(codes.detach()).mean() - rbm.free_energy(z_negative.detach()).mean()
