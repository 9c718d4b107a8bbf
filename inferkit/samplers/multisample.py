"""What ``vimco`` and ``rws`` share: a Bernoulli encoder, K samples per example, persistent negative
chains for the RBM prior, and the pre-training schedule (see :mod:`inferkit.samplers.pretrain`).

With ``K`` samples ``z_i ~ q(z | x)`` the unnormalised weights are ``w_i = p*(x, z_i) / q(z_i | x)``,
``p*(x, z) = exp(-F(z)) p(x | z)`` (paper eq. 4), the normalised ones ``w~_i = w_i / sum_j w_j``, and

    L_K = log (1/K) sum_i w_i - log Z                     (paper eq. 2 / 6)

Both samplers train the decoder by ``sum_i w~_i grad log p*(x, z_i)`` and the RBM by eq. 5,
``-sum_i w~_i grad F(z_i) + (1/M) sum_j grad F(z^-_j)`` with ``z^-`` from ``num_chains`` persistent
Gibbs chains; they differ in how the encoder learns (subclasses' ``training_loss``).

Phases, by training iteration t (set in ``begin_iteration``, so a resumed run is in the same phase):
``autoencoder`` for the first ``pretrain_iterations``, then ``rbm`` for ``rbm_pretrain_iterations``,
then ``train``. Left at ``None`` they are ``pretrain_fraction`` and ``rbm_pretrain_fraction`` of the
run. The ``rbm`` phase runs the S stages of ``rbm_stages`` in order over its R iterations, evenly:
its iteration ``i`` (0-based) is in stage ``floor(i S / R)``. ``cdK`` is contrastive divergence with
K Gibbs sweeps from the batch's codes, ``pcdK`` persistent contrastive divergence with K sweeps of the
persistent chains per iteration (the chains the ``train`` phase then continues). The default
``cd1,cd25,pcd25`` follows the paper's appendix C: CD-1 raised to CD-25 (after Salakhutdinov and
Murray 2008), then PCD-25; the paper gives no stage lengths, so they are equal here. The trainer's
logged loss in the ``train`` phase is ``-(L_K + log Z)`` (``log Z`` is unknown during training),
averaged over the batch.

The persistent chains advance only on training batches (``infer`` given ``index``, as the trainer
does), never on evaluation calls, and live in ``state_dict`` so checkpoints resume them.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor
from torch.distributions import constraints

from inferkit.devices import module_placement
from inferkit.errors import UserError
from inferkit.interfaces import HasBernoulliEncoder, Inference, Model, RBMPriorModel, Sampler
from inferkit.models.gibbs import PersistentChains, gibbs_sweeps
from inferkit.samplers.bernoulli import BernoulliEncoder, bernoulli_log_prob, check_widths, draw_bernoulli
from inferkit.samplers.encoders import mask_input, shape_key
from inferkit.samplers.pretrain import hard_codes, log_partition_surrogate, pcd_loss, soft_binarize

PHASES = ("autoencoder", "rbm", "train")


def parse_rbm_stage(name: str, stage: str) -> tuple[str, int]:
    """``"cd25"`` -> ``("cd", 25)``, ``"pcd1"`` -> ``("pcd", 1)``; anything else is a :class:`UserError`."""
    text = str(stage).strip().lower()
    kind = "pcd" if text.startswith("pcd") else "cd" if text.startswith("cd") else None
    digits = text[len(kind):] if kind else ""
    if kind is None or not digits.isdigit() or int(digits) < 1:
        raise UserError(f"{name}: rbm_stages entries are cdK or pcdK with K >= 1 Gibbs sweeps (e.g. "
                        f"cd1,cd25,pcd25), got {stage!r}")
    return kind, int(digits)


def _check_int(name: str, option: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name}: {option} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_fraction(name: str, option: str, value) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{name}: {option} is a fraction of the run, between 0 and 1; got {value}")
    return value


class MultiSampleBernoulli(Sampler, HasBernoulliEncoder):
    """Base of the K-sample samplers for binary latents under an RBM prior (``rbm-prior``).

    Args:
        num_samples: K samples per example (the paper: 50 on MNIST).
        hidden: the encoder's hidden widths (the paper: 200,200,100,100).
        num_chains: M persistent Gibbs chains for the negative phase.
        pcd_steps: Gibbs sweeps the chains take per training iteration.
        pretrain_iterations: autoencoder pre-training iterations (``None``: ``pretrain_fraction`` of the run).
        rbm_pretrain_iterations: RBM iterations on the codes next (``None``: ``rbm_pretrain_fraction``).
        pretrain_fraction, rbm_pretrain_fraction: the defaults above, as fractions of the run.
        rbm_stages: the RBM pre-training stages in order, ``cdK`` / ``pcdK`` (the paper: cd1, cd25, pcd25).
    """

    name = "multisample"
    latent_supports = (constraints.boolean,)
    trains_in_phases = True  # pre-training phases train the encoder/decoder, then the RBM alone

    def __init__(self, num_samples: int = 50, hidden: tuple[int, ...] = (200, 200, 100, 100),
                 num_chains: int = 100, pcd_steps: int = 1, pretrain_iterations: int | None = None,
                 rbm_pretrain_iterations: int | None = None, pretrain_fraction: float = 0.3,
                 rbm_pretrain_fraction: float = 0.1, rbm_stages: tuple[str, ...] = ("cd1", "cd25", "pcd25")):
        super().__init__()
        name = self.name
        self.num_samples = _check_int(name, "num_samples", num_samples, self.min_samples)
        self.hidden = check_widths(name, hidden)
        self.num_chains = _check_int(name, "num_chains", num_chains, 1)
        self.pcd_steps = _check_int(name, "pcd_steps", pcd_steps, 1)
        self.pretrain_iterations = (None if pretrain_iterations is None
                                    else _check_int(name, "pretrain_iterations", pretrain_iterations, 0))
        self.rbm_pretrain_iterations = (None if rbm_pretrain_iterations is None
                                        else _check_int(name, "rbm_pretrain_iterations", rbm_pretrain_iterations, 0))
        self.pretrain_fraction = _check_fraction(name, "pretrain_fraction", pretrain_fraction)
        self.rbm_pretrain_fraction = _check_fraction(name, "rbm_pretrain_fraction", rbm_pretrain_fraction)
        if self.pretrain_fraction + self.rbm_pretrain_fraction > 1:
            raise UserError(f"{name}: pretrain_fraction + rbm_pretrain_fraction must be at most 1")
        stages = (rbm_stages,) if isinstance(rbm_stages, str) else tuple(rbm_stages)
        if not stages:
            raise UserError(f"{name}: rbm_stages needs at least one stage, e.g. cd1,cd25,pcd25")
        self.rbm_stages = tuple(parse_rbm_stage(name, stage) for stage in stages)
        self.rbm_stage = self.rbm_stages[-1]
        self.encoder: BernoulliEncoder | None = None
        self.chains: PersistentChains | None = None
        self._built_for: tuple | None = None
        self.phase = "train"

    min_samples = 1

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, hidden={self.hidden}, num_chains={self.num_chains}"

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, model: Model, *, num_examples: int | None = None) -> None:
        """Build the encoder and the persistent chains for ``model`` (kept if built for the same shapes)."""
        if not isinstance(model, RBMPriorModel):
            raise UserError(f"{self.name}: model {type(model).__name__} is not an RBM-prior model with binary latents; "
                            "use --model rbm-prior (or a model derived from inferkit.interfaces.RBMPriorModel)")
        key = shape_key(model)
        if self._built_for == key:
            return
        device, dtype = module_placement(model)
        self.encoder = BernoulliEncoder(math.prod(model.data_shape), model.latent_dim, self.hidden)
        self.chains = PersistentChains(self.num_chains, model.latent_dim)
        self.encoder.to(device=device, dtype=dtype)
        self.chains.to(device=device, dtype=dtype)
        self._built_for = key

    def schedule(self, total: int) -> tuple[int, int]:
        """``(autoencoder iterations, RBM pre-training iterations)`` for a run of ``total`` iterations."""
        ae = (round(self.pretrain_fraction * total) if self.pretrain_iterations is None
              else self.pretrain_iterations)
        rbm = (round(self.rbm_pretrain_fraction * total) if self.rbm_pretrain_iterations is None
               else self.rbm_pretrain_iterations)
        return ae, rbm

    def stage_at(self, iteration: int, total: int) -> str:
        """What iteration ``iteration`` of ``total`` does: ``"autoencoder"``, an RBM stage (``"cd1"``,
        ``"pcd25"``, ...) or ``"train"`` (see the module docstring)."""
        ae, rbm = self.schedule(total)
        if iteration < ae:
            return "autoencoder"
        if iteration >= ae + rbm:
            return "train"
        kind, steps = self.rbm_stages[(iteration - ae) * len(self.rbm_stages) // rbm]
        return f"{kind}{steps}"

    def begin_iteration(self, iteration: int, total: int) -> None:
        """Pick the phase of iteration ``iteration`` (autoencoder, rbm or train) and the RBM stage."""
        stage = self.stage_at(iteration, total)
        self.phase = stage if stage in PHASES else "rbm"
        if self.phase == "rbm":
            self.rbm_stage = parse_rbm_stage(self.name, stage)

    def _require_setup(self, model: Model) -> None:
        if self._built_for != shape_key(model):
            raise UserError(f"{self.name}: the encoder is not built for this model; call sampler.setup(model) "
                            "before inference (inferkit.train and the CLI do)")

    # -- q(z | x) --------------------------------------------------------------------------------
    def encoder_logits(self, model: Model, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``E_phi(x)``: the logits of ``q(z | x)``, ``[B, n]`` (hidden pixels, mask 0, read as 0)."""
        self._require_setup(model)
        return self.encoder(model.binarize(mask_input(x, mask)))

    def log_q(self, z: Tensor, logits: Tensor) -> Tensor:
        """``log q(z | x)`` for samples ``z`` ``[B, K, n]`` (or ``[B, n]``) and logits ``[B, n]``."""
        return bernoulli_log_prob(z, logits.unsqueeze(1) if z.dim() == 3 else logits)

    def _negative(self, model: Model, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """Negative-phase states ``z^-``: in the ``rbm`` phase the stage's CD-K chains from the batch's
        codes or PCD-K sweeps of the persistent chains; in ``train``, ``pcd_steps`` sweeps of the
        persistent chains."""
        if self.phase != "rbm":
            return self.chains.advance(model.rbm, self.pcd_steps, generator)
        kind, steps = self.rbm_stage
        if kind == "cd":
            return gibbs_sweeps(model.rbm, hard_codes(logits), steps, generator)
        return self.chains.advance(model.rbm, steps, generator)

    def infer(self, model: Model, x: Tensor, *, index: Tensor | None = None, mask: Tensor | None = None,
              generator: torch.Generator | None = None) -> Inference:
        """Phase ``train``: K draws ``z_i ~ q(z | x)``; returns the highest-weight draw per example with its
        ``log q`` (``info``: all draws, the logits). Phase ``autoencoder``: ``z = B(E(x))`` (soft, with its
        graph). Phase ``rbm``: the hard codes ``1[E(x) > 0]``. On training batches (``index`` given) the
        negative-phase states (CD-K chains from the codes, or the persistent chains, which then advance)
        are ``info["negative"]``."""
        logits = self.encoder_logits(model, x, mask)
        info: dict = {"phase": self.phase, "logits": logits}
        if self.phase == "rbm":
            info["rbm_stage"] = "".join(map(str, self.rbm_stage))
        if index is not None and self.phase != "autoencoder":
            info["negative"] = self._negative(model, logits, generator)
            self.extra_negative(model, info, generator)
        if self.phase == "autoencoder":
            return Inference(z=(soft_binarize(logits, generator),), info=info)
        if self.phase == "rbm":
            return Inference(z=(hard_codes(logits),), info=info)
        samples = draw_bernoulli(logits, self.num_samples, generator)
        with torch.no_grad():
            log_q = self.log_q(samples, logits)
            log_w = model.log_prior((samples,)) + model.log_likelihood(x, samples, mask) - log_q
            best = log_w.argmax(-1)
        rows = torch.arange(x.shape[0], device=samples.device)
        info["samples"] = samples
        return Inference(z=(samples[rows, best],), log_q=log_q[rows, best], info=info)

    def extra_negative(self, model: Model, info: dict, generator: torch.Generator | None) -> None:
        """Hook for more negative-phase draws (RWS's sleep phase). Default: none."""

    # -- learning --------------------------------------------------------------------------------
    def loss(self, model: Model, x: Tensor, inference: Inference, mask: Tensor | None = None) -> Tensor:
        """The phase's loss: autoencoder ``-mean log p(x | B(E(x)))``; rbm ``mean F(z) - mean F(z^-)``;
        train: the subclass's K-sample surrogate plus the RBM's negative phase (eq. 5)."""
        phase = inference.info.get("phase", self.phase)
        if phase == "autoencoder":
            return -model.log_likelihood(x, inference.z[0], mask).mean()
        negative = inference.info.get("negative")
        if negative is None:
            raise UserError(f"{self.name}: loss needs the negative-phase samples of a training batch; call "
                            "infer with the batch's dataset index (the trainer does)")
        if phase == "rbm":
            return pcd_loss(model.rbm, inference.z[0], negative)
        samples = inference.info["samples"]
        log_q = self.log_q(samples, inference.info["logits"])
        log_p = model.log_prior((samples,)) + model.log_likelihood(x, samples, mask)
        per_example = self.training_objective(model, log_p, log_q, inference)
        return -per_example.mean() + log_partition_surrogate(model.rbm, negative)

    @abc.abstractmethod
    def training_objective(self, model: Model, log_p: Tensor, log_q: Tensor, inference: Inference) -> Tensor:
        """Per-example surrogate to *maximise*, from ``log p*(x, z_i)`` and ``log q(z_i | x)`` ``[B, K]``
        (both with their graphs); its value is ``L_K + log Z`` and its gradient the sampler's update."""
