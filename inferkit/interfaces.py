"""The contracts every inferkit plugin keeps (see docs/architecture.md).

A :class:`Model` defines ``log p(x, z)``; a :class:`Sampler` turns data ``x`` into
latent samples ``z ~ q(z | x)``; a :class:`GradientFlow` is a sampler whose K-step flow
``z_K = F_s(z_0)`` from the prior takes its hyperparameters ``s`` as arguments; a :class:`Tuner`
chooses a sampler's hyperparameters, e.g. by minimising ``J(s) = KL(q_s || p(z|x)) - log p(x)``
through :func:`inferkit.kl_objective`, and returns them as a :class:`TuneResult` for the caller to
apply with :meth:`Sampler.set_hyperparameters`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.distributions import constraints

from inferkit.devices import module_placement
from inferkit.errors import UserError

Latents = tuple[Tensor, ...]
"""One tensor per latent layer, bottom layer (z_1) first, batch dimension first."""


class Model(torch.nn.Module, abc.ABC):
    """A latent-variable model ``p(x, z) = p(z) p(x | z)``.

    ``log_joint`` is the *normalised* log density, constants included, so that
    ``kl_objective(...) + log p(x)`` is the KL itself (unless the model is an
    :class:`UnnormalizedModel`).
    """

    latent_shapes: tuple[tuple[int, ...], ...]
    """Shape of each latent layer without the batch dimension, bottom layer first."""

    data_shape: tuple[int, ...]
    """Shape of one observation ``x`` without the batch dimension."""

    latent_support: constraints.Constraint = constraints.real
    """The set each latent takes values in, as a :mod:`torch.distributions.constraints` constraint:
    ``constraints.real`` for continuous latents, ``constraints.boolean`` for latents in {0, 1} (no
    gradient flow applies); a sampler handles the supports in its :attr:`Sampler.latent_supports`."""

    supports_mask: bool = True
    """Whether ``log_joint`` honours its ``mask`` (restricts ``log p(x | z)`` to the observed entries);
    inpainting is skipped for a model that cannot."""

    @classmethod
    def options_for_data(cls, data_shape: tuple[int, ...]) -> dict[str, Any]:
        """Constructor options this model takes from the data set's ``data_shape`` (e.g. image size and
        channels); options the user gave win. Default: none."""
        return {}

    @property
    def normalized(self) -> bool:
        """Whether ``log_joint`` is the normalised log density: False exactly for an
        :class:`UnnormalizedModel`."""
        return not isinstance(self, UnnormalizedModel)

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


class UnnormalizedModel(Model):
    """A model whose ``log_joint`` is known only up to an additive constant ``-log Z`` (an RBM or
    energy-based prior): ``log_joint = log p(x, z) + log Z``.

    Log-likelihood evaluators report nats only from :meth:`estimate_log_likelihood` (or an estimator
    for the model's family, such as :mod:`inferkit.eval.rbm` for an RBM prior) and otherwise record a
    skip. Gradient samplers and the argmin of J are unaffected, since ``log Z`` does not depend on ``z``.
    """

    def log_normalizer_surrogate(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """A scalar equal to 0 whose gradient in the parameters estimates ``grad log Z`` from ``n``
        samples of the model's prior; the trainer adds it to every loss, so that the loss has the
        gradient of ``-log p(x, z)`` (the maximum-likelihood negative phase). Default: a zero tensor, for
        a normaliser that does not depend on the model's parameters or that the sampler's loss handles."""
        device, dtype = module_placement(self)
        return torch.zeros((), device=device, dtype=dtype)

    def estimate_log_likelihood(self, x: Tensor, sampler: Sampler, *, num_chains: int, num_steps: int,
                                num_samples: int, generator: torch.Generator | None = None
                                ) -> dict[str, Any] | None:
        """Per-example estimates of ``log p(x)`` in nats for the rows of ``x`` (``"per_example"``), their
        ``"mean"``, ``"standard_error"`` and ``"examples"``, and how they were made, by the model's own
        machinery. Default: ``None``, no estimate of its own."""
        return None


class SimulatesObservations(abc.ABC):
    """A model that can draw ``x ~ p(x | z)`` itself, noise included (not only the mean ``decode(z)``):
    what bidirectional Monte Carlo (:mod:`inferkit.eval.ais`) needs to simulate data whose latent ``z`` is
    an exact posterior sample."""

    @abc.abstractmethod
    def sample_observation(self, z: Latents, *, generator: torch.Generator | None = None) -> Tensor:
        """``x ~ p(x | z)`` per example, shaped ``[batch, *data_shape]``."""


@runtime_checkable
class HasObservationNoise(Protocol):
    """Optional: a model whose observation noise sigma the trainer may anneal."""

    observation_sigma: float

    def set_observation_sigma(self, sigma: float) -> None: ...


@dataclass(frozen=True)
class SGDGroup:
    """Parameters a model learns by plain SGD instead of the run's Adam:
    ``theta <- theta - eta'_t grad`` (plus ``momentum``), ``eta'_t = learning_rate * eta_t / eta_0`` with
    ``eta_t`` the run's step-wise schedule (:func:`inferkit.trainer.learning_rate`): the run's decay,
    from the group's own rate."""

    parameters: tuple[torch.nn.Parameter, ...]
    learning_rate: float
    momentum: float = 0.0


@runtime_checkable
class HasSGDGroups(Protocol):
    """Optional: a model some of whose parameters the trainer steps with SGD (the RBM prior: the
    discrete-latent paper's "SGD with learning rate decay for learning RBMs"); the rest, and the
    sampler's, keep the run's Adam. An empty sequence leaves everything to Adam."""

    def sgd_groups(self) -> Sequence[SGDGroup]: ...


class DataSplit(abc.ABC):
    """One split of a data set: ``x`` ``[N, *data_shape]`` (a tensor, or tensor-like for splits read from
    storage), optional per-item ``labels`` ``[N]`` and ``factors`` ``[N, F]``, and batches by index."""

    x: Tensor
    labels: Tensor | None = None
    """Class label of each item (``None``: unlabelled)."""
    factors: Tensor | None = None
    """Level index of each known generative factor, columns as :attr:`DataSet.factor_names` (``None``: none)."""
    streaming: bool = False
    """True when batches are read from storage on demand; the trainer then reads iteration ``t + 1``'s
    batches while ``t`` computes."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items."""

    @property
    @abc.abstractmethod
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one item ``x`` without the batch dimension."""

    @abc.abstractmethod
    def batch(self, indices: Tensor | Sequence[int]) -> dict[str, Tensor]:
        """The items at ``indices`` as one batch: ``x``, ``index``, and ``label`` / ``factors`` when present."""

    @abc.abstractmethod
    def to(self, device: torch.device | str) -> DataSplit:
        """This split with its tensors on ``device`` (a streaming split puts its batches there)."""


class DataSet(abc.ABC):
    """A data set: ``train`` and ``test`` :class:`DataSplit` of one ``data_shape``, with what is known
    about its items (factors, classes), ``None`` where nothing is."""

    name: str = "data"
    """The registry name, recorded with what is trained on the data (e.g. the feature classifier)."""
    train: DataSplit
    test: DataSplit
    factor_names: tuple[str, ...] | None = None
    """Names of the columns of the splits' ``factors``."""
    factor_sizes: tuple[int, ...] | None = None
    """Number of levels of each factor, in ``factor_names`` order."""
    num_classes: int | None = None
    """Number of label classes (``None``: unknown, or no labels)."""
    levels: int | None = None
    """Number of equally spaced values each entry of ``x`` takes on ``[-1, 1]`` (256 for 8-bit images scaled
    by ``x = 2 v / 255 - 1``), what bits per dimension are counted in; ``None``: continuous data."""

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one item ``x`` without the batch dimension (the train split's)."""
        return self.train.data_shape


@dataclass(frozen=True)
class Inference:
    """What a sampler returns: latents, their log density under ``q`` if known
    (amortized samplers), and diagnostics."""

    z: Latents
    log_q: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TuneResult:
    """What a tuner chose, as values: the hyperparameters (detached tensors, by their names in
    :meth:`Sampler.hyperparameters`), the objective there, every point tried, and the sampler's
    step-size layout :attr:`Sampler.per` (for the record). Apply it with
    ``sampler.set_hyperparameters(result.hyperparameters)``."""

    hyperparameters: dict[str, Tensor]
    objective: float
    history: list[dict[str, Any]] = field(default_factory=list)
    per: str | None = None


class Sampler(torch.nn.Module, abc.ABC):
    """Turns data ``x`` into latents ``z ~ q(z | x)`` for a given model.

    Lifecycle, as the trainer drives it: ``setup(model, num_examples=N)`` once, before the optimiser
    is built and before a checkpoint is loaded (amortized samplers build their encoder there,
    persistent ones size their chain store); then per iteration ``begin_iteration(t, T)`` (schedules
    such as KL warm-up), ``infer`` and ``loss``.
    """

    latent_supports: tuple[constraints.Constraint, ...] = (constraints.real,)
    """The supports of :attr:`Model.latent_support` this sampler handles (``constraints.real``,
    ``constraints.boolean``; gradient samplers: real only)."""

    per: str | None = None
    """What one entry of the ``step_size`` hyperparameter covers: ``"shared"``, ``"layer"`` or ``"step"``
    (short-run samplers), ``None`` for a sampler without that layout."""

    trains_in_phases: bool = False
    """True when some training iterations leave trainable parameters (the model's or the sampler's)
    without a gradient, e.g. pre-training phases (what ``TrainConfig.find_unused_parameters="auto"``
    reads)."""

    def setup(self, model: Model, *, num_examples: int | None = None) -> None:
        """Prepare for ``model`` (and its ``data_shape``) and a training set of ``num_examples``
        (``None``: unknown). Called before the optimiser is built, so parameters made here are
        trained; must be idempotent (a second call for the same model keeps what exists).
        Default: nothing to prepare."""

    def begin_iteration(self, iteration: int, total: int) -> None:
        """Called by the trainer at the start of training iteration ``iteration`` of ``total``
        (0-based), before tuning and inference. Default: nothing."""

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
        """The current hyperparameter values by name (the sampler's own buffers: read them, change them
        only through :meth:`set_hyperparameters`). Default: none."""
        return {}

    def set_hyperparameters(self, values: Mapping[str, Tensor]) -> None:
        """Set hyperparameters from ``values`` (e.g. a :class:`TuneResult`'s), each shaped as
        :meth:`hyperparameters` has it; an unknown name or a wrong shape is a :class:`UserError`."""
        current = self.hyperparameters()
        unknown = [name for name in values if name not in current]
        if unknown:
            raise UserError(f"sampler {type(self).__name__} has no hyperparameter {', '.join(unknown)}; "
                            f"it has {', '.join(current) or 'none'}")
        for name, value in values.items():
            value = torch.as_tensor(value)
            if value.shape != current[name].shape:
                raise UserError(f"sampler {type(self).__name__}: {name} has shape {tuple(current[name].shape)}, "
                                f"got a value of shape {tuple(value.shape)}")
        with torch.no_grad():
            for name, value in values.items():
                current[name].copy_(torch.as_tensor(value))

    def gather_example_state(self, owned: Tensor, all_reduce_sum: Callable[[Tensor], Tensor]) -> None:
        """Distributed training: unite per-example state (e.g. persistent chains) that each process
        keeps for the examples it owns (``owned``: bool ``[num_examples]``), so that afterwards every
        process holds every example's state. ``all_reduce_sum`` sums a tensor over processes in place
        (the identity in one process). Called on every process before each checkpoint. Default: no
        per-example state."""


def support_name(support: constraints.Constraint) -> str:
    """How messages name a latent support: ``"real"``, ``"binary"``, else the constraint itself."""
    if support is constraints.real:
        return "real"
    if support is constraints.boolean:
        return "binary"
    return str(support)


def require_compatible(model: Model, sampler: Sampler) -> None:
    """Raise :class:`~inferkit.errors.UserError` when ``sampler`` cannot handle ``model``'s latents."""
    support = model.latent_support
    if support not in sampler.latent_supports:
        needs = " or ".join(support_name(s) for s in sampler.latent_supports)
        name = support_name(support)
        raise UserError(f"sampler {type(sampler).__name__} needs {needs} latents but model {type(model).__name__} "
                        f"has {name} latents; pick a sampler for {name} latents (see `inferkit list`)")


def require_real_latents(tuner: str, model: Model) -> None:
    """J(s) needs a differentiable log density in ``z``: refuse a model whose latents are not real."""
    if model.latent_support is not constraints.real:
        raise UserError(f"{tuner}: the KL objective needs real-valued latents, but model {type(model).__name__} has "
                        f"{support_name(model.latent_support)} latents; use the 'fixed' tuner (--tuner fixed)")


class RBMPriorModel(UnnormalizedModel):
    """Binary latents ``z`` under an RBM prior, ``p(z) = exp(-F(z)) / Z``, and a Bernoulli likelihood of
    the binarised ``x`` (``rbm-prior``): what the K-sample samplers (vimco, rws) and
    :mod:`inferkit.eval.rbm` work with. ``log_prior`` is ``-F(z)``, unnormalised; the RBM's negative phase
    comes from the sampler's persistent chains, so :meth:`log_normalizer_surrogate` keeps its zero default."""

    latent_support = constraints.boolean

    rbm: torch.nn.Module
    """The prior's RBM (:class:`~inferkit.models.rbm.RBM`), whose free energy is ``F``."""

    @abc.abstractmethod
    def binarize(self, x: Tensor) -> Tensor:
        """The binarised ``x``, flattened to ``[batch, D]``."""

    @abc.abstractmethod
    def decoder_logits(self, z: Tensor) -> Tensor:
        """Bernoulli logits ``[..., D]`` of ``p(x | z)`` for ``z`` ``[..., n]``."""

    @abc.abstractmethod
    def log_likelihood(self, x: Tensor, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """``log p(x | z)`` for ``z`` ``[B, n]`` (result ``[B]``) or ``[B, K, n]`` (result ``[B, K]``), over
        the observed entries of ``mask`` (1 = observed)."""


class HasBernoulliEncoder(abc.ABC):
    """A sampler with an amortized factorised Bernoulli ``q(z | x)`` over binary latents (vimco, rws)."""

    @abc.abstractmethod
    def encoder_logits(self, model: Model, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The logits ``[B, n]`` of ``q(z | x) = prod_i Bernoulli(z_i; sigmoid(logits_i))`` (hidden pixels,
        mask 0, unseen)."""


@runtime_checkable
class HasLayerConditionals(Protocol):
    """Optional: a hierarchical prior walked top-down one layer at a time (what a Ladder-VAE needs).

    ``p(z) = p(z_L) prod_{l<L} N(z_l; mu_l, diag sigma_l^2)`` with ``mu_l, sigma_l`` functions of the
    layers above, in the model's *centered* coordinates ``z_l`` (the variables of the conditionals,
    whatever coordinates ``log_joint`` takes). Layers are 0-based, bottom first, shapes as
    ``latent_shapes``.
    """

    def layer_conditional(self, layer: int, z_above: Tensor | None, state: Any = None
                          ) -> tuple[Tensor, Tensor, Any]:
        """``(mu, sigma, state)`` of ``p(z_layer | z_{>layer})``. Called top-down: first for the top
        layer (``z_above=None``, ``state=None``; mean and scale may be broadcastable, e.g. batch 1),
        then for each lower layer with the centered sample of the layer just above and the ``state``
        the previous call returned."""
        ...

    def from_centered(self, z: Latents, conditionals: list[tuple[Tensor, Tensor]]) -> tuple[Latents, Tensor]:
        """The latents ``log_joint`` takes for centered ``z``, and ``log|det d(latents)/dz|`` per
        example; ``conditionals`` are the ``(mu, sigma)`` of every layer at ``z`` (bottom first), as
        :meth:`layer_conditional` gave them."""
        ...


class GradientFlow(Sampler):
    """A sampler that runs K steps of a differentiable flow from the prior, ``z_K = F_s(z_0)``,
    ``z_0 ~ p_0 = p(z)``, with hyperparameters passed in as values (the KL tuners' contract):

        short-run:  z_{k+1} = z_k + S_k grad_z log p(x, z_k) [+ noise_scale sqrt(2 S_k) eps_k]

    with a diagonal, per-layer step matrix ``S_k`` of gradient coefficients (row ``k`` of
    :meth:`step_sizes`; ``S_k = s_k^2 / 2`` for the authors' step size ``s_k``, so the noise is
    ``s_k eps_k``: :mod:`inferkit.samplers.units`). Such a step has
    the Jacobian ``I + S_k H_k`` (``H_k = hess_z log p(x, z_k)``), which the generic stepwise
    log-determinant uses; a flow whose steps are not of that form says so through
    :meth:`step_log_det`. ``hyperparameters()`` holds ``step_size``; a flow with further
    hyperparameters (momentum) takes them in :meth:`path`, :meth:`flow` and :meth:`step_log_det` as
    keyword arguments of the same names, each defaulting to the sampler's current value.
    """

    num_steps: int
    """K, the number of steps."""

    noise_scale: float = 0.0
    """Multiplies ``sqrt(2 S) eps`` in each step: 0 for a noise-free flow, 1 for Langevin."""

    supports_stochastic_log_det: bool = True
    """Whether ``log|det dF/dz_0|`` factors into per-step ``log|det(I + S_k H_k)|``, as the
    ``stochastic`` (Lanczos) estimator needs."""

    @abc.abstractmethod
    def step_sizes(self, num_layers: int, step_size: Tensor | None = None) -> Tensor:
        """``[K, L]`` gradient coefficients ``S_{k,l}`` for a model with ``num_layers`` latent layers, from
        the value ``step_size`` of the ``step_size`` hyperparameter (default: the current one;
        differentiable in it)."""

    @abc.abstractmethod
    def path(self, model: Model, x: Tensor, z0: Latents, step_sizes: Tensor, noise: list[Latents] | None = None,
             mask: Tensor | None = None) -> list[Latents]:
        """States ``z_0, ..., z_K`` of the flow with ``[K, L]`` ``step_sizes`` and noise path ``noise``
        (held fixed), differentiable in ``z0``, ``step_sizes`` and the model (also under ``torch.func``)."""

    def flow(self, model: Model, x: Tensor, z0: Latents, step_sizes: Tensor, noise: list[Latents] | None = None,
             mask: Tensor | None = None, **hyperparameters: Tensor) -> Latents:
        """``F(z_0) = z_K`` (differentiable, as :meth:`path`)."""
        return self.path(model, x, z0, step_sizes, noise, mask, **hyperparameters)[-1]

    def sample_noise(self, model: Model, n: int, *, generator: torch.Generator | None = None
                     ) -> list[Latents] | None:
        """The noise path ``eps_0..eps_{K-1}`` for ``n`` examples; ``None`` for a noise-free flow (default)."""
        return None

    def step_log_det(self, model: Model, x: Tensor, path: list[Latents], step_sizes: Tensor,
                     mask: Tensor | None = None, **hyperparameters: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(log|det dz_K/dz_0|, invertibility margin)`` per example for the ``path`` :meth:`path` gave,
        for a flow whose steps are not ``I + S_k H_k``; ``None`` (default) means "use the generic
        ``sum_k log|det(I + S_k H_k)|``". A positive margin means locally invertible."""
        return None


NOT_A_FLOW = ("it is not a short-run gradient flow from the prior p_0 = p(z) (its q(z|x) is not the law of "
              "F_s(z_0): e.g. an amortized encoder, persistent chains, or accept/reject moves), so J(s) is not "
              "its KL")
"""Why ``J(s)`` does not apply to a sampler that is not a :class:`GradientFlow`."""


def require_gradient_flow(sampler: Sampler, *, tuner: str | None = None) -> GradientFlow:
    """``sampler`` as a :class:`GradientFlow`, or a :class:`UserError` (prefixed by ``tuner``'s name)
    saying why ``J(s)`` does not apply and what to use instead."""
    if not isinstance(sampler, GradientFlow):
        prefix = f"{tuner}: " if tuner else ""
        raise UserError(f"{prefix}the KL objective does not apply to sampler {type(sampler).__name__}: "
                        f"{NOT_A_FLOW}; use the 'fixed' tuner (--tuner fixed)")
    return sampler


Reduce = Callable[[Tensor], Tensor]
"""Sums a tensor over the processes of a data-parallel run (in place or not; returns the sum)."""


class Tuner(abc.ABC):
    """Chooses a sampler's hyperparameters for a model and a batch of data; changes nothing but what it
    carries from one tuning to the next (:meth:`state_dict`)."""

    @abc.abstractmethod
    def tune(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None = None, *,
             reduce: Reduce | None = None) -> TuneResult:
        """Choose hyperparameters and report them as values; the caller applies them
        (``sampler.set_hyperparameters(result.hyperparameters)``). ``reduce`` sums a tensor over the
        processes of a data-parallel run (e.g. :func:`inferkit.distributed.all_reduce_sum`), so that
        every process reaches the same choice; ``None``: one process."""

    def check(self, model: Model, sampler: Sampler) -> None:
        """Raise :class:`~inferkit.errors.UserError` if this tuner cannot work with ``sampler`` (the
        trainer calls it before training starts). Default: every sampler will do."""

    def state_dict(self) -> dict[str, int]:
        """What the tuner carries from one tuning to the next, as plain numbers (the trainer keeps it in
        the run's checkpoint). Default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (read from a checkpoint: untrusted, so validated;
        :class:`~inferkit.errors.UserError` if it does not fit). Default: nothing to restore."""
