"""The Ladder-VAE inference network (Sønderby et al. 2016) on a hierarchical generator.

Bottom-up, deterministic: ``d_1 = trunk(x)``, ``d_l = MLP(d_{l-1})``, and per layer an estimate
``(mu_hat_l, sigma_hat_l)`` from ``d_l``. Top-down, stochastic, sharing the generator's top-down
pass: the top layer is ``q(z_L | x) = N(mu_hat_L, sigma_hat_L^2)``; below it the bottom-up estimate is
merged with the generative conditional ``p(z_l | z_{>l}) = N(mu_p, sigma_p^2)`` by precision weighting,

    sigma_q^2 = 1 / (sigma_hat^-2 + sigma_p^-2),   mu_q = (mu_hat sigma_hat^-2 + mu_p sigma_p^-2) sigma_q^2,

and ``z_l = mu_q + sigma_q eps_l`` is drawn (reparameterised). The ELBO is computed with one KL per
layer, analytic given the layers above:

    ELBO = E_q[ log p(x | z) ] - sum_l E_q[ KL(q(z_l | z_{>l}, x) || p(z_l | z_{>l})) ]

The model must implement :class:`inferkit.HasLayerConditionals` (the ``ladder`` plugin does): the
conditionals live in the centered coordinates, and ``from_centered`` maps the sample to the latents
``log_joint`` takes (e.g. the whitened ones) with its log-Jacobian, so ``log_q`` is the density of
the latents the model sees. Options as LVAE users expect: KL warm-up (``beta`` from 0 to 1 linearly
over a fraction of the run) and free bits (each layer's batch-mean KL counted as at least ``free_bits``
nats). With both off (the default) the loss is exactly the negative ELBO.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.devices import module_placement
from inferkit.errors import UserError
from inferkit.interfaces import HasLayerConditionals, Inference, Model, Sampler
from inferkit.samplers.encoders import (
    GaussianHead,
    Trunk,
    check_encoder_options,
    gaussian_kl,
    gaussian_log_density,
    mask_input,
    require_built,
    shape_key,
)


def precision_weighted(mean_hat: Tensor, std_hat: Tensor, mean_p: Tensor, std_p: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two Gaussian estimates of one layer: the product ``N(mean_hat, std_hat^2) N(mean_p, std_p^2)``
    normalised, ``(mu_q, sigma_q)`` with ``sigma_q^-2 = std_hat^-2 + std_p^-2``."""
    precision_hat, precision_p = std_hat.pow(-2), std_p.pow(-2)
    variance = 1.0 / (precision_hat + precision_p)
    return (mean_hat * precision_hat + mean_p * precision_p) * variance, variance.sqrt()


