"""Amortized variational inference (Kingma and Welling 2014): a Gaussian encoder ``q_phi(z | x)``.

    q_phi(z | x) = prod_l N(z_l; mu_l(x), diag sigma_l(x)^2),   z = mu + sigma * eps,  eps ~ N(0, I)
    ELBO(x) = E_q[ log p_theta(x, z) - log q_phi(z | x) ] = log p_theta(x) - KL(q_phi || p_theta(z | x))

The encoder is built for any model from its ``latent_shapes`` and ``data_shape`` (a convolutional
trunk for images, an MLP otherwise, see :mod:`inferkit.samplers.encoders`), mean-field over the
model's own latent coordinates. ``loss`` is the negative ELBO (one reparameterised sample per
example), so one optimiser step trains the encoder and the generator together.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inferkit.devices import module_placement
from inferkit.interfaces import Inference, Model, Sampler
from inferkit.samplers.encoders import (
    GaussianHead,
    Trunk,
    check_encoder_options,
    gaussian_log_density,
    mask_input,
    require_built,
    shape_key,
)


class VAE(Sampler):
    """Amortized Gaussian encoder trained by the ELBO.

    Args:
        hidden: width of the encoder's hidden layers.
        depth: hidden layers of the MLP trunk (for images: Linear layers after the two convolutions).
            ``depth=0`` with ``encoder=mlp`` makes ``mu`` and ``log sigma`` linear in ``x``.
        nf: channels of the first convolution (images).
        encoder: ``auto`` (conv for ``[C, H, W]`` data, MLP otherwise), ``conv`` or ``mlp``.
        log_std_init: initial ``log sigma`` of q (bias of the head).

    Call :meth:`setup` (the trainer does) before use: it builds the encoder for the model.
    Inpainting: the encoder sees ``x`` with the hidden entries set to 0; the ELBO counts the observed ones.
    """


    def __init__(self, hidden: int = 256, depth: int = 1, nf: int = 32, encoder: str = "auto",
                 log_std_init: float = 0.0):
        super().__init__()
        check_encoder_options("vae", hidden=hidden, depth=depth, nf=nf, encoder=encoder)
        self.hidden, self.depth, self.nf, self.encoder_kind = hidden, depth, nf, encoder
        self.log_std_init = float(log_std_init)
        self.trunk: Trunk | None = None
        self.heads: torch.nn.ModuleList | None = None
        self._built_for: tuple | None = None

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, depth={self.depth}, nf={self.nf}, encoder={self.encoder_kind!r}"

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, model: Model, *, num_examples: int | None = None) -> None:
        """Build the encoder for ``model.latent_shapes`` and ``model.data_shape`` (kept if already
        built for the same shapes), on the model's device and dtype."""
        key = shape_key(model)
        if self._built_for == key:
            return
        device, dtype = module_placement(model)
        self.trunk = Trunk(key[1], hidden=self.hidden, depth=self.depth, nf=self.nf, kind=self.encoder_kind)
        self.heads = torch.nn.ModuleList(GaussianHead(self.trunk.out_features, shape, self.log_std_init)
                                         for shape in key[0])
        self.trunk.to(device=device, dtype=dtype)
        self.heads.to(device=device, dtype=dtype)
        self._built_for = key

    def _require_setup(self, model: Model) -> None:
        require_built("vae", "encoder", self._built_for, model)

    # -- q(z | x) --------------------------------------------------------------------------------
    def encode(self, model: Model, x: Tensor, mask: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """``[(mu_l(x), log sigma_l(x))]`` per latent layer, bottom first."""
        self._require_setup(model)
        features = self.trunk(mask_input(x, mask))
        return [head(features) for head in self.heads]

    def infer(self, model: Model, x: Tensor, *, index: Tensor | None = None, mask: Tensor | None = None,
              generator: torch.Generator | None = None) -> Inference:
        """One reparameterised draw ``z = mu(x) + sigma(x) eps`` per example, with ``log q(z | x)``
        (``z`` keeps its graph to the encoder)."""
        z, log_q = [], 0
        for mean, log_std in self.encode(model, x, mask):
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            sample = mean + torch.exp(log_std) * eps
            z.append(sample)
            log_q = log_q + gaussian_log_density(sample, mean, log_std)
        return Inference(z=tuple(z), log_q=log_q)

    def elbo(self, model: Model, x: Tensor, inference: Inference, mask: Tensor | None = None) -> Tensor:
        """``log p(x, z) - log q(z | x)`` per example at the inferred ``z``: an unbiased estimate of the
        ELBO, ``<= log p(x)`` in expectation, equal to it when ``q`` is the exact posterior."""
        return model.log_joint(x, inference.z, mask) - inference.log_q

    def loss(self, model: Model, x: Tensor, inference: Inference, mask: Tensor | None = None) -> Tensor:
        """The negative ELBO averaged over the batch (trains encoder and generator)."""
        return -self.elbo(model, x, inference, mask).mean()
