"""The amortized Bernoulli encoder ``q_phi(z | x)`` of the discrete-latent samplers (``vimco``, ``rws``).

    q_phi(z | x) = prod_i Bernoulli(z_i; sigmoid(E_phi(x))_i),   z in {0,1}^n

``E_phi`` is an MLP with ELU activations on the binarised, flattened ``x`` (the paper's MNIST inference
network 784-200-200-100-100-200 by default). During autoencoder pre-training the same ``E_phi(x)``
feeds the soft binarisation instead (:mod:`inferkit.samplers.pretrain`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from inferkit.errors import UserError


def check_widths(name: str, widths) -> tuple[int, ...]:
    """Positive integer layer widths, or a one-line :class:`UserError` naming the sampler."""
    widths = tuple(widths)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise UserError(f"{name}: hidden must be positive integer widths like 200,200,100,100, got {widths!r}")
    return widths


class BernoulliEncoder(nn.Module):
    """``E_phi``: binarised ``x`` ``[B, D]`` -> logits ``[B, n]`` (Linear -> ELU per hidden width, then Linear)."""

    def __init__(self, data_size: int, num_latents: int, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        width = data_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ELU()]
            width = h
        layers.append(nn.Linear(width, num_latents))
        self.net = nn.Sequential(*layers)

    def forward(self, x_binary: Tensor) -> Tensor:
        return self.net(x_binary)


def bernoulli_log_prob(z: Tensor, logits: Tensor) -> Tensor:
    """``log q(z | x) = sum_i [z_i log sigmoid(l_i) + (1 - z_i) log sigmoid(-l_i)]`` over the last dim
    (``logits`` broadcast against ``z``, e.g. ``[B, 1, n]`` against ``[B, K, n]``)."""
    return torch.distributions.Bernoulli(logits=logits, validate_args=False).log_prob(z).sum(-1)


def draw_bernoulli(logits: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """``num_samples`` draws ``z_k ~ q(z | x)`` per row: ``[B, n]`` logits -> ``[B, K, n]`` samples (detached)."""
    probs = torch.sigmoid(logits.detach()).unsqueeze(1).expand(-1, num_samples, -1)
    return torch.bernoulli(probs, generator=generator)
