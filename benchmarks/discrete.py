"""Discrete latents under an RBM prior: ``rbm-prior`` trained with ``vimco`` and with
``rws`` on statically binarised MNIST (``binarized-mnist``: the Larochelle-Murray ``.amat`` files when
the data folder holds them, otherwise a fixed-seed Bernoulli draw of the IDX files; same budget, seed
and data), then test log-likelihoods by AIS and RAISE. The folder is ``--data-dir``, else
``$INFERKIT_DATA/mnist`` or the cache (``inferkit data fetch mnist``).

    python benchmarks/discrete.py --budget smoke --out bench/discrete-smoke
    python benchmarks/discrete.py --budget cpu --out bench/discrete-cpu

Each run goes through :func:`inferkit.trainer.train` (autoencoder pre-training, then the RBM on the
codes by CD-1, CD-25 and PCD-25, then VIMCO / RWS; the schedule is the sampler's). Evaluation (:mod:`inferkit.eval.rbm`): ``log Z`` by AIS from
the base-rate model of the encoder's codes on training images; per test image
``log p(x) ~= log (1/K) sum_i p*(x, z_i) / q(z_i | x) - log Z_hat`` (paper eq. 6), and the RAISE
counterpart with a reverse chain per ``z_i``. Writes ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from inferkit.devices import module_device
from inferkit.eval.paired import paired_difference
from inferkit.eval.rbm import ais_log_partition, base_rate_bias, log_likelihood_ais, log_likelihood_raise
from inferkit.models.rbm_prior import RBM_OPTIMIZERS
from inferkit.runs import PluginSpec, RunSpec, TrainConfig, build_objects, write_json_atomic
from inferkit.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported by compare.py
from compare import mnist_folder, parse_seeds

SAMPLERS = ("vimco", "rws")


@dataclass(frozen=True)
class Budget:
    """A preset: model and sampler sizes, training length, evaluation sizes."""

    num_latents: int
    num_hidden: int
    decoder_hidden: tuple[int, ...]
    encoder_hidden: tuple[int, ...]
    num_samples: int
    iterations: int
    pretrain_iterations: int
    rbm_pretrain_iterations: int
    batch_size: int
    num_train: int
    num_test: int
    ais_chains: int
    ais_steps: int
    eval_examples: int
    eval_samples: int
    raise_examples: int
    raise_samples: int
    raise_steps: int
    learning_rate: float = 1e-3


BUDGETS = {
    # about a minute for both samplers on one CPU thread
    "smoke": Budget(num_latents=32, num_hidden=32, decoder_hidden=(64,), encoder_hidden=(64,), num_samples=10,
                    iterations=150, pretrain_iterations=60, rbm_pretrain_iterations=30, batch_size=32,
                    num_train=2000, num_test=200, ais_chains=100, ais_steps=500, eval_examples=100,
                    eval_samples=200, raise_examples=20, raise_samples=10, raise_steps=100),
    # the paper's MLP sizes (200 latents, 400 hidden units, 784-200-200-100-100-200), a short run
    "cpu": Budget(num_latents=200, num_hidden=400, decoder_hidden=(100, 100, 200, 200),
                  encoder_hidden=(200, 200, 100, 100), num_samples=50, iterations=2000, pretrain_iterations=800,
                  rbm_pretrain_iterations=200, batch_size=32, num_train=0, num_test=0, ais_chains=200,
                  ais_steps=5000, eval_examples=500, eval_samples=500, raise_examples=50, raise_samples=20,
                  raise_steps=500),
}


RBM_OPTIMIZER_WORDS = {"sgd": "SGD with the run's learning-rate decay", "adam": "the run's Adam"}


def run_spec(budget: Budget, sampler: str, data_dir: str, seed: int, device: str,
             rbm_optimizer: str = "sgd") -> RunSpec:
    """The same model, data and Algorithm-1 settings for every sampler; ``rbm_optimizer`` is the model's
    (``sgd``: the paper's SGD with the run's decay for the RBM; ``adam``: the run's Adam for it too)."""
    data = {"data_dir": str(data_dir), "num_train": budget.num_train, "num_test": budget.num_test,
            "binarize": "bernoulli"}
    model = {"num_latents": budget.num_latents, "num_hidden": budget.num_hidden,
             "decoder_hidden": list(budget.decoder_hidden), "gibbs_steps": 1000, "rbm_optimizer": rbm_optimizer}
    options = {"num_samples": budget.num_samples, "hidden": list(budget.encoder_hidden),
               "pretrain_iterations": budget.pretrain_iterations,
               "rbm_pretrain_iterations": budget.rbm_pretrain_iterations}
    config = TrainConfig(iterations=budget.iterations, batch_size=budget.batch_size,
                         learning_rate=budget.learning_rate, tune_every=0, seed=seed, log_every=10,
                         checkpoint_every=budget.iterations, image_every=budget.iterations, eval_examples=64,
                         device=device)
    return RunSpec(model=PluginSpec("rbm-prior", model), sampler=PluginSpec(sampler, options),
                   tuner=PluginSpec("fixed", {}), data=PluginSpec("binarized-mnist", data), train=config)


def _mean_se(values: torch.Tensor) -> dict[str, float]:
    n = values.numel()
    return {"mean": float(values.mean()), "standard_error": float(values.std() / math.sqrt(n)) if n > 1 else math.nan,
            "examples": int(n)}


@torch.no_grad()
def evaluate_run(model, sampler, data, budget: Budget, seed: int) -> dict[str, Any]:
    """AIS ``log Z``, then AIS- and RAISE-based ``log p(x)`` on the first test images."""
    device = module_device(model)
    generator = torch.Generator(device=device).manual_seed(seed + 101)
    x_train = data.train.x[:2000].to(device)
    codes = torch.bernoulli(torch.sigmoid(sampler.encoder_logits(model, x_train)), generator=generator)
    base = base_rate_bias(codes)
    began = time.perf_counter()
    log_z = ais_log_partition(model.rbm, num_chains=budget.ais_chains, num_steps=budget.ais_steps,
                              base_bias=base, generator=generator)
    x_test = data.test.x[:budget.eval_examples].to(device)
    ais = torch.cat([log_likelihood_ais(model, chunk, sampler.encoder_logits(model, chunk),
                                        num_samples=budget.eval_samples, log_partition=log_z.log_partition,
                                        generator=generator).cpu() for chunk in x_test.split(50)])
    x_raise = x_test[:budget.raise_examples]
    rai = log_likelihood_raise(model, x_raise, sampler.encoder_logits(model, x_raise),
                               num_samples=budget.raise_samples, num_steps=budget.raise_steps, base_bias=base,
                               generator=generator).cpu()
    return {"log_partition": {"ais": log_z.log_partition, "standard_error": log_z.standard_error,
                              "chains": budget.ais_chains, "steps": budget.ais_steps},
            "log_likelihood_ais": {**_mean_se(ais), "samples": budget.eval_samples},
            "log_likelihood_ais_same_examples_as_raise": _mean_se(ais[:budget.raise_examples]),
            "log_likelihood_raise": {**_mean_se(rai), "samples": budget.raise_samples, "steps": budget.raise_steps},
            "per_image": {"ais": ais.tolist(), "raise": rai.tolist()},
            "eval_seconds": time.perf_counter() - began}


def _row(name: str, run: dict[str, Any]) -> str:
    e = run["eval"]
    lz, ais, same, rai = (e["log_partition"], e["log_likelihood_ais"],
                          e["log_likelihood_ais_same_examples_as_raise"], e["log_likelihood_raise"])
    return (f"| {name} | {run['iterations']} | {run['seconds']:.0f} | {lz['ais']:.2f} ± "
            f"{lz['standard_error']:.2f} | {-ais['mean']:.2f} ± {ais['standard_error']:.2f} "
            f"({ais['examples']} images, K={ais['samples']}) | {-same['mean']:.2f} ± "
            f"{same['standard_error']:.2f} | {-rai['mean']:.2f} ± {rai['standard_error']:.2f} "
            f"({rai['examples']} images, K={rai['samples']}, {rai['steps']} steps) |")


def paired_rows(results: dict[str, Any]) -> list[str]:
    """Per seed, the paired per-image differences of test NLL, vimco - rws (AIS and RAISE), and, per
    sampler, RAISE - AIS on RAISE's images (the two estimators on the same images)."""
    lines = ["| seed | comparison | estimator | mean difference (nats) | s.e. | images | p | significant |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for seed in results["seeds"]:
        runs = {name: results["runs"].get(f"{name}-seed{seed}") for name in SAMPLERS}
        pairs = []
        if all(runs.values()):
            for estimator in ("ais", "raise"):
                # NLL difference vimco - rws = log p(x) of rws - log p(x) of vimco
                pairs.append(("vimco - rws", estimator, runs["vimco"]["eval"]["per_image"][estimator],
                              runs["rws"]["eval"]["per_image"][estimator]))
        for name, run in runs.items():
            if run:
                per = run["eval"]["per_image"]
                # NLL difference RAISE - AIS = log p(x) by AIS - log p(x) by RAISE
                pairs.append((f"{name}: RAISE - AIS", "same images", per["raise"], per["ais"][:len(per["raise"])]))
        for label, estimator, a, b in pairs:
            d = paired_difference(a, b)  # mean of b - a in log p(x): the NLL difference first - second
            lines.append(f"| {seed} | {label} | {estimator} | {d['mean_difference']:+.2f} | {d['standard_error']:.2f} | "
                         f"{d['examples']} | {d['p_value']:.2g} | {'yes' if d['significant'] else 'no'} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The results table (negative log-likelihoods in nats, lower is better) and the paired differences."""
    lines = [(f"# rbm-prior on statically binarised MNIST ({results.get('data_source', '?')}), budget "
              f"`{results['budget_name']}`, seeds {', '.join(map(str, results['seeds']))}"), "",
             ("| run | iterations | train s | log Z (AIS) | test NLL, AIS (eq. 6) | NLL, AIS on RAISE's images "
             "| test NLL, RAISE |"), "|---|---|---|---|---|---|---|"]
    lines += [_row(name, run) for name, run in results["runs"].items()]
    budget = results["budget"]
    lines += ["", (f"Model: {budget['num_latents']} binary latents, RBM with {budget['num_hidden']} hidden units, "
              f"decoder {budget['decoder_hidden']}, encoder {budget['encoder_hidden']}, K = {budget['num_samples']}; "
              f"{budget['pretrain_iterations']} autoencoder + {budget['rbm_pretrain_iterations']} RBM (CD-1, CD-25, "
              f"PCD-25) pre-training iterations of {budget['iterations']}; the RBM learned by "
              f"{RBM_OPTIMIZER_WORDS[results.get('rbm_optimizer', 'sgd')]}. ± is one standard error over test images "
              "(the spread between images; for log Z the delta-method error over AIS chains, not included in the "
              "NLL's)."),
              "", ("Paired per-image differences of test NLL on the same images (nats; negative: the first is "
                   "lower; significant: paired t-test p < 0.05 and |mean| > 2 s.e.; the shared log Z estimate of "
                   "each run shifts all its images alike):"), "", *paired_rows(results)]
    return "\n".join(lines) + "\n"


def run_discrete(data_dir: str | Path, out: str | Path, budget: str = "smoke", *, seeds: tuple[int, ...] = (0,),
                 device: str = "cpu", samplers: tuple[str, ...] = SAMPLERS, rbm_optimizer: str = "sgd") -> dict[str, Any]:
    """Train ``rbm-prior`` with each sampler and seed under the ``budget`` preset, evaluate, write the tables."""
    if budget not in BUDGETS:
        raise SystemExit(f"error: unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    preset = BUDGETS[budget]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"budget_name": budget, "budget": asdict(preset), "seeds": list(seeds),
                               "rbm_optimizer": rbm_optimizer, "runs": {}}
    for seed in seeds:
        for name in samplers:
            spec = run_spec(preset, name, str(data_dir), seed, device, rbm_optimizer)
            data, model, sampler, tuner = build_objects(spec)
            results["data_source"] = ("Larochelle-Murray files" if data.source == "amat"
                                      else "fixed-seed Bernoulli draw of the IDX files")
            trained = train(model, sampler, tuner, data, spec, out / "runs" / f"{name}-seed{seed}", progress=False)
            evaluation = evaluate_run(trained.model, trained.sampler, data, preset, seed)
            results["runs"][f"{name}-seed{seed}"] = {
                "iterations": preset.iterations, "seconds": trained.summary["seconds"],
                "test_mse_end": trained.summary["test_mse_end"], "eval": evaluation}
            write_json_atomic(out / "results.json", results)
            print(f"{name} seed {seed}: done in {trained.summary['seconds']:.0f} s + "
                  f"{evaluation['eval_seconds']:.0f} s eval", file=sys.stderr)
    (out / "results.md").write_text(markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with the Larochelle-Murray .amat files or "
                        "the MNIST IDX files [default: $INFERKIT_DATA/mnist, else the cache of `inferkit data "
                        "fetch mnist`]")
    parser.add_argument("--out", default="bench/discrete")
    parser.add_argument("--budget", default="smoke", choices=sorted(BUDGETS))
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated: vimco,rws")
    parser.add_argument("--rbm-optimizer", default="sgd", choices=RBM_OPTIMIZERS,
                        help="the RBM's optimiser: the paper's SGD with learning-rate decay, or the run's Adam")
    args = parser.parse_args(argv)
    samplers = tuple(s for s in args.samplers.split(",") if s)
    results = run_discrete(mnist_folder(args.data_dir), args.out, args.budget, seeds=tuple(parse_seeds(args.seeds, None)),
                           device=args.device, samplers=samplers, rbm_optimizer=args.rbm_optimizer)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
