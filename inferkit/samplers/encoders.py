"""Encoder networks shared by the amortized samplers (``vae``, ``lvae``).

A :class:`Trunk` maps ``x`` to features: a small convolutional network for images ``[C, H, W]``, an
MLP otherwise. A :class:`GaussianHead` maps features to the mean and log standard deviation of a
diagonal Gaussian over one latent layer, shaped like that layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from inferkit.errors import UserError

ENCODER_KINDS = ("auto", "conv", "mlp")


def check_encoder_options(name: str, *, hidden: int, depth: int, nf: int, encoder: str) -> None:
    """Validate the options every amortized sampler shares (a :class:`UserError` names the sampler)."""
    for option, value, minimum in (("hidden", hidden, 1), ("depth", depth, 0), ("nf", nf, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserError(f"{name}: {option} must be an integer >= {minimum}, got {value!r}")
    if encoder not in ENCODER_KINDS:
        raise UserError(f"{name}: encoder must be one of {', '.join(ENCODER_KINDS)}, got {encoder!r}")


def shape_key(model) -> tuple:
    """What an amortized network is built for: the model's latent shapes and data shape."""
    return (tuple(map(tuple, model.latent_shapes)), tuple(model.data_shape))


def require_built(sampler_name: str, network: str, built_for: tuple | None, model) -> None:
    """A :class:`UserError` when the sampler's network was not built (by ``setup``) for ``model``."""
    if built_for != shape_key(model):
        raise UserError(f"{sampler_name}: the {network} is not built for this model; call sampler.setup(model) "
                        "before inference (inferkit.train and the CLI do)")


def mask_input(x: Tensor, mask: Tensor | None) -> Tensor:
    """What an encoder sees: ``x`` with the hidden entries (mask 0) set to 0 (they may hold anything)."""
    if mask is None:
        return x
    return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


class Trunk(nn.Module):
    """Features of ``x``.

    ``conv`` (images ``[C, H, W]``): Conv2d(C, nf, 4, 2, 1) -> GELU -> Conv2d(nf, 2 nf, 4, 2, 1) -> GELU
    -> flatten -> Linear(., hidden) -> GELU, then ``depth - 1`` more Linear(hidden, hidden) -> GELU.
    ``mlp``: flatten, then ``depth`` times Linear -> GELU (``depth = 0``: the flattened ``x`` itself,
    so a head on it is linear in ``x``).
    """

    def __init__(self, data_shape: tuple[int, ...], *, hidden: int, depth: int, nf: int, kind: str = "auto"):
        super().__init__()
        data_shape = tuple(int(s) for s in data_shape)
        if kind == "auto":
            kind = "conv" if len(data_shape) == 3 and min(data_shape[1:]) >= 4 else "mlp"
        if kind == "conv" and len(data_shape) != 3:
            raise UserError(f"encoder=conv needs image data [C, H, W], got data of shape {data_shape}; "
                            "use encoder=mlp")
        self.kind = kind
        layers: list[nn.Module] = []
        if kind == "conv":
            conv = nn.Sequential(nn.Conv2d(data_shape[0], nf, 4, 2, 1), nn.GELU(),
                                 nn.Conv2d(nf, 2 * nf, 4, 2, 1), nn.GELU(), nn.Flatten(-3))
            with torch.no_grad():
                flat = conv(torch.zeros(1, *data_shape)).shape[-1]
            layers += [conv, nn.Linear(flat, hidden), nn.GELU()]
            width, remaining = hidden, max(depth - 1, 0)
        else:
            layers.append(nn.Flatten(-len(data_shape)) if data_shape else nn.Identity())
            width, remaining = math.prod(data_shape), depth
        for _ in range(remaining):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GaussianHead(nn.Module):
    """``(mu, log sigma)`` of ``N(mu, diag sigma^2)`` over one latent layer of shape ``shape``:
    one Linear to ``2 prod(shape)`` numbers, split and reshaped. The log-std starts near ``log_std_init``."""

    def __init__(self, in_features: int, shape: tuple[int, ...], log_std_init: float = 0.0):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.size = math.prod(self.shape)
        self.linear = nn.Linear(in_features, 2 * self.size)
        with torch.no_grad():
            self.linear.bias[self.size:].fill_(log_std_init)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.linear(h).split(self.size, dim=-1)
        batch = h.shape[:-1]
        return mean.reshape(*batch, *self.shape), log_std.reshape(*batch, *self.shape)


def gaussian_log_density(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``sum log N(z; mean, exp(log_std)^2)`` over every dimension but the first (batch)."""
    per_unit = -0.5 * ((z - mean) * torch.exp(-log_std)).square() - log_std - 0.5 * math.log(2 * math.pi)
    return per_unit.flatten(1).sum(1)


def gaussian_kl(mean_q: Tensor, std_q: Tensor, mean_p: Tensor, std_p: Tensor) -> Tensor:
    """``KL(N(mean_q, std_q^2) || N(mean_p, std_p^2))`` of diagonal Gaussians, summed over every
    dimension but the first: ``sum log(std_p/std_q) + (std_q^2 + (mean_q - mean_p)^2) / (2 std_p^2) - 1/2``."""
    per_unit = (torch.log(std_p) - torch.log(std_q)
                + (std_q.square() + (mean_q - mean_p).square()) / (2 * std_p.square()) - 0.5)
    return per_unit.flatten(1).sum(1)
