"""``rbm-prior``: binary latents under an RBM prior with a deep decoder (the paper's model, sec. 3).

    p(z) = exp(-F(z)) / Z,    F(z) = -a'z - sum_j softplus(b_j + (z'W)_j),     z in {0,1}^n
    p(x | z) = prod_d Bernoulli(x_d; sigmoid(g_theta(z))_d)                     x binarised

``g_theta`` is an MLP with ELU activations (``decoder_hidden`` widths, the paper's 200-100-100-200-200
reversed encoder by default). ``Z`` is unknown, so the model is an unnormalised one
(:class:`~inferkit.interfaces.RBMPriorModel`): :meth:`log_joint` returns
``log p*(x, z) = -F(z) + log p(x | z) = log p(x, z) + log Z`` (the paper's eq. 4), exact up to the
additive constant ``log Z``; :mod:`inferkit.eval.rbm` estimates ``log Z`` (AIS) and ``log p(x)``.

``x`` is read as binary: pixel ``d`` is ``b_d = 1[x_d > (low + high) / 2]`` (the midpoint of
``pixel_range``, 0 for inferkit's ``[-1, 1]`` images). ``binarize`` says what ``b`` is:

* ``"bernoulli"`` (default, the paper's statically binarised MNIST): ``x`` arrives binarised by a
  fixed-seed draw ``b_d ~ Bernoulli(u_d)`` of the grey levels ``u``, made once per data set
  (``--data binarized-mnist``, :mod:`inferkit.data.binarized_mnist`), so each pixel is ``low`` or
  ``high`` and the midpoint test reads ``b`` back exactly. Grey levels are refused (one-line
  :class:`~inferkit.errors.UserError`): the draw belongs to the data, where it is fixed per image
  across iterations and runs, not to the likelihood, which never sees which data set row it scores.
* ``"threshold"``: ``b_d = 1[u_d > 1/2]`` of grey-level data (e.g. ``--data mnist``), a deterministic
  binarisation with about 45 nats per MNIST image less pixel noise; its NLLs are not the paper's.

:meth:`decode` returns the mean of the binary pixel in data units, ``low + (high - low) sigmoid(g(z))``,
so reconstruction errors and image grids are on the data's scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from inferkit.errors import UserError
from inferkit.interfaces import Latents, RBMPriorModel, SGDGroup
from inferkit.models.gibbs import gibbs_sweeps
from inferkit.models.rbm import RBM

BINARIZATIONS = ("bernoulli", "threshold")
RBM_OPTIMIZERS = ("sgd", "adam")
RBM_LEARNING_RATE = 0.01
"""eta' of the RBM's SGD (the paper uses SGD with decay for the RBM and states no rate; a choice)."""


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"rbm-prior: {name} must be an integer >= {minimum}, got {value!r}")
    return value


class RBMPrior(RBMPriorModel):
    """Binary latents ``z`` (``num_latents``) under an RBM with ``num_hidden`` hidden units, and an
    ELU MLP decoder giving Bernoulli means for the binarised ``x`` (see the module docstring).

    Args:
        num_latents: n, the RBM's visible units (the paper: 200 on MNIST).
        num_hidden: m, the RBM's hidden units (the paper: 400).
        decoder_hidden: widths of the decoder's hidden layers, from ``z`` up.
        data_shape: shape of one ``x`` (taken from the data set by ``options_for_data``).
        pixel_range: ``(low, high)`` of the data; pixels above ``(low + high) / 2`` are 1.
        gibbs_steps: block-Gibbs sweeps :meth:`sample_prior` runs from uniform random states.
        binarize: ``"bernoulli"`` (data statically binarised by a Bernoulli draw; grey levels refused)
            or ``"threshold"`` (grey levels thresholded at the midpoint); see the module docstring.
        rbm_optimizer: ``"sgd"`` (the paper's "SGD with learning rate decay for learning RBMs": the RBM's
            ``a, b, W`` by SGD at ``rbm_learning_rate`` times the run's decay, :meth:`sgd_groups`) or
            ``"adam"`` (the run's Adam, like every other parameter).
        rbm_learning_rate: ``eta'``, the RBM's SGD rate before the run's decay (the paper states none).
    """

    def __init__(self, num_latents: int = 200, num_hidden: int = 400,
                 decoder_hidden: tuple[int, ...] = (100, 100, 200, 200),
                 data_shape: tuple[int, ...] = (1, 28, 28), pixel_range: tuple[float, float] = (-1.0, 1.0),
                 gibbs_steps: int = 1000, binarize: str = "bernoulli", rbm_optimizer: str = "sgd",
                 rbm_learning_rate: float = RBM_LEARNING_RATE):
        super().__init__()
        if binarize not in BINARIZATIONS:
            raise UserError(f"rbm-prior: binarize must be one of {', '.join(BINARIZATIONS)}, "
                            f"got {binarize!r}")
        if rbm_optimizer not in RBM_OPTIMIZERS:
            raise UserError(f"rbm-prior: rbm_optimizer must be one of {', '.join(RBM_OPTIMIZERS)}, "
                            f"got {rbm_optimizer!r}")
        if not (isinstance(rbm_learning_rate, (int, float)) and math.isfinite(rbm_learning_rate)
                and rbm_learning_rate > 0):
            raise UserError(f"rbm-prior: rbm_learning_rate must be a positive number, got {rbm_learning_rate!r}")
        self.binarization = binarize
        self.rbm_optimizer, self.rbm_learning_rate = rbm_optimizer, float(rbm_learning_rate)
        num_latents = _positive_int("num_latents", num_latents)
        num_hidden = _positive_int("num_hidden", num_hidden)
        self.gibbs_steps = _positive_int("gibbs_steps", gibbs_steps, 0)
        decoder_hidden = tuple(decoder_hidden)
        if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in decoder_hidden):
            raise UserError(f"rbm-prior: decoder_hidden must be positive integer widths, got {decoder_hidden!r}")
        data_shape = tuple(data_shape)
        if not data_shape or not all(isinstance(s, int) and s >= 1 for s in data_shape):
            raise UserError(f"rbm-prior: data_shape must be positive integers, got {data_shape!r}")
        low, high = (float(v) for v in pixel_range)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise UserError(f"rbm-prior: pixel_range must be two finite numbers low < high, got {pixel_range!r}")
        self.latent_shapes = ((num_latents,),)
        self.data_shape = data_shape
        self.num_latents, self.num_hidden = num_latents, num_hidden
        self.decoder_hidden = decoder_hidden
        self.pixel_low, self.pixel_high = low, high
        self.rbm = RBM(num_latents, num_hidden)
        layers: list[nn.Module] = []
        width = num_latents
        for hidden in decoder_hidden:
            layers += [nn.Linear(width, hidden), nn.ELU()]
            width = hidden
        layers.append(nn.Linear(width, math.prod(data_shape)))
        self.decoder = nn.Sequential(*layers)

    @classmethod
    def options_for_data(cls, data_shape: tuple[int, ...]) -> dict:
        """``data_shape``: the data set's shape."""
        return {"data_shape": tuple(int(s) for s in data_shape)}

    def extra_repr(self) -> str:
        return (f"num_latents={self.num_latents}, num_hidden={self.num_hidden}, "
                f"decoder_hidden={self.decoder_hidden}, data_shape={self.data_shape}, "
                f"binarize={self.binarization!r}, rbm_optimizer={self.rbm_optimizer!r}")

    def sgd_groups(self) -> list[SGDGroup]:
        """The RBM's parameters as one SGD group at ``rbm_learning_rate`` (none with ``rbm_optimizer="adam"``);
        the decoder keeps the run's Adam (:class:`~inferkit.interfaces.HasSGDGroups`)."""
        if self.rbm_optimizer != "sgd":
            return []
        return [SGDGroup(tuple(self.rbm.parameters()), learning_rate=self.rbm_learning_rate)]

    # -- pieces ---------------------------------------------------------------------------------
    def binarize(self, x: Tensor) -> Tensor:
        """``1[x > (low + high) / 2]`` as floats, flattened to ``[batch, D]``."""
        threshold = 0.5 * (self.pixel_low + self.pixel_high)
        return (x.reshape(x.shape[0], -1) > threshold).to(self.rbm.weight.dtype)

    def check_binary(self, x: Tensor, mask: Tensor | None = None) -> None:
        """With ``binarize="bernoulli"``: a :class:`UserError` unless every observed pixel of ``x`` is
        ``low`` or ``high`` (statically binarised data). Nothing to check with ``"threshold"``."""
        if self.binarization != "bernoulli":
            return
        binary = (x == self.pixel_low) | (x == self.pixel_high)
        if mask is not None:
            binary = binary | (torch.broadcast_to(mask, x.shape) == 0)
        if not bool(binary.all()):
            raise UserError(f"rbm-prior with binarize=bernoulli takes statically binarised data (every "
                            f"pixel {self.pixel_low:g} or {self.pixel_high:g}), but x has grey levels; use "
                            "--data binarized-mnist (a fixed-seed Bernoulli draw), or --model-opt "
                            "binarize=threshold to threshold grey levels at the midpoint")

    def decoder_logits(self, z: Tensor) -> Tensor:
        """``g_theta(z)``: Bernoulli logits ``[..., D]`` for ``z`` of shape ``[..., n]`` (binary, or in
        ``[0, 1]`` during autoencoder pre-training)."""
        return self.decoder(z)

    def log_likelihood(self, x: Tensor, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """``log p(x | z) = sum_d m_d log Bernoulli(binarise(x)_d; sigmoid(g(z))_d)``.

        ``x`` is ``[B, *data_shape]``; ``z`` is ``[B, n]`` or ``[B, K, n]`` (K samples per example),
        and the result is ``[B]`` or ``[B, K]``. ``mask`` (1 = observed) restricts the sum. Grey-level
        ``x`` is refused with ``binarize="bernoulli"`` (:meth:`check_binary`)."""
        self.check_binary(x, mask)
        logits = self.decoder_logits(z)
        target = self.binarize(x)
        extra = logits.dim() - 2
        target = target.reshape(target.shape[0], *([1] * extra), target.shape[-1])
        per_pixel = torch.distributions.Bernoulli(logits=logits, validate_args=False).log_prob(target)
        if mask is not None:
            mask = torch.broadcast_to(mask, x.shape).reshape(x.shape[0], *([1] * extra), -1)
            per_pixel = per_pixel * mask.to(per_pixel.dtype)
        return per_pixel.sum(-1)

    # -- Model interface ------------------------------------------------------------------------
    def sample_prior(self, n: int, *, generator: torch.Generator | None = None) -> Latents:
        """``z ~ p(z)`` approximately: ``gibbs_steps`` block-Gibbs sweeps from uniform random states."""
        weight = self.rbm.weight
        start = torch.bernoulli(torch.full((n, self.num_latents), 0.5, device=weight.device, dtype=weight.dtype),
                                generator=generator)
        return (gibbs_sweeps(self.rbm, start, self.gibbs_steps, generator),)

    def log_prior(self, z: Latents) -> Tensor:
        """``-F(z) = log p(z) + log Z``: the *unnormalised* log prior (``log Z`` unknown)."""
        return -self.rbm.free_energy(z[0])

    def log_joint(self, x: Tensor, z: Latents, mask: Tensor | None = None) -> Tensor:
        """``log p*(x, z) = -F(z) + log p(x | z)``: ``log p(x, z)`` up to the constant ``log Z``."""
        return self.log_prior(z) + self.log_likelihood(x, z[0], mask)

    def decode(self, z: Latents) -> Tensor:
        """``E[x | z]`` on the data's scale: ``low + (high - low) sigmoid(g(z))``, shaped like ``x``."""
        probs = torch.sigmoid(self.decoder_logits(z[0]))
        mean = self.pixel_low + (self.pixel_high - self.pixel_low) * probs
        return mean.reshape(*mean.shape[:-1], *self.data_shape)

    def log_partition_exact(self) -> Tensor:
        """Exact ``log Z`` of the RBM prior by enumeration (small ``num_latents`` or ``num_hidden``)."""
        return self.rbm.log_partition_exact()
