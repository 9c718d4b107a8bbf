"""Evaluation of a trained model and sampler (the façade over :mod:`inferkit.eval`).

:func:`evaluate` runs a list of :class:`Evaluator` on the test split: reconstruction MSE with the run's
own sampler and with one common reference inference; inpainting MSE on hidden pixels for several mask
patterns; an estimate of ``log p(x)`` (AIS, or an unnormalised model's own estimator), in nats and, on
quantised data, in bits per dimension; the BDMC gap of the AIS settings on simulated data; the IWAE bound
for amortized samplers; FID (given the Inception weights file) against training-image statistics; a
Fréchet distance in the features of a classifier trained on the data (not FID: its numbers are not
comparable with FID values); on data with known factors, which latent layer changes which factor;
and the figures. Each evaluator is timed (``seconds``); one that does not apply is recorded under
``skipped`` with the reason, and its figures are ``None``.

Every measure uses one fixed test subset: a permutation of the test split drawn from ``subset_seed``
(recorded with its indices), of which each measure takes a prefix, so AIS and IWAE share their images and
two runs evaluated with the same ``subset_seed`` are paired image by image. Per-image values go to
``eval_per_image.json`` (:mod:`inferkit.eval.paired`, ``inferkit compare``).
"""

from __future__ import annotations

import abc
import dataclasses
import json
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
from inferkit.eval import (
    ais,
    classifier,
    figures,
    frechet,
    hierarchy,
    inception,
    inpainting,
    iwae,
    paired,
    units,
)
from inferkit.eval.rbm import BUDGETS as RBM_BUDGETS
from inferkit.eval.rbm import rbm_log_likelihood
from inferkit.eval.reconstruction import reconstruct, reconstruction_errors
from inferkit.eval.reference import reference_sampler
from inferkit.images import is_image_shape
from inferkit.interfaces import (
    DataSet,
    HasBernoulliEncoder,
    Model,
    RBMPriorModel,
    Sampler,
    SimulatesObservations,
    UnnormalizedModel,
)
from inferkit.seeding import seeded_generator


@dataclass
class EvalConfig:
    """What :func:`evaluate` measures and on how much data (a count of 0 skips that part)."""

    num_examples: int = 0
    """Test examples for reconstruction and inpainting (0: all)."""
    seed: int = 0
    """Seed of every Monte Carlo draw (inference, AIS chains, masks, samples)."""
    subset_seed: int = 0
    """Seed of the test subset: a permutation of the test split, the same for every measure and every run."""
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
    ais_base: str = "laplace"
    """The AIS base q(z): ``laplace`` (a Gaussian at each posterior mode) or ``prior``."""
    bdmc_examples: int = 4
    """Simulated examples (z ~ p(z), x ~ p(x | z)) for the BDMC gap of the AIS settings (0: skip)."""
    rbm_budget: str = "default"
    """RBM-prior log-likelihood budget: ``default`` or ``paper`` (:data:`inferkit.eval.rbm.BUDGETS`)."""
    iwae_samples: int = 64
    iwae_examples: int = 256
    fd_samples: int = 1000
    """Generated samples (and at most as many test images) for the classifier Fréchet distance."""
    fid_samples: int = 1000
    """Generated samples N for FID (the papers use 40,000 or 50,000; FID is biased upwards at small N, so
    compare FIDs only at one N)."""
    fid_reference: str = "train"
    """The images of FID's reference statistics: ``train`` (as the papers) or ``test``."""
    fid_reference_samples: int = 0
    """How many of them (0: all)."""
    fid_cache: str | None = None
    """Folder of cached reference statistics (None: ``~/.cache/inferkit/fid``)."""
    inception_sha256: str = inception.WEIGHTS_SHA256
    """The SHA-256 the Inception weights file must have."""
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
        choices = {"ais_base": ais.BASES, "fid_reference": ("train", "test"), "rbm_budget": tuple(RBM_BUDGETS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, name)!r}")
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
    """The whole test split, on ``device``, in its own order."""
    indices: Tensor
    """The test subset: the first ``config.num_examples`` (all when 0) of a permutation of the test split
    drawn from ``config.subset_seed``; every measure takes a prefix of it."""
    x: Tensor
    """``x_all[indices]``."""
    network: inception.FIDInceptionV3 | None = None
    log: Callable[[str], None] = lambda message: None
    """Where progress messages go."""
    feature_net: classifier.FeatureClassifier | None = None
    figure_paths: list[str] = field(default_factory=list)
    per_image: dict[str, Any] = field(default_factory=dict)
    """Per-image values by measure, in the order of :attr:`indices` (written to ``eval_per_image.json``)."""
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

    def generated(self, n: int | None = None) -> Tensor:
        """The first ``n`` (default ``config.fd_samples``) of the model samples of the Fréchet distances
        (``max(fd_samples, fid_samples)`` drawn once, stream 101)."""
        if self._generated is None:
            total = max(self.config.fd_samples, self.config.fid_samples if self.network is not None else 0)
            self._generated = generate(self.model, total, self.config.seed, self.config.batch_size)
        return self._generated[:self.config.fd_samples if n is None else n]


