"""The papers' multi-layer top-down generator (appendix 8.1, Table 4), as the authors built it.

Latents ``z = (z_1, ..., z_L)``, bottom first, ``z_L ~ N(0, I)``. For l = L-1..0::

    h_d^(l) = d_l(p_l(z_{l+1})) + h_d^(l+1)        (no skip term at the top, l = L-1)
    z_l = mu_l(h_d^(l)) + sigma_l(h_d^(l)) * eps_l,  eps_l ~ N(0, I)      for l >= 1
    x   ~ N(g(h_d^(0)), observation_sigma^2 I),   g = tanh(o_0(.)) (see ``o_0`` below)

on feature maps ``[nf, r, r]``, ``r = image_size / 2`` (Table 4: nf = 64, r = 16 for 32 x 32 images).
The blocks follow the authors' code (``train_celeba_five_layers.py`` of enijkamp/short_run_inf:
``Projection``, ``Deterministic``, ``Stochastic``, ``G``), which fills in what the paper's text
leaves open:

* ``p_l(z) = gelu(convT_5x5(gelu(Linear(z)) reshaped to [c, r, r]))``: a linear layer to
  ``c r^2`` units (c = ``projection_channels``, the code's ``coef`` = 4), GELU, reshape, a stride-1
  5x5 transposed convolution (no bias) to ``nf`` maps, GELU;
* ``d_l(h) = h + gelu(conv_3x3(gelu(conv_5x5(h))))``: "two subsequent conv2d layers with GeLU
  activation functions and skip connection" (the text), kernels 5 then 3 (the code);
* ``mu_l(h) = Linear(gelu(conv_5x5(h)))`` and ``sigma_l`` the same pair: an unpadded 5x5
  convolution to ``d_l`` maps (``r - 4`` pixels a side: 12 x 12 in the code; maps under 5 pixels
  are padded by one), GELU, a linear layer to ``d_l``. The code reads the ``sigma_l`` head ``v`` as a
  log-variance: ``sigma_l = exp(0.5 * clamp(softplus(v) + 1e-8, 0, 10))`` (``sigma_head="log-variance"``,
  so ``1 <= sigma_l <= e^5``); ``sigma_head="softplus"`` is inferkit's alternative
  ``sigma_l = softplus(v) + min_sigma``, which lets ``sigma_l`` fall below 1;
* ``o_0``: a 4x4 stride-2 transposed convolution to the image, then ``tanh``. The code applies one
  more ``d`` block first, ``tanh(o_0(d_extra(h_d^(0))))`` (``output_block="residual"``, the
  default); Table 4 and the text have ``x = tanh(o_0(z_{1,d}))`` (``output_block="deconv"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inferkit.errors import UserError
from inferkit.interfaces import Latents, Model, SimulatesObservations
from inferkit_ladder.config import Features, LadderConfig, check_positive_float

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
HEAD_KERNEL = 5
LOG_VARIANCE_MAX = 10.0  # the code clamps the log-variance to [0, 10]
LOG_VARIANCE_EPS = 1e-8  # ... after adding this to its softplus


class Projection(nn.Module):
    """``p_l``: Linear ``d_{l+1} -> c r^2``, GELU, reshape ``[c, r, r]``, 5x5 stride-1 ConvTranspose2d
    (no bias) to ``[nf, r, r]``, GELU."""

    def __init__(self, in_dim: int, nf: int, resolution: int, channels: int) -> None:
        super().__init__()
        self.shape = (channels, resolution, resolution)
        self.linear = nn.Linear(in_dim, channels * resolution * resolution)
        self.up = nn.ConvTranspose2d(channels, nf, 5, 1, 2, bias=False)

    def forward(self, z: Tensor) -> Tensor:
        return F.gelu(self.up(F.gelu(self.linear(z)).unflatten(-1, self.shape)))


class Residual(nn.Module):
    """``d_l(h) = h + gelu(conv_3x3(gelu(conv_5x5(h))))`` (padded: maps keep their size)."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 5, 1, 2)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, h: Tensor) -> Tensor:
        return h + F.gelu(self.conv2(F.gelu(self.conv1(h))))


def head_padding(resolution: int) -> int:
    """Padding of a head's 5x5 convolution: none (the code), or one pixel on maps under 5 pixels."""
    return 0 if resolution >= HEAD_KERNEL else 1


