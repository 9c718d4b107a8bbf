"""The contracts every inferkit plugin keeps (see DESIGN.md).

A :class:`Model` defines ``log p(x, z)``; a :class:`Sampler` turns data ``x`` into
latent samples ``z ~ q(z | x)``; a :class:`Tuner` sets a sampler's hyperparameters
by minimising ``J(s) = KL(q_s || p(z|x)) - log p(x)`` through
:func:`inferkit.kl_objective`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

Latents = tuple[Tensor, ...]
"""One tensor per latent layer, bottom layer (z_1) first, batch dimension first."""


class Model(torch.nn.Module, abc.ABC):
    """A latent-variable model ``p(x, z) = p(z) p(x | z)``.

    ``log_joint`` is the *normalised* log density, constants included, so that
    ``kl_objective(...) + log p(x)`` is the KL itself.
    """

    latent_shapes: tuple[tuple[int, ...], ...]
    """Shape of each latent layer without the batch dimension, bottom layer first."""

    data_shape: tuple[int, ...]
    """Shape of one observation ``x`` without the batch dimension."""

    @abc.abstractmethod
    def sample_prior(self, n: int, *, generator: torch.Generator | None = None) -> Latents:
        """Draw ``z ~ p(z)`` for ``n`` examples."""

    @abc.abstractmethod
    def log_prior(self, z: Latents) -> Tensor:
        """``log p(z)`` per example, shape ``[batch]`` (the initial density ``p_0`` of
        non-persistent short-run dynamics)."""

    @abc.abstractmethod
    def log_joint(self, x: Tensor, z: Latents, mask: Tensor | None = None) -> Tensor:
        """``log p(x, z)`` per example, shape ``[batch]``.

        ``mask`` (broadcastable to ``x``, 1 = observed) restricts ``log p(x | z)`` to
        the observed entries, which is how inpainting conditions on part of ``x``.
        """

    @abc.abstractmethod
    def decode(self, z: Latents) -> Tensor:
        """Mean of ``p(x | z)``, shaped like ``x``."""

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples ``x ~ p(x)``: the decoded mean of ``z ~ p(z)``."""
        return self.decode(self.sample_prior(n, generator=generator))

    @property
    def num_layers(self) -> int:
        return len(self.latent_shapes)

    @property
    def latent_dim(self) -> int:
        """Total number of latent units, ``sum_l prod(latent_shapes[l])``."""
        total = 0
        for shape in self.latent_shapes:
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


@runtime_checkable
class HasObservationNoise(Protocol):
    """Optional: a model whose observation noise sigma the trainer may anneal."""

    observation_sigma: float

    def set_observation_sigma(self, sigma: float) -> None: ...


@dataclass(frozen=True)
class Inference:
    """What a sampler returns: latents, their log density under ``q`` if known
    (amortized samplers), and diagnostics."""

    z: Latents
    log_q: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TuneResult:
    """The hyperparameters a tuner chose, the objective there, and every point tried."""

    hyperparameters: dict[str, Tensor]
    objective: float
    history: list[dict[str, Any]] = field(default_factory=list)


class Sampler(torch.nn.Module, abc.ABC):
    """Turns data ``x`` into latents ``z ~ q(z | x)`` for a given model."""

    @abc.abstractmethod
    def infer(
        self,
        model: Model,
        x: Tensor,
        *,
        index: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Inference:
        """Infer latents for the batch ``x`` (``index``: dataset indices of the rows)."""

    def loss(self, model: Model, x: Tensor, inference: Inference, mask: Tensor | None = None) -> Tensor:
        """Scalar to minimise in one learning step. Non-amortized samplers hold ``z``
        fixed and return ``-mean_i log p_theta(x_i, z_i)``."""
        return -model.log_joint(x, inference.z, mask).mean()

    def hyperparameters(self) -> dict[str, Tensor]:
        """The live tensors a tuner may set (in place)."""
        return {}


@runtime_checkable
class GradientFlow(Protocol):
    """A sampler whose K steps are ``z_{k+1} = z_k + S_k grad_z log p(x, z_k) [+ noise]``
    with a diagonal, per-layer step matrix ``S_k``. Its Jacobian per step is
    ``I + S_k H_k``, which is what the stepwise log-determinant uses."""

    def flow(self, model: Model, x: Tensor, z0: Latents, noise: list[Latents] | None = None,
             mask: Tensor | None = None) -> Latents: ...

    def path(self, model: Model, x: Tensor, z0: Latents, noise: list[Latents] | None = None,
             mask: Tensor | None = None) -> list[Latents]: ...

    def step_size_matrix(self, num_layers: int) -> Tensor: ...

    def sample_noise(self, model: Model, n: int, *, generator: torch.Generator | None = None) -> list[Latents] | None: ...


class Tuner(abc.ABC):
    """Sets a sampler's hyperparameters for a model and a batch of data."""

    @abc.abstractmethod
    def tune(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None = None) -> TuneResult:
        """Choose hyperparameters, write them into the sampler, and report."""
