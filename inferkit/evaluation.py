"""Evaluation of a trained model and sampler (the façade over :mod:`inferkit.eval`).

:func:`evaluate` runs a list of :class:`Evaluator` on the test split: reconstruction MSE with the run's
own sampler and with one common reference inference; inpainting MSE on hidden pixels for several mask
patterns; an estimate of ``log p(x)`` (AIS, or an unnormalised model's own estimator); the IWAE bound
for amortized samplers; FID (given the Inception weights file); a Fréchet distance in the features of a
classifier trained on the data; on data with known factors, which latent layer changes which factor;
and the figures. Each evaluator is timed (``seconds``); one that does not apply is recorded under
``skipped`` with the reason, and its figures are ``None``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import constraints

from inferkit.devices import module_device
from inferkit.errors import UserError
from inferkit.eval import ais, classifier, figures, frechet, hierarchy, inception, inpainting, iwae
from inferkit.eval.rbm import rbm_log_likelihood
from inferkit.eval.reconstruction import reconstruct, reconstruction_mse
from inferkit.eval.reference import reference_sampler
from inferkit.images import is_image_shape
from inferkit.interfaces import DataSet, HasBernoulliEncoder, Model, RBMPriorModel, Sampler, UnnormalizedModel
from inferkit.seeding import seeded_generator


@dataclass
class EvalConfig:
    """What :func:`evaluate` measures and on how much data (a count of 0 skips that part)."""

    num_examples: int = 0
    """Test examples for reconstruction and inpainting (0: all)."""
    seed: int = 0
    batch_size: int = 64
    reference_steps: int = 200
    """K of the common reference inference (long-run noise-free flow; 0: skip)."""
    reference_step_size: float | None = None
    """Its step size (None: chosen on a grid by mean log p(x, z_K))."""
    inpaint_patterns: tuple[str, ...] = ("random-pixels", "centre-square", "half", "random-blocks")
    inpaint_examples: int = 256
    ais_examples: int = 32
    ais_chains: int = 4
    ais_steps: int = 200
    """Number of intermediate distributions T."""
    ais_leapfrog: int = 5
    iwae_samples: int = 64
    iwae_examples: int = 256
    fd_samples: int = 1000
    """Generated samples (and at most as many test images) for the Fréchet distances."""
    classifier: str | None = None
    """Path of the feature classifier (trained and saved there when absent)."""
    classifier_iterations: int = 1000
    inception_weights: str | None = None
    factor_rows: int = 32
    figures: bool = True

    def validate(self) -> None:
        """Raise :class:`UserError` for a negative count, a non-positive size, or an unknown mask pattern."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise UserError(f"{item.name.replace('_', '-')} must be >= 0, got {value}")
        for name in ("batch_size", "ais_chains", "ais_leapfrog", "classifier_iterations"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.reference_step_size is not None and not (math.isfinite(self.reference_step_size)
                                                         and self.reference_step_size > 0):
            raise UserError(f"reference-step-size must be positive, got {self.reference_step_size}")
        for pattern in self.inpaint_patterns:
            if pattern not in inpainting.MASK_PATTERNS:
                raise UserError(f"unknown mask pattern {pattern!r}; use one of {', '.join(inpainting.MASK_PATTERNS)}")


# ------------------------------------------------------------------------------------------ context
@dataclass
class EvalContext:
    """What every evaluator reads (the model, sampler, data, configuration and test rows), and what
    earlier evaluators leave for later ones (generated samples, the feature classifier, figure names)."""

    model: Model
    sampler: Sampler
    data: DataSet
    config: EvalConfig
    out_dir: Path | None
    device: torch.device
    x_all: Tensor
    """The whole test split, on ``device``."""
    x: Tensor
    """Its first ``config.num_examples`` rows (all when 0)."""
    network: inception.FIDInceptionV3 | None = None
    log: Callable[[str], None] = lambda message: None
    """Where progress messages go."""
    feature_net: classifier.FeatureClassifier | None = None
    figure_paths: list[str] = field(default_factory=list)
    _generated: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def is_image(self) -> bool:
        return is_image_shape(tuple(self.model.data_shape))

    @property
    def writes_figures(self) -> bool:
        return self.config.figures and self.out_dir is not None and self.is_image

    def generator(self, stream: int, device: torch.device | str | None = None) -> torch.Generator:
        """``seeded_generator(config.seed, stream)`` on ``device`` (default: the model's)."""
        return seeded_generator(self.config.seed, stream, self.device if device is None else device)

    def generated(self) -> Tensor:
        """The ``config.fd_samples`` model samples of the Fréchet distances (drawn once, stream 101)."""
        if self._generated is None:
            self._generated = generate(self.model, self.config.fd_samples, self.config.seed, self.config.batch_size)
        return self._generated


def generate(model: Model, n: int, seed: int, batch_size: int) -> Tensor:
    """``n`` samples ``x ~ p(x)`` in batches of ``batch_size``, from ``seeded_generator(seed, 101)``."""
    generator = seeded_generator(seed, 101, module_device(model))
    with torch.no_grad():
        return torch.cat([model.sample(min(batch_size, n - i), generator=generator) for i in range(0, n, batch_size)])


def _batched(x: Tensor, size: int):
    for start in range(0, x.shape[0], size):
        yield start, x[start:start + size]


def _unnormalised_reason(model: Model) -> str:
    return (f"model {type(model).__name__} has an unnormalised log_joint (log Z unknown); no log-likelihood in "
            "nats is reported")


# --------------------------------------------------------------------------------------- evaluators
class Skipped(Exception):
    """Raised by :meth:`Evaluator.run` when only running finds that the evaluator does not apply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Evaluator(abc.ABC):
    """One measure of :func:`evaluate`."""

    name: str
    """Its key under ``seconds`` and ``skipped``."""
    keys: tuple[str, ...] = ()
    """The result keys of its figures, set to ``None`` when it is skipped."""

    def skip_reason(self, context: EvalContext) -> str | None:
        """Why it does not apply to this model, sampler and data (``None``: it does). Default: it does."""
        return None

    @abc.abstractmethod
    def run(self, context: EvalContext) -> dict[str, Any]:
        """The result entries it measures (or :class:`Skipped`)."""


class Reconstruction(Evaluator):
    """``test_reconstruction_mse``: mean squared error of ``E[x | z]``, ``z`` from the run's sampler."""

    name = "reconstruction"
    keys = ("test_reconstruction_mse",)

    def run(self, context: EvalContext) -> dict[str, Any]:
        return {"test_reconstruction_mse": reconstruction_mse(context.model, context.sampler, context.x,
                                                              seed=context.config.seed,
                                                              batch_size=context.config.batch_size)}


class ReferenceReconstruction(Evaluator):
    """``test_reconstruction_mse_reference``: the same with the common reference inference (a long
    noise-free gradient flow, :mod:`inferkit.eval.reference`), and how its step size was set."""

    name = "reference reconstruction"
    keys = ("test_reconstruction_mse_reference",)

    def skip_reason(self, context: EvalContext) -> str | None:
        if context.model.latent_support is not constraints.real:  # the reference is a gradient flow on z
            return "the model's latents are not real-valued"
        return None

    def run(self, context: EvalContext) -> dict[str, Any]:
        config = context.config
        reference, record = reference_sampler(context.model, context.x[:32], num_steps=config.reference_steps,
                                              step_size=config.reference_step_size, seed=config.seed)
        mse = reconstruction_mse(context.model, reference, context.x, seed=config.seed, batch_size=config.batch_size)
        return {"test_reconstruction_mse_reference": mse, "reference_inference": record}


class Inpainting(Evaluator):
    """``inpainting_mse``: per mask pattern, the mean squared error over hidden pixels of ``E[x | z]`` with
    ``z`` inferred from the observed pixels; the first batch's images when figures are written."""

    name = "inpainting"
    keys = ("inpainting_mse",)

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns

    def skip_reason(self, context: EvalContext) -> str | None:
        if not context.model.supports_mask:
            return f"model {type(context.model).__name__} cannot mask its likelihood"
        return None

    def run(self, context: EvalContext) -> dict[str, Any]:
        scores = {pattern: self._score(context, p, pattern) for p, pattern in enumerate(self.patterns)}
        return {"inpainting_mse": scores}

    def _score(self, context: EvalContext, p: int, pattern: str) -> float:
        """Hidden-pixel MSE of pattern number ``p`` over the first ``inpaint_examples`` test rows."""
        model, config = context.model, context.config
        squared, hidden = 0.0, 0.0
        for start, chunk in _batched(context.x[:config.inpaint_examples], config.batch_size):
            mask = inpainting.make_mask(pattern, chunk.shape[0], tuple(model.data_shape),
                                        generator=context.generator(1000 * (p + 1) + start, "cpu"),
                                        device=context.device)
            filled = inpainting.inpaint(model, context.sampler, chunk, mask,
                                        generator=context.generator(2000 * (p + 1) + start))
            s, h = inpainting.hidden_mse(chunk, filled, mask)
            squared, hidden = squared + s, hidden + h
            if start == 0 and context.writes_figures:
                path = figures.save_inpainting(chunk[:16], mask[:16], filled[:16],
                                               context.out_dir / f"eval_inpainting_{pattern}.png")
                context.figure_paths.append(path.name)
        return squared / max(hidden, 1.0)


class AISLogLikelihood(Evaluator):
    """``ais_log_likelihood``: the AIS estimate of ``log p(x)`` (:mod:`inferkit.eval.ais`) on the first
    ``ais_examples`` test rows, for a normalised model."""

    name = "AIS"
    keys = ("ais_log_likelihood",)

    def run(self, context: EvalContext) -> dict[str, Any]:
        config = context.config
        estimates, acceptance = [], []
        for start, chunk in _batched(context.x[:config.ais_examples], max(1, 256 // config.ais_chains)):
            out = ais.ais_log_likelihood(context.model, chunk, num_chains=config.ais_chains,
                                         num_steps=config.ais_steps, leapfrog_steps=config.ais_leapfrog,
                                         generator=context.generator(3000 + start))
            estimates.append(out.log_likelihood)
            acceptance.append(out.acceptance_rate)
        values = torch.cat(estimates)
        summary = ais.AISResult(values, sum(acceptance) / len(acceptance), math.nan)
        return {"ais_log_likelihood": {
            "mean": summary.mean, "standard_error": summary.standard_error, "examples": int(values.numel()),
            "chains": config.ais_chains, "intermediate_distributions": config.ais_steps,
            "leapfrog_steps": config.ais_leapfrog, "acceptance_rate": summary.acceptance_rate,
            "per_example": values.tolist()}}


class UnnormalizedLogLikelihood(Evaluator):
    """``ais_log_likelihood`` of an :class:`~inferkit.interfaces.UnnormalizedModel`: its own estimate, else,
    for an RBM prior, :func:`inferkit.eval.rbm.rbm_log_likelihood` with the sampler's encoder; skipped
    when there is neither (``log Z`` unknown)."""

    name = "log-likelihood (the model's own estimator)"
    keys = ("ais_log_likelihood",)

    def run(self, context: EvalContext) -> dict[str, Any]:
        model, sampler, config = context.model, context.sampler, context.config
        x = context.x[:config.ais_examples]
        options = {"num_chains": config.ais_chains, "num_steps": config.ais_steps,
                   "num_samples": config.iwae_samples or 64, "generator": context.generator(3000)}
        estimate = model.estimate_log_likelihood(x, sampler, **options)
        if estimate is None and isinstance(model, RBMPriorModel):
            if not isinstance(sampler, HasBernoulliEncoder):
                raise UserError(f"{type(model).__name__}: log p(x) needs an encoder q(z|x); sampler "
                                f"{type(sampler).__name__} has none (use vimco or rws), or pass --ais-examples 0")
            estimate = rbm_log_likelihood(model, sampler, x, **options)
        if estimate is None:
            raise Skipped(_unnormalised_reason(model))
        return {"ais_log_likelihood": estimate}


class IWAEBound(Evaluator):
    """``iwae_bound``: the importance-weighted bound (:mod:`inferkit.eval.iwae`) for a normalised model
    and an amortized sampler."""

    name = "IWAE"
    keys = ("iwae_bound",)

    def skip_reason(self, context: EvalContext) -> str | None:
        if isinstance(context.model, UnnormalizedModel):
            return _unnormalised_reason(context.model)
        if not iwae.is_amortized(context.model, context.sampler, context.x):
            return f"sampler {type(context.sampler).__name__} is not amortized (its inference has no log q)"
        return None

    def run(self, context: EvalContext) -> dict[str, Any]:
        config = context.config
        per_batch = max(1, 512 // config.iwae_samples)
        bounds = torch.cat([iwae.iwae_bound(context.model, context.sampler, chunk, config.iwae_samples,
                                            generator=context.generator(4000 + start)).cpu()
                            for start, chunk in _batched(context.x[:config.iwae_examples], per_batch)])
        error = float(bounds.std() / math.sqrt(bounds.numel())) if bounds.numel() > 1 else math.nan
        return {"iwae_bound": {"mean": float(bounds.mean()), "standard_error": error,
                               "samples": config.iwae_samples, "examples": int(bounds.numel())}}


class FID(Evaluator):
    """``fid``: the Fréchet Inception distance of ``fd_samples`` generated and as many test images."""

    name = "FID"
    keys = ("fid",)

    def run(self, context: EvalContext) -> dict[str, Any]:
        generated, real = context.generated(), context.x_all[:context.config.fd_samples]
        fid = frechet.frechet_distance_of_features(inception.inception_features(context.network, generated),
                                                   inception.inception_features(context.network, real))
        return {"fid": fid, "fid_samples": [int(generated.shape[0]), int(real.shape[0])]}


class ClassifierFrechetDistance(Evaluator):
    """``classifier_frechet_distance``: the Fréchet distance of generated and test images in the features
    of a classifier trained on the data's labels or factors (and of train and test images, for scale)."""

    name = "classifier Fréchet distance"
    keys = ("classifier_frechet_distance", "classifier_frechet_distance_train_vs_test")

    def skip_reason(self, context: EvalContext) -> str | None:
        if classifier.classifier_targets(context.data) is None:
            return f"data set {context.data.name} carries no labels or factors"
        return None

    def run(self, context: EvalContext) -> dict[str, Any]:
        config, data = context.config, context.data
        path = Path(config.classifier) if config.classifier else (
            (context.out_dir or Path(".")) / "feature_classifier.pt")
        net, info, trained = classifier.classifier_for(data, path, iterations=config.classifier_iterations,
                                                       seed=config.seed, device=context.device)
        if trained:
            context.log(f"trained the feature classifier ({path}); test accuracy {info['test_accuracy']}")
        context.feature_net = net
        real = context.x_all[:config.fd_samples]
        fake_features = net.feature_batches(context.generated())
        real_features = net.feature_batches(real)
        train_features = net.feature_batches(data.train.x[:real.shape[0]].to(context.device))
        return {"classifier_frechet_distance": frechet.frechet_distance_of_features(fake_features, real_features),
                "classifier_frechet_distance_train_vs_test": frechet.frechet_distance_of_features(
                    train_features, real_features),
                "classifier": {"path": str(path), **info}}


class FactorCheck(Evaluator):
    """``hierarchy_factors``: which latent layer changes which known factor, read by the feature classifier."""

    name = "factor check"

    def skip_reason(self, context: EvalContext) -> str | None:
        if not context.data.factor_names:
            return f"data set {context.data.name} has no known factors"
        if context.model.num_layers < 2:
            return "the model has one latent layer"
        if context.feature_net is None:
            return "no feature classifier"
        return None

    def run(self, context: EvalContext) -> dict[str, Any]:
        return {"hierarchy_factors": hierarchy.factor_changes(
            context.model, context.feature_net, tuple(context.data.factor_names),
            num_rows=context.config.factor_rows, seed=context.config.seed)}


class Figures(Evaluator):
    """The PNG figures: samples, reconstructions, and one traversal per latent layer."""

    name = "figures"

    def run(self, context: EvalContext) -> dict[str, Any]:
        model, config, out = context.model, context.config, context.out_dir
        samples = context.generated()[:64] if config.fd_samples else generate(model, 64, config.seed, 64)
        context.figure_paths.append(figures.save_samples(samples, out / "eval_samples.png").name)
        originals = context.x[:32]
        recon = reconstruct(model, context.sampler, originals, generator=context.generator(11))
        context.figure_paths.append(figures.save_reconstructions(originals, recon,
                                                                 out / "eval_reconstructions.png").name)
        if model.num_layers > 1:
            for layer, images in enumerate(hierarchy.layer_traversal_images(model, seed=config.seed)):
                path = figures.save_traversal(images, 8, out / f"eval_hierarchy_z{layer + 1}.png")
                context.figure_paths.append(path.name)
        return {}


def evaluators(context: EvalContext) -> list[Evaluator]:
    """The evaluators :attr:`EvalContext.config` asks for, in the order they run."""
    config, model = context.config, context.model
    patterns = config.inpaint_patterns if context.is_image else tuple(
        p for p in config.inpaint_patterns if p == "random-pixels")
    images = bool(config.fd_samples) and context.is_image
    chosen: list[tuple[bool, Callable[[], Evaluator]]] = [
        (True, Reconstruction),
        (bool(config.reference_steps), ReferenceReconstruction),
        (bool(config.inpaint_examples and patterns), lambda: Inpainting(patterns)),
        (bool(config.ais_examples) and not isinstance(model, UnnormalizedModel), AISLogLikelihood),
        (bool(config.ais_examples) and isinstance(model, UnnormalizedModel), UnnormalizedLogLikelihood),
        (bool(config.iwae_samples), IWAEBound),
        (images and context.network is not None, FID),
        (images, ClassifierFrechetDistance),
        (images and bool(config.factor_rows), FactorCheck),
        (context.writes_figures, Figures),
    ]
    return [make() for wanted, make in chosen if wanted]


# ------------------------------------------------------------------------------------- the evaluation
def _context(model: Model, sampler: Sampler, data: DataSet, config: EvalConfig, out_dir: Path | None,
             log: Callable[[str], None]) -> EvalContext:
    """The evaluation's context; loads the Inception network first, so a wrong path fails before any
    long computation."""
    device = module_device(model)
    network = None
    if config.inception_weights is not None:
        if not is_image_shape(tuple(model.data_shape)):
            raise UserError("FID needs image data; drop --inception-weights for this model")
        network = inception.load_fid_inception(config.inception_weights, device)
    x_all = data.test.x.to(device)
    x = x_all if config.num_examples == 0 else x_all[:config.num_examples]
    return EvalContext(model, sampler, data, config, out_dir, device, x_all, x, network=network, log=log)


def evaluate(model: Model, sampler: Sampler, data: DataSet, config: EvalConfig | None = None, *,
             out_dir: str | Path | None = None, log: Callable[[str], None] = lambda message: None
             ) -> dict[str, Any]:
    """Every measure of :class:`EvalConfig` on ``data.test`` (figures and the classifier go to
    ``out_dir`` when given); returns a JSON-ready dict: the evaluators' entries, ``skipped``
    (evaluator name -> why it does not apply), ``figures`` (file names) and ``seconds`` per evaluator."""
    config = config or EvalConfig()
    config.validate()
    context = _context(model, sampler, data, config, Path(out_dir) if out_dir is not None else None, log)
    model.eval()
    sampler.eval()
    result: dict[str, Any] = {"test_examples": int(context.x.shape[0])}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for evaluator in evaluators(context):
        reason = evaluator.skip_reason(context)
        if reason is None:
            log(f"{evaluator.name} ...")
            began = time.perf_counter()
            try:
                result.update(evaluator.run(context))
                seconds[evaluator.name] = time.perf_counter() - began
            except Skipped as skip:
                reason = skip.reason
        if reason is not None:
            result.update(dict.fromkeys(evaluator.keys))
            skipped[evaluator.name] = reason
            log(f"{evaluator.name} skipped: {reason}")
    result["skipped"] = skipped
    result["figures"] = sorted(context.figure_paths)
    result["seconds"] = seconds
    return result
