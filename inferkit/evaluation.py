"""Evaluation of a trained model and sampler (the façade over :mod:`inferkit.eval`).

:func:`evaluate` measures, on the test split: reconstruction MSE with the run's own sampler and
with one common reference inference; inpainting MSE on hidden pixels for several mask patterns;
the AIS estimate of ``log p(x)``; the IWAE bound for amortized samplers; FID (given the Inception
weights file); a Fréchet distance in the features of a classifier trained on the data; and, on
data with known factors, which latent layer changes which factor. It also writes the figures.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import HasLogLikelihoodEstimate, Model, Sampler


def seeded_generator(seed: int, stream: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` fixed by ``(seed, stream)`` alone, e.g. stream = iteration."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + stream) % (2**63 - 1))


def reconstruct(model: Model, sampler: Sampler, x: Tensor, *, generator: torch.Generator | None = None,
                mask: Tensor | None = None) -> Tensor:
    """``E[x | z]`` at ``z ~ q(z | x)`` inferred by ``sampler``."""
    z = sampler.infer(model, x, mask=mask, generator=generator).z
    with torch.no_grad():
        return model.decode(z)


def reconstruction_mse(model: Model, sampler: Sampler, x: Tensor, *, seed: int = 0, batch_size: int = 64) -> float:
    """Mean squared error ``mean (x - E[x | z])^2`` over ``x``, with ``z`` inferred by ``sampler``."""
    total, count = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        generator = seeded_generator(seed, start, chunk.device)
        recon = reconstruct(model, sampler, chunk, generator=generator)
        total += float((recon - chunk).pow(2).sum())
        count += chunk.numel()
    return total / count


# ------------------------------------------------------------------------------------ full evaluation
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
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise UserError(f"{field.name.replace('_', '-')} must be >= 0, got {value}")
        for name in ("batch_size", "ais_chains", "ais_leapfrog", "classifier_iterations"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.reference_step_size is not None and not (math.isfinite(self.reference_step_size)
                                                         and self.reference_step_size > 0):
            raise UserError(f"reference-step-size must be positive, got {self.reference_step_size}")
        from inferkit.eval.inpainting import MASK_PATTERNS

        for pattern in self.inpaint_patterns:
            if pattern not in MASK_PATTERNS:
                raise UserError(f"unknown mask pattern {pattern!r}; use one of {', '.join(MASK_PATTERNS)}")


def _batched(x: Tensor, size: int):
    for start in range(0, x.shape[0], size):
        yield start, x[start:start + size]


def _device_of(model: Model) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else next(model.buffers()).device


def _generated(model: Model, n: int, seed: int, batch_size: int) -> Tensor:
    device = _device_of(model)
    generator = seeded_generator(seed, 101, device)
    with torch.no_grad():
        return torch.cat([model.sample(min(batch_size, n - i), generator=generator) for i in range(0, n, batch_size)])


def evaluate(model: Model, sampler: Sampler, data, config: EvalConfig | None = None, *,
             out_dir: str | Path | None = None, log: Callable[[str], None] = lambda message: None
             ) -> dict[str, Any]:
    """Every measure of :class:`EvalConfig` on ``data.test`` (figures and the classifier go to
    ``out_dir`` when given); returns a JSON-ready dict."""
    from inferkit.eval import ais, classifier, figures, frechet, hierarchy, inception, inpainting, iwae
    from inferkit.eval.reference import reference_sampler
    from inferkit.images import is_image_shape

    config = config or EvalConfig()
    config.validate()
    out_dir = Path(out_dir) if out_dir is not None else None
    device = _device_of(model)
    is_image = is_image_shape(tuple(model.data_shape))
    network = None
    if config.inception_weights is not None:  # a wrong path fails before any long computation
        if not is_image:
            raise UserError("FID needs image data; drop --inception-weights for this model")
        network = inception.load_fid_inception(config.inception_weights, device)
    model.eval()
    sampler.eval()
    x_all = data.test.x.to(device)
    x = x_all if config.num_examples == 0 else x_all[:config.num_examples]
    result: dict[str, Any] = {"test_examples": int(x.shape[0])}
    seconds: dict[str, float] = {}
    figure_paths: list[str] = []
    seed = config.seed

    def timed(name: str):
        class _Timer:
            def __enter__(self):
                log(f"{name} ...")
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                seconds[name] = time.perf_counter() - self.start

        return _Timer()

    with timed("reconstruction"):
        result["test_reconstruction_mse"] = reconstruction_mse(model, sampler, x, seed=seed,
                                                               batch_size=config.batch_size)
    real_latents = getattr(model, "latent_support", "real") == "real"
    if config.reference_steps and not real_latents:  # the reference is a gradient flow on z
        result["test_reconstruction_mse_reference"] = None
        result["reference_inference"] = {"skipped": "the model's latents are not real-valued"}
    if config.reference_steps and real_latents:
        with timed("reference reconstruction"):
            reference, record = reference_sampler(model, x[:32], num_steps=config.reference_steps,
                                                  step_size=config.reference_step_size, seed=seed)
            result["test_reconstruction_mse_reference"] = reconstruction_mse(
                model, reference, x, seed=seed, batch_size=config.batch_size)
            result["reference_inference"] = record

    patterns = config.inpaint_patterns if is_image else tuple(p for p in config.inpaint_patterns
                                                               if p == "random-pixels")
    if config.inpaint_examples and patterns and not getattr(model, "supports_mask", True):
        result["inpainting_mse"] = None
        result["inpainting_skipped"] = f"model {type(model).__name__} cannot mask its likelihood"
        log(result["inpainting_skipped"])
    elif config.inpaint_examples and patterns:
        with timed("inpainting"):
            x_inpaint = x[:config.inpaint_examples]
            scores = {}
            for p, pattern in enumerate(patterns):
                squared, hidden = 0.0, 0.0
                for start, chunk in _batched(x_inpaint, config.batch_size):
                    generator = seeded_generator(seed, 1000 * (p + 1) + start, "cpu")
                    mask = inpainting.make_mask(pattern, chunk.shape[0], tuple(model.data_shape),
                                                generator=generator, device=device)
                    filled = inpainting.inpaint(model, sampler, chunk, mask,
                                                generator=seeded_generator(seed, 2000 * (p + 1) + start, device))
                    s, h = inpainting.hidden_mse(chunk, filled, mask)
                    squared, hidden = squared + s, hidden + h
                    if start == 0 and config.figures and out_dir is not None and is_image:
                        path = figures.save_inpainting(chunk[:16], mask[:16], filled[:16],
                                                       out_dir / f"eval_inpainting_{pattern}.png")
                        figure_paths.append(path.name)
                scores[pattern] = squared / max(hidden, 1.0)
            result["inpainting_mse"] = scores

    normalized = getattr(model, "normalized", True)
    if not normalized and config.ais_examples and isinstance(model, HasLogLikelihoodEstimate):
        with timed("log-likelihood (the model's own estimator)"):
            result["ais_log_likelihood"] = model.estimate_log_likelihood(
                x[:config.ais_examples], sampler, num_chains=config.ais_chains, num_steps=config.ais_steps,
                num_samples=config.iwae_samples or 64, generator=seeded_generator(seed, 3000, device))
        result["iwae_bound"] = None
    elif not normalized and (config.ais_examples or config.iwae_samples):
        # log_joint is known only up to log Z: an AIS or IWAE figure would be off by an unknown constant.
        result["ais_log_likelihood"] = result["iwae_bound"] = None
        result["log_likelihood_refused"] = (f"model {type(model).__name__} has an unnormalised log_joint (log Z "
                                            "unknown); no log-likelihood in nats is reported")
        log(result["log_likelihood_refused"])
    if config.ais_examples and normalized:
        with timed("AIS"):
            estimates, acceptance = [], []
            per_batch = max(1, 256 // config.ais_chains)
            for start, chunk in _batched(x[:config.ais_examples], per_batch):
                out = ais.ais_log_likelihood(model, chunk, num_chains=config.ais_chains, num_steps=config.ais_steps,
                                             leapfrog_steps=config.ais_leapfrog,
                                             generator=seeded_generator(seed, 3000 + start, device))
                estimates.append(out.log_likelihood)
                acceptance.append(out.acceptance_rate)
            values = torch.cat(estimates)
            summary = ais.AISResult(values, sum(acceptance) / len(acceptance), math.nan)
            result["ais_log_likelihood"] = {
                "mean": summary.mean, "standard_error": summary.standard_error, "examples": int(values.numel()),
                "chains": config.ais_chains, "intermediate_distributions": config.ais_steps,
                "leapfrog_steps": config.ais_leapfrog, "acceptance_rate": summary.acceptance_rate,
                "per_example": values.tolist()}

    if config.iwae_samples and normalized:
        if iwae.is_amortized(model, sampler, x):
            with timed("IWAE"):
                per_batch = max(1, 512 // config.iwae_samples)
                bounds = torch.cat([iwae.iwae_bound(model, sampler, chunk, config.iwae_samples,
                                                    generator=seeded_generator(seed, 4000 + start, device)).cpu()
                                    for start, chunk in _batched(x[:config.iwae_examples], per_batch)])
                result["iwae_bound"] = {"mean": float(bounds.mean()), "standard_error": float(
                    bounds.std() / math.sqrt(bounds.numel())) if bounds.numel() > 1 else math.nan,
                    "samples": config.iwae_samples, "examples": int(bounds.numel())}
        else:
            result["iwae_bound"] = None  # not an amortized sampler

    generated = None
    if config.fd_samples and is_image:
        generated = _generated(model, config.fd_samples, seed, config.batch_size)
        real = x_all[:config.fd_samples]
        if network is not None:
            with timed("FID"):
                result["fid"] = frechet.frechet_distance_of_features(
                    inception.inception_features(network, generated), inception.inception_features(network, real))
                result["fid_samples"] = [int(generated.shape[0]), int(real.shape[0])]
        net = None
        if classifier.classifier_targets(data) is not None:
            with timed("classifier Fréchet distance"):
                path = Path(config.classifier) if config.classifier else (
                    (out_dir or Path(".")) / "feature_classifier.pt")
                net, info, trained = classifier.classifier_for(data, path, iterations=config.classifier_iterations,
                                                               seed=seed, device=device)
                if trained:
                    log(f"trained the feature classifier ({path}); test accuracy {info['test_accuracy']}")
                fake_features = net.feature_batches(generated)
                real_features = net.feature_batches(real)
                train_features = net.feature_batches(data.train.x[:real.shape[0]].to(device))
                result["classifier_frechet_distance"] = frechet.frechet_distance_of_features(
                    fake_features, real_features)
                result["classifier_frechet_distance_train_vs_test"] = frechet.frechet_distance_of_features(
                    train_features, real_features)
                result["classifier"] = {"path": str(path), **info}
        if net is not None and getattr(data, "factor_names", None) and model.num_layers > 1:
            with timed("factor check"):
                result["hierarchy_factors"] = hierarchy.factor_changes(
                    model, net, tuple(data.factor_names), num_rows=config.factor_rows, seed=seed)

    if config.figures and out_dir is not None and is_image:
        with timed("figures"):
            samples = generated[:64] if generated is not None else _generated(model, 64, seed, 64)
            figure_paths.append(figures.save_samples(samples, out_dir / "eval_samples.png").name)
            originals = x[:32]
            recon = reconstruct(model, sampler, originals, generator=seeded_generator(seed, 11, device))
            figure_paths.append(figures.save_reconstructions(originals, recon,
                                                             out_dir / "eval_reconstructions.png").name)
            if model.num_layers > 1:
                for layer, images in enumerate(hierarchy.layer_traversal_images(model, seed=seed)):
                    path = figures.save_traversal(images, 8, out_dir / f"eval_hierarchy_z{layer + 1}.png")
                    figure_paths.append(path.name)
    result["figures"] = sorted(figure_paths)
    result["seconds"] = seconds
    return result