class LadderVAE(Sampler):
    """Ladder-VAE encoder; options as :class:`~inferkit.samplers.vae.VAE` plus:

    Args:
        free_bits: nats per layer below which a layer's (batch-mean) KL is not penalised (0: off).
        kl_warmup: fraction of the training run over which the KL weight ``beta`` rises linearly from 0
            to 1 (0: off; needs the trainer's ``begin_iteration``, outside it ``beta = 1``).
    """


    def __init__(self, hidden: int = 256, depth: int = 1, nf: int = 32, encoder: str = "auto",
                 log_std_init: float = 0.0, free_bits: float = 0.0, kl_warmup: float = 0.0):
        super().__init__()
        check_encoder_options("lvae", hidden=hidden, depth=depth, nf=nf, encoder=encoder)
        if not (math.isfinite(free_bits) and free_bits >= 0):
            raise UserError(f"lvae: free_bits must be a number >= 0 (nats per layer), got {free_bits}")
        if not 0 <= kl_warmup <= 1:
            raise UserError(f"lvae: kl_warmup is a fraction of the run between 0 and 1, got {kl_warmup}")
        self.hidden, self.depth, self.nf, self.encoder_kind = hidden, depth, nf, encoder
        self.log_std_init = float(log_std_init)
        self.free_bits = float(free_bits)
        self.kl_warmup = float(kl_warmup)
        self.kl_weight = 1.0
        self.trunk: Trunk | None = None
        self.up: torch.nn.ModuleList | None = None
        self.heads: torch.nn.ModuleList | None = None
        self._built_for: tuple | None = None

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, depth={self.depth}, nf={self.nf}, encoder={self.encoder_kind!r}, "
                f"free_bits={self.free_bits}, kl_warmup={self.kl_warmup}")

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, model: Model, *, num_examples: int | None = None) -> None:
        """Check the model exposes its layer conditionals and build the bottom-up network (kept if
        already built for the same shapes)."""
        if not isinstance(model, HasLayerConditionals):
            raise UserError(f"lvae: model {type(model).__name__} does not expose its per-layer conditionals "
                            "p(z_l | z_{l+1}) (inferkit.HasLayerConditionals: layer_conditional and from_centered), "
                            "which the Ladder-VAE merges with its bottom-up pass; use --sampler vae, or a "
                            "hierarchical model such as ladder")
        key = shape_key(model)
        if self._built_for == key:
            return
        device, dtype = module_placement(model)
        self.trunk = Trunk(key[1], hidden=self.hidden, depth=self.depth, nf=self.nf, kind=self.encoder_kind)
        width = self.trunk.out_features
        self.up = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(width if i == 0 else self.hidden,
                                                                          self.hidden), torch.nn.GELU())
                                      for i in range(len(key[0]) - 1))
        self.heads = torch.nn.ModuleList(GaussianHead(width if l == 0 else self.hidden, shape, self.log_std_init)
                                         for l, shape in enumerate(key[0]))
        for part in (self.trunk, self.up, self.heads):
            part.to(device=device, dtype=dtype)
        self._built_for = key

    def begin_iteration(self, iteration: int, total: int) -> None:
        """KL warm-up: ``beta = min(1, t / (kl_warmup T))``."""
        span = self.kl_warmup * total
        self.kl_weight = 1.0 if span <= 0 else min(1.0, iteration / span)

    def _require_setup(self, model: Model) -> None:
        require_built("lvae", "inference network", self._built_for, model)

    # -- the two passes --------------------------------------------------------------------------
    def bottom_up(self, model: Model, x: Tensor, mask: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Deterministic pass: ``[(mu_hat_l, log sigma_hat_l)]`` per layer, bottom first."""
        self._require_setup(model)
        d = self.trunk(mask_input(x, mask))
        estimates = [self.heads[0](d)]
        for up, head in zip(self.up, self.heads[1:]):
            d = up(d)
            estimates.append(head(d))
        return estimates

    def infer(self, model: Model, x: Tensor, *, index: Tensor | None = None, mask: Tensor | None = None,
              generator: torch.Generator | None = None) -> Inference:
        """Bottom-up, then top-down with precision weighting; returns the model's latents (with their
        graph), ``log q`` of them, and in ``info["kl"]`` the per-layer KL terms ``[batch]`` (bottom first)."""
        estimates = self.bottom_up(model, x, mask)
        num_layers = len(estimates)
        centered: list[Tensor | None] = [None] * num_layers
        conditionals: list[tuple[Tensor, Tensor] | None] = [None] * num_layers
        kl: list[Tensor | None] = [None] * num_layers
        log_q = 0
        state = None
        for l in reversed(range(num_layers)):
            mean_p, std_p, state = model.layer_conditional(l, None if l == num_layers - 1 else centered[l + 1],
                                                           state)
            mean_hat, log_std_hat = estimates[l]
            if l == num_layers - 1:  # q(z_L | x): the bottom-up estimate itself
                mean_q, std_q = mean_hat, torch.exp(log_std_hat)
            else:
                mean_q, std_q = precision_weighted(mean_hat, torch.exp(log_std_hat), mean_p, std_p)
            eps = torch.randn(mean_q.shape, generator=generator, device=mean_q.device, dtype=mean_q.dtype)
            sample = mean_q + std_q * eps
            centered[l] = sample
            conditionals[l] = (mean_p, std_p)
            kl[l] = gaussian_kl(mean_q, std_q, mean_p.expand_as(mean_q), std_p.expand_as(std_q))
            log_q = log_q + gaussian_log_density(sample, mean_q, torch.log(std_q))
        latents, log_det = model.from_centered(tuple(centered), conditionals)
        # log q of the model's latents: the change of variables divides by |det d(latents)/dz|.
        return Inference(z=tuple(latents), log_q=log_q - log_det, info={"kl": tuple(kl)})

    # -- objective -------------------------------------------------------------------------------
    def log_likelihood(self, model: Model, x: Tensor, inference: Inference, mask: Tensor | None = None) -> Tensor:
        """``log p(x | z) = log p(x, z) - log p(z)`` per example (in any coordinates: the Jacobians cancel)."""
        return model.log_joint(x, inference.z, mask) - model.log_prior(inference.z)

    def elbo(self, model: Model, x: Tensor, inference: Inference, mask: Tensor | None = None) -> Tensor:
        """``log p(x | z) - sum_l KL_l`` per example: an unbiased estimate of the ELBO (same expectation
        as ``log p(x, z) - log q(z | x)``, with the KL terms in closed form)."""
        return self.log_likelihood(model, x, inference, mask) - torch.stack(inference.info["kl"]).sum(0)

    def loss(self, model: Model, x: Tensor, inference: Inference, mask: Tensor | None = None) -> Tensor:
        """``-mean log p(x | z) + beta sum_l max(free_bits, mean KL_l)``; the negative ELBO when
        ``beta = 1`` and ``free_bits = 0``."""
        reconstruction = self.log_likelihood(model, x, inference, mask).mean()
        penalty = 0
        for kl in inference.info["kl"]:
            mean_kl = kl.mean()
            penalty = penalty + (mean_kl.clamp(min=self.free_bits) if self.free_bits > 0 else mean_kl)
        return -reconstruction + self.kl_weight * penalty