def generate(model: Model, n: int, seed: int, batch_size: int) -> Tensor:
    """``n`` samples ``x ~ p(x)`` in batches of ``batch_size``, from ``seeded_generator(seed, 101)``."""
    generator = seeded_generator(seed, 101, module_device(model))
    with torch.no_grad():
        return torch.cat([model.sample(min(batch_size, n - i), generator=generator) for i in range(0, n, batch_size)])


def _batched(x: Tensor, size: int):
    for start in range(0, x.shape[0], size):
        yield start, x[start:start + size]


def _values(values: Tensor) -> list[float | None]:
    """A per-image tensor as a JSON list (non-finite values as ``None``)."""
    return [v if math.isfinite(v) else None for v in values.double().tolist()]


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
        errors = reconstruction_errors(context.model, context.sampler, context.x, seed=context.config.seed,
                                       batch_size=context.config.batch_size)
        context.per_image["reconstruction_mse"] = _values(errors)
        return {"test_reconstruction_mse": float(errors.mean())}


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
        errors = reconstruction_errors(context.model, reference, context.x, seed=config.seed,
                                       batch_size=config.batch_size)
        context.per_image["reconstruction_mse_reference"] = _values(errors)
        return {"test_reconstruction_mse_reference": float(errors.mean()), "reference_inference": record}


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
        squared, hidden, per_image = 0.0, 0.0, []
        for start, chunk in _batched(context.x[:config.inpaint_examples], config.batch_size):
            mask = inpainting.make_mask(pattern, chunk.shape[0], tuple(model.data_shape),
                                        generator=context.generator(1000 * (p + 1) + start, "cpu"),
                                        device=context.device)
            filled = inpainting.inpaint(model, context.sampler, chunk, mask,
                                        generator=context.generator(2000 * (p + 1) + start))
            s, h = inpainting.hidden_mse(chunk, filled, mask)
            squared, hidden = squared + s, hidden + h
            per_image.append(inpainting.hidden_errors(chunk, filled, mask))
            if start == 0 and context.writes_figures:
                path = figures.save_inpainting(chunk[:16], mask[:16], filled[:16],
                                               context.out_dir / f"eval_inpainting_{pattern}.png")
                context.figure_paths.append(path.name)
        context.per_image.setdefault("inpainting_mse", {})[pattern] = _values(torch.cat(per_image))
        return squared / max(hidden, 1.0)


def _ais_settings(config: EvalConfig) -> dict[str, Any]:
    return {"num_chains": config.ais_chains, "num_steps": config.ais_steps, "leapfrog_steps": config.ais_leapfrog,
            "base": config.ais_base}