class Head(nn.Module):
    """``mu_l`` or the raw ``sigma_l`` head: unpadded 5x5 Conv2d ``nf -> d_l`` maps, GELU, Linear to ``d_l``."""

    def __init__(self, nf: int, resolution: int, out_dim: int) -> None:
        super().__init__()
        pad = head_padding(resolution)
        side = resolution + 2 * pad - HEAD_KERNEL + 1
        self.conv = nn.Conv2d(nf, out_dim, HEAD_KERNEL, 1, pad)
        self.linear = nn.Linear(out_dim * side * side, out_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(F.gelu(self.conv(h)).flatten(-3))


def log_variance_sigma(v: Tensor) -> Tensor:
    """The code's ``sigma = exp(0.5 * clamp(softplus(v) + 1e-8, 0, 10))``."""
    return torch.exp(0.5 * (F.softplus(v) + LOG_VARIANCE_EPS).clamp(0.0, LOG_VARIANCE_MAX))


@dataclass
class TopDown:
    """Result of one top-down pass.

    ``z``: centered latents z_1..z_L; ``mu``/``sigma``: conditionals of z_1..z_{L-1}
    (bottom first); ``x_mean``: decoded mean (``None`` when not decoded).
    """

    z: list[Tensor]
    mu: list[Tensor]
    sigma: list[Tensor]
    x_mean: Tensor | None


def _std_normal_logpdf(eps: Tensor) -> Tensor:
    """``sum log N(eps; 0, I)`` over the last dimension."""
    return -0.5 * eps.square().sum(-1) - eps.shape[-1] * _HALF_LOG_2PI


def _whitened_log_prior(eps: Sequence[Tensor]) -> Tensor:
    """``sum_l log N(eps_l; 0, I)``."""
    out = _std_normal_logpdf(eps[-1])
    for e in eps[:-1]:
        out = out + _std_normal_logpdf(e)
    return out


class LadderModel(Model, SimulatesObservations):
    """Multi-layer generator ``p(x, z) = p(z_L) prod_{l=1}^{L-1} p(z_l | z_{l+1}) p(x | z_1)``.

    ``parameterization="whitened"`` (the default, and the authors' choice: their code infers the
    noise ``eps_l`` under ``N(0, I)`` and computes ``z_L = eps_L``, ``z_l = mu_l + sigma_l * eps_l``
    top-down): the latents are the ``eps_l``. ``parameterization="centered"``: the latents are the
    ``z_l`` themselves, with ``log p(z) = log N(z_L; 0, I) + sum_l log N(z_l; mu_l, sigma_l^2)``
    (same ``p(x)``). The options are those of :class:`~inferkit_ladder.LadderConfig`.
    """

    def __init__(
        self,
        *,
        num_layers: int = 3,
        latent_dims: tuple[int, ...] = (),
        nf: Features = 12,
        image_size: int = 32,
        channels: int = 3,
        observation_sigma: float = 0.3,
        parameterization: str = "whitened",
        min_sigma: float = 1e-2,
        projection_channels: int = 4,
        sigma_head: str = "log-variance",
        output_block: str = "residual",
    ) -> None:
        super().__init__()
        cfg = LadderConfig(
            num_layers=num_layers, latent_dims=latent_dims, nf=nf, image_size=image_size, channels=channels,
            observation_sigma=observation_sigma, parameterization=parameterization, min_sigma=min_sigma,
            projection_channels=projection_channels, sigma_head=sigma_head, output_block=output_block,
        )
        self.config = cfg
        self.latent_shapes = tuple((d,) for d in cfg.latent_dims)
        self.data_shape = (cfg.channels, cfg.image_size, cfg.image_size)
        self.whitened = cfg.parameterization == "whitened"
        self.min_sigma = cfg.min_sigma
        L, dims, nf, r = cfg.num_layers, cfg.latent_dims, cfg.nf, cfg.image_size // 2
        # proj[l] = p_l and det[l] = d_l consume z_{l+1} = dims[l]; l = 0..L-1.
        self.proj = nn.ModuleList(Projection(dims[l], nf, r, cfg.projection_channels) for l in range(L))
        self.det = nn.ModuleList(Residual(nf) for _ in range(L))
        # mu[l-1], sigma[l-1] = mu_l, sigma_l for l = 1..L-1 (output dim d_l = dims[l-1]).
        self.mu = nn.ModuleList(Head(nf, r, dims[l - 1]) for l in range(1, L))
        self.sigma = nn.ModuleList(Head(nf, r, dims[l - 1]) for l in range(1, L))
        self.final = Residual(nf) if cfg.output_block == "residual" else nn.Identity()  # the code's extra d
        self.out = nn.ConvTranspose2d(nf, cfg.channels, 4, 2, 1)  # o_0
        if cfg.sigma_head == "softplus":  # start with sigma_l ~= 1: softplus(b) + min_sigma = 1
            target = max(1.0 - cfg.min_sigma, 1e-3)
            with torch.no_grad():
                for head in self.sigma:
                    head.linear.bias.fill_(math.log(math.expm1(target)))
        self.register_buffer("_observation_sigma", torch.tensor(cfg.observation_sigma))

    @classmethod
    def from_config(cls, config: LadderConfig) -> LadderModel:
        """Build a model from a :class:`LadderConfig`."""
        return cls(**{k: getattr(config, k) for k in config.to_dict()})

    @staticmethod
    def options_for_data(data_shape: tuple[int, ...]) -> dict[str, int]:
        """Image options that fit data of shape ``(C, H, W)`` (the trainer's hook)."""
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            return {}
        return {"channels": int(data_shape[0]), "image_size": int(data_shape[1])}

    # -- observation noise ------------------------------------------------------------
    @property
    def observation_sigma(self) -> float:
        """Current observation noise sigma of ``p(x | z) = N(x; decode(z), sigma^2 I)``."""
        return float(self._observation_sigma)

    def set_observation_sigma(self, sigma: float) -> None:
        """Set sigma (the trainer anneals it); kept in ``state_dict``."""
        value = check_positive_float("observation_sigma", sigma)
        with torch.no_grad():
            self._observation_sigma.fill_(value)

    def sample_observation(self, z: Latents, *, generator: torch.Generator | None = None) -> Tensor:
        """``x = decode(z) + observation_sigma * eps``, ``eps ~ N(0, I)``: a draw of ``p(x | z)``."""
        mean = self.decode(z)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + self._observation_sigma.to(mean.dtype) * noise

    # -- building blocks of the top-down pass -------------------------------------------
    def top_down_step(self, l: int, z_above: Tensor, h_above: Tensor | None = None) -> Tensor:
        """``h_d^(l) = d_l(p_l(z_{l+1})) + h_d^(l+1)`` (``h_above=None`` at the top)."""
        h = self.det[l](self.proj[l](z_above))
        return h if h_above is None else h + h_above

    def head(self, l: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu_l(h), sigma_l(h))`` for 1 <= l <= L-1: ``sigma = exp(0.5 clamp(softplus(v) + 1e-8, 0, 10))``
        (``sigma_head="log-variance"``) or ``softplus(v) + min_sigma`` (``"softplus"``)."""
        v = self.sigma[l - 1](h)
        if self.config.sigma_head == "softplus":
            return self.mu[l - 1](h), F.softplus(v) + self.min_sigma
        return self.mu[l - 1](h), log_variance_sigma(v)

    def output(self, h: Tensor) -> Tensor:
        """Decoded mean ``tanh(o_0(d_extra(h_d^(0))))`` (``output_block="residual"``) or
        ``tanh(o_0(h_d^(0)))`` (``"deconv"``)."""
        return torch.tanh(self.out(self.final(h)))

    def _top_down(self, values: Sequence[Tensor], *, whitened: bool, decode: bool) -> TopDown:
        """One top-down pass over ``values`` (centered z, or whitened eps if ``whitened``).

        Computes ``h_d^(l)`` for l = L-1..1 (..0 if ``decode``), the conditionals
        ``mu_l, sigma_l`` of z_1..z_{L-1}, the centered ``z_l`` (``mu_l + sigma_l eps_l``
        when whitened) and, if ``decode``, the decoded mean (:meth:`output`).
        """
        L = self.config.num_layers
        z: list[Tensor] = list(values)  # z_L = eps_L in both parameterizations
        mus: list[Tensor] = []
        sigmas: list[Tensor] = []
        h: Tensor | None = None
        for l in range(L - 1, -1 if decode else 0, -1):
            h = self.top_down_step(l, z[l], h)
            if l >= 1:
                mu, sigma = self.head(l, h)
                mus.append(mu)
                sigmas.append(sigma)
                if whitened:
                    z[l - 1] = mu + sigma * values[l - 1]
        x_mean = self.output(h) if decode else None
        return TopDown(z=z, mu=mus[::-1], sigma=sigmas[::-1], x_mean=x_mean)

    @staticmethod
    def _centered_log_prior(z: Sequence[Tensor], mus: list[Tensor], sigmas: list[Tensor]) -> Tensor:
        """``log N(z_L; 0, I) + sum_{l<L} log N(z_l; mu_l, sigma_l^2)``."""
        out = _std_normal_logpdf(z[-1])
        for zl, mu, sigma in zip(z, mus, sigmas):
            out = out + _std_normal_logpdf((zl - mu) / sigma) - sigma.log().sum(-1)
        return out

    def _log_likelihood(self, x: Tensor, mean: Tensor, mask: Tensor | None) -> Tensor:
        """``sum_pixels mask * log N(x; mean, sigma^2)`` (all pixels if ``mask`` is None)."""
        sigma = self._observation_sigma
        diff = x - mean
        if mask is None:
            count = float(math.prod(self.data_shape))
            sq = diff.square().sum((-3, -2, -1))
        else:
            try:
                fits = torch.broadcast_shapes(mask.shape, diff.shape) == diff.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise UserError(
                    f"ladder: mask of shape {tuple(mask.shape)} does not broadcast to x of shape "
                    f"{tuple(diff.shape)}; give a mask shaped like x (1 = observed, 0 = hidden)"
                )
            weight = mask.to(diff.dtype)
            # Hidden pixels may hold anything (even NaN): zero their residual first.
            diff = torch.where(weight != 0, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
            sq = (weight * diff.square()).sum((-3, -2, -1))
            count = torch.broadcast_to(weight, diff.shape).sum((-3, -2, -1))
        return -0.5 * sq / sigma.square() - count * (sigma.log() + _HALF_LOG_2PI)

    # -- input checks (shapes only: safe under torch.func transforms) --------------------
    def _check_latents(self, z: Sequence[Tensor]) -> None:
        if isinstance(z, Tensor) or len(z) != len(self.latent_shapes):
            got = "a single tensor" if isinstance(z, Tensor) else f"{len(z)} tensors"
            raise UserError(
                f"ladder: expected {len(self.latent_shapes)} latent tensors (one per layer, bottom first), "
                f"got {got}; pass a tuple like model.sample_prior(n) returns"
            )
        for l, (zl, shape) in enumerate(zip(z, self.latent_shapes), start=1):
            if zl.dim() < 1 or tuple(zl.shape[-1:]) != shape:
                raise UserError(
                    f"ladder: latent z_{l} has shape {tuple(zl.shape)} but layer {l} has dimension {shape[0]}; "
                    f"give tensors shaped [batch, {shape[0]}]"
                )

    def _check_x(self, x: Tensor) -> None:
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.data_shape:
            raise UserError(
                f"ladder: x has shape {tuple(x.shape)} but the model expects [batch, "
                f"{', '.join(map(str, self.data_shape))}]; set image_size/channels to match the data"
            )

    def _randn(self, n: int, dim: int, generator: torch.Generator | None) -> Tensor:
        ref = self.out.weight
        if generator is not None and generator.device != ref.device:
            return torch.randn(n, dim, generator=generator, device=generator.device, dtype=ref.dtype).to(ref.device)
        return torch.randn(n, dim, generator=generator, device=ref.device, dtype=ref.dtype)

    # -- the Model interface -----------------------------------------------------------
    def sample_prior(self, n: int, *, generator: torch.Generator | None = None) -> Latents:
        """Draw ``z ~ p(z)`` (no autograd graph): whitened ``eps_l ~ N(0, I)``; centered
        ancestral ``z_L = eps_L``, ``z_l = mu_l(h_d^(l)) + sigma_l(h_d^(l)) eps_l``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"ladder: number of samples must be a non-negative integer, got {n!r}")
        eps = [self._randn(n, shape[0], generator) for shape in self.latent_shapes]
        if self.whitened:
            return tuple(eps)
        with torch.no_grad():
            return tuple(self._top_down(eps, whitened=True, decode=False).z)

    def log_prior(self, z: Latents) -> Tensor:
        """``log p(z)`` per example: whitened ``sum_l log N(eps_l; 0, I)``; centered
        ``log N(z_L; 0, I) + sum_{l=1}^{L-1} log N(z_l; mu_l, sigma_l^2)``."""
        self._check_latents(z)
        if self.whitened:
            return _whitened_log_prior(z)
        td = self._top_down(z, whitened=False, decode=False)
        return self._centered_log_prior(z, td.mu, td.sigma)

    def log_joint(self, x: Tensor, z: Latents, mask: Tensor | None = None) -> Tensor:
        """``log p(z) + sum_pixels mask * log N(x; decode(z), observation_sigma^2)`` per
        example, constants included, from ONE top-down pass."""
        self._check_latents(z)
        self._check_x(x)
        td = self._top_down(z, whitened=self.whitened, decode=True)
        if self.whitened:
            prior = _whitened_log_prior(z)
        else:
            prior = self._centered_log_prior(z, td.mu, td.sigma)
        return prior + self._log_likelihood(x, td.x_mean, mask)

    def decode(self, z: Latents) -> Tensor:
        """Mean of ``p(x | z)`` (:meth:`output` of ``h_d^(0)``), shape ``[batch, C, H, W]``."""
        self._check_latents(z)
        return self._top_down(z, whitened=self.whitened, decode=True).x_mean

    # -- extras (Ladder-VAE, reparameterisation) -----------------------------------------
    def conditionals(self, z: Latents) -> list[tuple[Tensor, Tensor]]:
        """``[(mu_l, sigma_l)]`` of ``p(z_l | z_{l+1})`` for l = 1..L, bottom first, from
        CENTERED ``z`` (whatever the parameterization); the top entry is ``(0, 1)``."""
        self._check_latents(z)
        td = self._top_down(z, whitened=False, decode=False)
        top = z[-1]
        return list(zip(td.mu, td.sigma)) + [(torch.zeros_like(top), torch.ones_like(top))]

    # -- inferkit.HasLayerConditionals (the Ladder-VAE's top-down pass) -------------------
    def layer_conditional(self, layer: int, z_above: Tensor | None, state: Tensor | None = None
                          ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(mu, sigma, h)`` of ``p(z_{layer+1} | z_{>layer+1})`` for the 0-based ``layer``, walked
        top-down: the top (``layer = L-1``) is ``N(0, I)`` (shape ``[1, d_L]``); below it
        ``h_d^(l) = d_l(p_l(z_{l+1})) + h_d^(l+1)``, ``mu_l = mu_l(h_d^(l))``,
        ``sigma_l = sigma_l(h_d^(l))`` with ``z_{l+1}`` = ``z_above`` CENTERED and
        ``h_d^(l+1)`` = ``state``."""
        L = self.config.num_layers
        if not 0 <= layer < L:
            raise UserError(f"ladder: layer {layer} does not exist; layers are 0..{L - 1} (bottom first)")
        if layer == L - 1:
            ref = self.out.weight
            zeros = torch.zeros(1, *self.latent_shapes[-1], device=ref.device, dtype=ref.dtype)
            return zeros, torch.ones_like(zeros), None
        if z_above is None:
            raise UserError("ladder: layer_conditional below the top needs the centered sample of the layer above")
        h = self.top_down_step(layer + 1, z_above, state)
        mu, sigma = self.head(layer + 1, h)
        return mu, sigma, h

    def from_centered(self, z: Latents, conditionals: list[tuple[Tensor, Tensor]]) -> tuple[Latents, Tensor]:
        """The model's latents for centered ``z`` and ``log|det d(latents)/dz|`` per example: the
        identity (0) when centered; ``eps_l = (z_l - mu_l) / sigma_l`` (``eps_L = z_L``) with
        ``-sum_l sum log sigma_l`` when whitened (the Jacobian is triangular)."""
        self._check_latents(z)
        if not self.whitened:
            return tuple(z), torch.zeros(z[0].shape[0], dtype=z[0].dtype, device=z[0].device)
        eps = tuple((zl - mu) / sigma for zl, (mu, sigma) in zip(z, conditionals))
        log_det = torch.zeros(z[0].shape[0], dtype=z[0].dtype, device=z[0].device)
        for zl, (_, sigma) in zip(z, conditionals):
            log_det = log_det - sigma.log().expand_as(zl).sum(-1)
        return eps, log_det

    def whiten(self, z: Latents) -> Latents:
        """Centered to whitened: ``eps_l = (z_l - mu_l) / sigma_l``, ``eps_L = z_L``."""
        self._check_latents(z)
        td = self._top_down(z, whitened=False, decode=False)
        return tuple((zl - mu) / s for zl, mu, s in zip(z, td.mu, td.sigma)) + (z[-1],)

    def center(self, eps: Latents) -> Latents:
        """Whitened to centered: ``z_L = eps_L``, ``z_l = mu_l + sigma_l eps_l`` top-down."""
        self._check_latents(eps)
        return tuple(self._top_down(eps, whitened=True, decode=False).z)
