"""A binary restricted Boltzmann machine (RBM) over visible units z in {0,1}^n and hidden h in {0,1}^m.

    E(z, h) = -a'z - b'h - z'W h
    F(z)    = -log sum_h exp(-E(z, h)) = -a'z - sum_j softplus(b_j + (z'W)_j)      (free energy of z)
    F_h(h)  = -log sum_z exp(-E(z, h)) = -b'h - sum_i softplus(a_i + (W h)_i)      (free energy of h)
    p(z)    = exp(-F(z)) / Z,     Z = sum_z exp(-F(z)) = sum_h exp(-F_h(h))
    p(h_j = 1 | z) = sigmoid(b_j + (z'W)_j),      p(z_i = 1 | h) = sigmoid(a_i + (W h)_i)

``Z`` is intractable for large n and m; :meth:`RBM.log_partition_exact` enumerates the smaller side
(at most :data:`MAX_ENUMERATED_UNITS` units), :mod:`inferkit.eval.rbm` estimates it by AIS otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inferkit.errors import UserError

MAX_ENUMERATED_UNITS = 20
"""Largest side :meth:`RBM.log_partition_exact` enumerates (2^20 configurations)."""


def all_binary_vectors(n: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Every vector of ``{0,1}^n``, shape ``[2^n, n]`` (row r is the binary expansion of r, bit 0 first)."""
    codes = torch.arange(2 ** n, device=device)
    bits = torch.arange(n, device=device)
    return ((codes[:, None] >> bits) & 1).to(dtype)


class RBM(nn.Module):
    """RBM parameters ``a`` (visible bias, n), ``b`` (hidden bias, m) and ``W`` (n x m), with its
    energy, free energies, conditionals and exact ``log Z`` for small sides."""

    def __init__(self, num_visible: int, num_hidden: int, init_scale: float = 0.01):
        super().__init__()
        self.num_visible, self.num_hidden = int(num_visible), int(num_hidden)
        self.visible_bias = nn.Parameter(torch.zeros(self.num_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(self.num_hidden))
        self.weight = nn.Parameter(init_scale * torch.randn(self.num_visible, self.num_hidden))

    def extra_repr(self) -> str:
        return f"num_visible={self.num_visible}, num_hidden={self.num_hidden}"

    def energy(self, z: Tensor, h: Tensor) -> Tensor:
        """``E(z, h) = -a'z - b'h - z'W h`` over the last dimension."""
        return -(z @ self.visible_bias) - (h @ self.hidden_bias) - ((z @ self.weight) * h).sum(-1)

    def free_energy(self, z: Tensor) -> Tensor:
        """``F(z) = -a'z - sum_j softplus(b_j + (z'W)_j)``, so ``p(z) = exp(-F(z)) / Z``."""
        return -(z @ self.visible_bias) - F.softplus(z @ self.weight + self.hidden_bias).sum(-1)

    def free_energy_hidden(self, h: Tensor) -> Tensor:
        """``F_h(h) = -b'h - sum_i softplus(a_i + (W h)_i)``, so ``p(h) = exp(-F_h(h)) / Z``."""
        return -(h @ self.hidden_bias) - F.softplus(h @ self.weight.T + self.visible_bias).sum(-1)

    def hidden_probs(self, z: Tensor) -> Tensor:
        """``p(h_j = 1 | z) = sigmoid(b_j + (z'W)_j)``."""
        return torch.sigmoid(z @ self.weight + self.hidden_bias)

    def visible_probs(self, h: Tensor) -> Tensor:
        """``p(z_i = 1 | h) = sigmoid(a_i + (W h)_i)``."""
        return torch.sigmoid(h @ self.weight.T + self.visible_bias)

    def log_partition_exact(self) -> Tensor:
        """``log Z = logsumexp_z -F(z)`` (or ``logsumexp_h -F_h(h)``), enumerating the smaller side.

        Refuses (:class:`UserError`) when both sides exceed :data:`MAX_ENUMERATED_UNITS` units."""
        smaller = min(self.num_visible, self.num_hidden)
        if smaller > MAX_ENUMERATED_UNITS:
            raise UserError(f"exact log Z enumerates 2^{smaller} states, more than 2^{MAX_ENUMERATED_UNITS}; "
                            "estimate it with AIS (inferkit.eval.rbm.ais_log_partition) instead")
        device, dtype = self.weight.device, self.weight.dtype
        if self.num_visible <= self.num_hidden:
            states = all_binary_vectors(self.num_visible, dtype=dtype, device=device)
            return torch.logsumexp(-self.free_energy(states), 0)
        states = all_binary_vectors(self.num_hidden, dtype=dtype, device=device)
        return torch.logsumexp(-self.free_energy_hidden(states), 0)
