"""Block Gibbs sampling for an :class:`~inferkit.models.rbm.RBM`, and persistent chains (PCD).

One sweep draws ``h ~ p(h | z) = prod_j Bernoulli(sigmoid(b_j + (z'W)_j))`` and then
``z' ~ p(z | h) = prod_i Bernoulli(sigmoid(a_i + (W h)_i))``; the sweep leaves ``p(z)`` invariant and is
reversible with respect to it. Persistent chains (Tieleman 2008) keep their state between parameter
updates and give the negative-phase samples ``z^- ~ M`` of the RBM gradient (the paper's eq. 5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sample_hidden(rbm, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``h ~ p(h | z)``, factorised Bernoulli."""
    return torch.bernoulli(rbm.hidden_probs(z), generator=generator)


def sample_visible(rbm, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``z ~ p(z | h)``, factorised Bernoulli."""
    return torch.bernoulli(rbm.visible_probs(h), generator=generator)


@torch.no_grad()
def gibbs_sweeps(rbm, z: Tensor, num_sweeps: int, generator: torch.Generator | None = None) -> Tensor:
    """``num_sweeps`` block-Gibbs sweeps ``z -> h -> z'`` from ``z`` (detached result)."""
    for _ in range(num_sweeps):
        z = sample_visible(rbm, sample_hidden(rbm, z, generator), generator)
    return z


class PersistentChains(nn.Module):
    """``num_chains`` persistent Gibbs chains over ``num_visible`` units, kept in ``state_dict`` (buffer
    ``state``) so a checkpoint resumes them. They start from independent Bernoulli(1/2) draws."""

    def __init__(self, num_chains: int, num_visible: int, *, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("state", torch.bernoulli(torch.full((num_chains, num_visible), 0.5),
                                                      generator=generator))

    def advance(self, rbm, num_sweeps: int, generator: torch.Generator | None = None) -> Tensor:
        """Run every chain ``num_sweeps`` sweeps under the current RBM, store and return the new states."""
        state = gibbs_sweeps(rbm, self.state.to(rbm.weight.dtype), num_sweeps, generator)
        self.state.copy_(state)
        return state.clone()