def _run_ais(context: EvalContext, x: Tensor, stream: int, z: Tensor | None = None) -> ais.AISResult:
    """Forward AIS (or, given exact posterior samples ``z``, reverse AIS) on ``x`` in chunks of 256 chains."""
    config = context.config
    parts = []
    for start, chunk in _batched(x, max(1, 256 // config.ais_chains)):
        generator = context.generator(stream + start)
        if z is None:
            parts.append(ais.ais_log_likelihood(context.model, chunk, generator=generator, **_ais_settings(config)))
        else:
            parts.append(ais.reverse_ais_log_likelihood(context.model, chunk, z[start:start + chunk.shape[0]],
                                                        generator=generator, **_ais_settings(config)))
    return ais.AISResult(torch.cat([p.log_likelihood for p in parts]), torch.cat([p.monte_carlo_error for p in parts]),
                         torch.cat([p.log_weights for p in parts]),
                         sum(p.acceptance_rate for p in parts) / len(parts),
                         sum(p.step_size for p in parts) / len(parts))


def _summary(result: ais.AISResult) -> dict[str, Any]:
    n = result.log_likelihood.numel()
    spread = result.between_image_std
    return {"mean": result.mean, "standard_error": result.standard_error,
            "standard_error_kind": "Monte Carlo (run to run, on these images)",
            "between_image_std": spread, "between_image_standard_error": spread / math.sqrt(n) if n > 1 else math.nan,
            "examples": n}


class AISLogLikelihood(Evaluator):
    """``ais_log_likelihood``: the AIS estimate of ``log p(x)`` (:mod:`inferkit.eval.ais`) on the first
    ``ais_examples`` images of the test subset, for a normalised model. On quantised data
    (:attr:`DataSet.levels`) the images are dequantised first and the estimate is also given in bits per
    dimension (:mod:`inferkit.eval.units`)."""

    name = "AIS"
    keys = ("ais_log_likelihood",)

    def skip_reason(self, context: EvalContext) -> str | None:
        if context.model.latent_support is not constraints.real:
            return "the model's latents are not real-valued (HMC needs gradients in z)"
        return None

    def run(self, context: EvalContext) -> dict[str, Any]:
        config, levels = context.config, context.data.levels
        x = context.x[:config.ais_examples]
        if levels is not None:
            x = units.dequantise(x, levels, generator=context.generator(3500))
        result = _run_ais(context, x, 3000)
        context.per_image["ais_log_likelihood"] = _values(result.log_likelihood)
        context.per_image["ais_monte_carlo_error"] = _values(result.monte_carlo_error)
        record = {**_summary(result), "chains": config.ais_chains, "intermediate_distributions": config.ais_steps,
                  "leapfrog_steps": config.ais_leapfrog, "base": config.ais_base,
                  "acceptance_rate": result.acceptance_rate, "step_size": result.step_size,
                  "dequantised": levels is not None, "per_example": result.log_likelihood.tolist()}
        if levels is not None:
            dims = math.prod(context.model.data_shape)
            bpd = units.bits_per_dim(result.log_likelihood, dims, levels)
            context.per_image["ais_bits_per_dim"] = _values(bpd)
            scale = 1 / (dims * math.log(2))
            record["bits_per_dim"] = {"mean": float(bpd.mean()), "standard_error": result.standard_error * scale,
                                      "levels": levels, "formula": "-(log p(x~) + D log(2/(levels-1))) / (D ln 2)"}
        return {"ais_log_likelihood": record}


class BDMCGap(Evaluator):
    """``ais_bdmc``: the certificate of the AIS settings (Grosse et al. 2015; Wu et al. 2017). On
    ``bdmc_examples`` data simulated from the model (``z ~ p(z)``, ``x ~ p(x | z)``, so ``z`` is an exact
    posterior sample of ``x``) forward AIS is a stochastic lower bound and reverse AIS from ``z`` a stochastic
    upper bound on ``log p(x)``; their gap bounds the error of the AIS settings on such data."""

    name = "BDMC"
    keys = ("ais_bdmc",)

    def skip_reason(self, context: EvalContext) -> str | None:
        if not isinstance(context.model, SimulatesObservations):
            return f"model {type(context.model).__name__} cannot draw x ~ p(x | z)"
        if context.model.latent_support is not constraints.real:
            return "the model's latents are not real-valued"
        return None

    def run(self, context: EvalContext) -> dict[str, Any]:
        model, n = context.model, context.config.bdmc_examples
        generator = context.generator(5000)
        with torch.no_grad():
            z = model.sample_prior(n, generator=generator)
            x = model.sample_observation(z, generator=generator)
        flat = torch.cat([t.reshape(n, -1) for t in z], 1)
        forward, reverse = _run_ais(context, x, 5100), _run_ais(context, x, 5200, z=flat)
        gap = reverse.log_likelihood - forward.log_likelihood
        return {"ais_bdmc": {"examples": n, "forward_mean": forward.mean, "reverse_mean": reverse.mean,
                             "gap_mean": float(gap.mean()), "gap_max": float(gap.max()),
                             "per_example_gap": gap.tolist(), **_ais_settings(context.config)}}


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
            estimate = rbm_log_likelihood(model, sampler, x, **options, budget=config.rbm_budget)
        if estimate is None:
            raise Skipped(_unnormalised_reason(model))
        if "per_example" in estimate:
            context.per_image["ais_log_likelihood"] = list(estimate["per_example"])
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
        log_w = torch.cat([iwae.iwae_log_weights(context.model, context.sampler, chunk, config.iwae_samples,
                                                 generator=context.generator(4000 + start)).cpu()
                           for start, chunk in _batched(context.x[:config.iwae_examples], per_batch)])
        bounds, errors = ais.log_mean_exp_with_error(log_w)
        context.per_image["iwae_bound"] = _values(bounds)
        n = bounds.numel()
        spread = float(bounds.std()) if n > 1 else math.nan
        shared = min(n, config.ais_examples)
        return {"iwae_bound": {"mean": float(bounds.mean()), "standard_error": float(errors.pow(2).sum().sqrt() / n),
                               "standard_error_kind": "Monte Carlo (run to run, on these images)",
                               "between_image_std": spread,
                               "between_image_standard_error": spread / math.sqrt(n) if n > 1 else math.nan,
                               "mean_on_ais_examples": float(bounds[:shared].mean()) if shared else None,
                               "samples": config.iwae_samples, "examples": n}}


class FID(Evaluator):
    """``fid``: the Fréchet Inception distance of ``fid_samples`` generated images to the reference
    statistics of the training images (or the test images, ``fid_reference="test"``), cached per data set,
    split and count (:func:`inferkit.eval.inception.reference_statistics`)."""

    name = "FID"
    keys = ("fid",)

    def run(self, context: EvalContext) -> dict[str, Any]:
        config, data = context.config, context.data
        split = data.train if config.fid_reference == "train" else data.test
        mu, sigma, n_reference = inception.reference_statistics(
            context.network, split.x, name=data.name, split=config.fid_reference, count=config.fid_reference_samples,
            cache=config.fid_cache)
        generated = context.generated(config.fid_samples)
        fake = frechet.gaussian_statistics(inception.inception_features(context.network, generated))
        return {"fid": frechet.frechet_distance(*fake, mu, sigma),
                "fid_setup": {"generated": int(generated.shape[0]), "reference": config.fid_reference,
                              "reference_images": n_reference, "weights_sha256": config.inception_sha256}}


CLASSIFIER_FD_NOTE = ("Fréchet distance in the features of inferkit's own classifier trained on this data set; "
                      "not FID (Inception features), not comparable with published FID values")


class ClassifierFrechetDistance(Evaluator):
    """``classifier_frechet_distance``: the Fréchet distance of generated and test images in the features
    of a classifier trained on the data's labels or factors (and of train and test images, for scale).
    Not FID: another network and other features, so its values are never comparable with FID numbers."""

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
                "classifier_frechet_distance_note": CLASSIFIER_FD_NOTE,
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
    images = context.is_image
    chosen: list[tuple[bool, Callable[[], Evaluator]]] = [
        (True, Reconstruction),
        (bool(config.reference_steps), ReferenceReconstruction),
        (bool(config.inpaint_examples and patterns), lambda: Inpainting(patterns)),
        (bool(config.ais_examples) and not isinstance(model, UnnormalizedModel), AISLogLikelihood),
        (bool(config.ais_examples) and isinstance(model, UnnormalizedModel), UnnormalizedLogLikelihood),
        (bool(config.bdmc_examples and config.ais_examples) and not isinstance(model, UnnormalizedModel), BDMCGap),
        (bool(config.iwae_samples), IWAEBound),
        (images and bool(config.fid_samples) and context.network is not None, FID),
        (images and bool(config.fd_samples), ClassifierFrechetDistance),
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
        network = inception.load_fid_inception(config.inception_weights, device,
                                               expected_sha256=config.inception_sha256)
    x_all = data.test.x.to(device)
    indices = seeded_subset(len(data.test), config.subset_seed, config.num_examples)
    x = x_all[indices.to(x_all.device)]
    return EvalContext(model, sampler, data, config, out_dir, device, x_all, indices, x, network=network, log=log)


def seeded_subset(size: int, seed: int, count: int = 0) -> Tensor:
    """The first ``count`` (0: all) of a permutation of ``range(size)`` drawn from ``seed`` alone."""
    order = torch.randperm(size, generator=seeded_generator(seed, 7, "cpu"))
    return order if count == 0 else order[:count]


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
    result["test_subset"] = {"subset_seed": config.subset_seed, "indices": context.indices.tolist()}
    if context.out_dir is not None:
        write_per_image(context, context.out_dir / paired.PER_IMAGE_FILE)
        result["per_image_file"] = paired.PER_IMAGE_FILE
    return result


def write_per_image(context: EvalContext, path: Path) -> None:
    """``{"subset_seed", "indices", "measures": {name: values in index order}}`` as JSON (atomically)."""
    n = max([0, *(len(v) if isinstance(v, list) else max(map(len, v.values()), default=0)
                  for v in context.per_image.values())])
    record = {"subset_seed": context.config.subset_seed, "indices": context.indices[:n].tolist(),
              "measures": context.per_image}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record))
    partial.replace(path)
