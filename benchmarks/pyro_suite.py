"""Short-run inference against Pyro's own SVI VAE on one Pyro model (examples/pyro_mnist.py), and the
same learning curves on the ladder generator.

    python benchmarks/compare.py --suite pyro --data-dir DIR --budget cpu --out bench/pyro
    python benchmarks/compare.py --suite ladder-curve --data-dir DIR --budget cpu --out bench/ladder-curve

``--suite ladder-curve`` runs ``shortrun`` and ``vae`` on the ladder plugin with its defaults (the
headline command's generator) at the same iteration counts and seeds, with the same tables.

Three ways to learn the same decoder (``z ~ N(0, I_16)``, ``x ~ N(tanh(MLP(z)), 0.3^2 I)``) on the
same 8,000 / 2,000 MNIST split, each for every iteration count and seed of the budget:

- ``shortrun``: inferkit's short-run inference (K = 20) with its step size tuned by ``kl-grid`` with
  its defaults every 100 iterations (the walk on 16 images of the batch, the applied step size a
  moving average in ``log s`` of the tunings' choices);
- ``shortrun-last``: the same, applying each tuning's choice (``memory=0``);
- ``shortrun-full-grid``: ``shortrun-last`` with ``kl-grid`` evaluating the whole grid on 4 images of
  the training batch at every tuning (``search=grid``, ``batch_size=4``), the control that measures
  what the local walk on 16 images does to learning;
- ``shortrun-batch32``: the whole grid on all 32 images of the training batch (``search=grid``,
  ``batch_size=32``, ``memory=0``);
- ``shortrun-one-se``: ``shortrun-last`` choosing among the step sizes whose J is within one standard
  error (paired over the tuning images) of the smallest the one with the lowest energy (``tie_se=1``);
- ``shortrun-fixed``: the same K steps at the authors' fixed step size s = 0.05 (their code's
  ``z_step_size``), never tuned: the control that separates what the decoder learns from where the
  tuner moves s;
- ``vae``: inferkit's amortised encoder (the ``vae`` sampler);
- ``pyro-svi``: ``pyro.infer.SVI`` with ``Trace_ELBO`` and a Gaussian MLP guide (784-256-16), Adam
  at the same learning rate (held constant, as Pyro's optimiser does) and batch size, and the same
  number of updates;
- ``vae-constant-lr``: the ``vae`` run with the learning rate held constant (no decay at the
  trainer's default milestones), the control that separates the encoder from the schedule;
- ``shortrun-constant-lr``: ``shortrun`` with the learning rate held constant and sigma (where the
  model anneals it) annealed over the first :data:`HELD_SIGMA_ANNEAL` iterations whatever T, so that
  every run is the first T iterations of the longest one (:data:`HELD_SCHEDULE`);
- ``shortrun-momentum``: ``shortrun`` with heavy-ball steps (the ``shortrun-momentum`` sampler, momentum
  0.5, the same K = 20 gradient evaluations) and ``kl-grid``'s defaults: the flow that goes further
  in K steps along the directions where the posterior is flat;
- ``shortrun-epoch``: ``shortrun`` tuned every 250 iterations, once per pass over the 8,000 training
  images (:data:`TUNE_EVERY`), where the other short-run methods tune every 100.

Every run is a fresh process (the example's decoder is a module-level object, so runs in one
process would share it); every run starts from the same decoder initialisation (the example's).
Each trained decoder is evaluated on all test images by its own inference (shortrun: its K steps at
the tuned step size; vae and pyro-svi: the encoder's mean) and by one common reference inference
(noise-free gradient flow, 200 steps, step size chosen on a selection batch: the same for every
decoder), per image, so that differences between runs are paired on the same images.

Writes ``OUT/results_pyro.json`` (per run: settings, seconds per iteration, per-image MSEs) and
``OUT/results_pyro.md``: the mean over seeds with its standard error, and paired differences with
standard errors over images (per seed) for the claims the benchmark checks: each method improves
from one iteration count to the next, and how the methods compare at equal iterations.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
MODEL = "pyro:examples.pyro_mnist:model"
METHODS = ("shortrun", "shortrun-last", "shortrun-full-grid", "shortrun-batch32", "shortrun-one-se",
           "shortrun-fixed", "vae", "pyro-svi", "vae-constant-lr", "shortrun-constant-lr", "shortrun-momentum",
           "shortrun-epoch")
TUNERS = {"shortrun": {}, "shortrun-constant-lr": {}, "shortrun-momentum": {}, "shortrun-epoch": {},
          "shortrun-last": {"memory": 0.0},
          "shortrun-full-grid": {"search": "grid", "batch_size": 4, "memory": 0.0},
          "shortrun-batch32": {"search": "grid", "batch_size": 32, "memory": 0.0},
          "shortrun-one-se": {"tie_se": 1.0, "memory": 0.0}}
"""``kl-grid``'s options per short-run method (the others keep their sampler's step size)."""
SAMPLERS = {**{method: "shortrun" for method in TUNERS if method not in ("shortrun", "shortrun-momentum")},
            "shortrun-fixed": "shortrun",
            "vae-constant-lr": "vae"}
"""The sampler of each method whose name is not a sampler's."""
COMPARED = (("shortrun", "shortrun-last"), ("shortrun-last", "shortrun-full-grid"),
            ("shortrun-batch32", "shortrun-full-grid"), ("shortrun-one-se", "shortrun-last"),
            ("shortrun", "shortrun-fixed"), ("shortrun-last", "shortrun-fixed"), ("shortrun", "pyro-svi"),
            ("shortrun", "vae"), ("shortrun-last", "pyro-svi"), ("shortrun-last", "vae"), ("vae", "pyro-svi"),
            ("vae-constant-lr", "vae"), ("vae-constant-lr", "pyro-svi"), ("shortrun-one-se", "pyro-svi"),
            ("shortrun-one-se", "vae"), ("shortrun-constant-lr", "shortrun"), ("shortrun-constant-lr", "vae"),
            ("shortrun-momentum", "shortrun"), ("shortrun-momentum", "vae"), ("shortrun-momentum", "pyro-svi"),
            ("shortrun-epoch", "shortrun"), ("shortrun-epoch", "vae"), ("shortrun-epoch", "pyro-svi"))
"""The pairs ``(m, o)`` the claims table tests as "m below o" at every iteration count."""
MODELS = {"pyro": (MODEL, METHODS), "ladder": ("ladder", ("shortrun", "vae"))}
"""``--model`` of the suite: the model plugin and the methods run on it by default. ``ladder`` is the
ladder plugin with its defaults (L=3, latents 16+8+4, nf=12), the generator of the headline command,
and can run every method but ``pyro-svi`` (``--methods``)."""
BUDGETS = {
    "smoke": {"iterations": (4, 8), "seeds": (0,), "reference_steps": 10},
    "cpu": {"iterations": (300, 1200, 4800), "seeds": (0, 1, 2), "reference_steps": 200},
}
LEARNING_RATE = 1e-3
BATCH_SIZE = 32
TUNE_EVERY = {"shortrun-epoch": 250}
"""``kl-grid``'s interval ``T_s`` where a method's is not 100 iterations: ``shortrun-epoch`` tunes once
per pass over the 8,000 training images at batch 32, as the papers tune once per epoch."""
HELD_SIGMA_ANNEAL = 600
HELD_SCHEDULE = {"lr_milestones": (), "schedule_iterations": HELD_SIGMA_ANNEAL, "sigma_anneal": 1.0}
"""``shortrun-constant-lr``'s training schedule: no learning-rate milestones, and sigma's annealing
planned over its first ``HELD_SIGMA_ANNEAL`` iterations (held at its end value after them), the same for
every T: a run of T iterations trains exactly as the first T of a longer one."""


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def one_run(method: str, iterations: int, seed: int, data_dir: Path, run_dir: Path, reference_steps: int,
            model: str = "pyro") -> dict:
    """Train ``method`` on ``model`` (a key of :data:`MODELS`) in a fresh process and evaluate it there;
    returns what it wrote."""
    command = [sys.executable, __file__, "--one", method, str(iterations), str(seed), str(data_dir), str(run_dir),
               str(reference_steps), model]
    subprocess.run(command, check=True, env=_environment(), cwd=REPO)
    return json.loads((run_dir / "result.json").read_text())


# -- inside one run's process ------------------------------------------------------------------------
def _data(data_dir: Path):
    from inferkit.registry import plugin_class

    return plugin_class("dataset", "mnist")(data_dir=str(data_dir))


def run_spec(method: str, iterations: int, seed: int, data_dir: Path, model_key: str):
    """The run ``method`` trains for ``iterations`` on ``model`` (a key of :data:`MODELS`)."""
    from inferkit.runs import PluginSpec, RunSpec, TrainConfig

    tuned = method in TUNERS
    tuner = PluginSpec("kl-grid", dict(TUNERS[method])) if tuned else PluginSpec("fixed")
    schedule = {"vae-constant-lr": {"lr_milestones": ()}, "shortrun-constant-lr": HELD_SCHEDULE}.get(method, {})
    return RunSpec(model=PluginSpec(MODELS[model_key][0]), sampler=PluginSpec(SAMPLERS.get(method, method)),
                   tuner=tuner,
                   data=PluginSpec("mnist", {"data_dir": str(data_dir)}),
                   train=TrainConfig(iterations=iterations, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
                                     seed=seed, tune_every=TUNE_EVERY.get(method, 100) if tuned else 0,
                                     log_every=max(1, iterations // 20), checkpoint_every=iterations,
                                     image_every=iterations, **schedule))


def _train_inferkit(method: str, iterations: int, seed: int, data_dir: Path, run_dir: Path, model_key: str):
    from inferkit.runs import build_objects
    from inferkit.trainer import train

    spec = run_spec(method, iterations, seed, data_dir, model_key)
    data, model, sampler, tuner_object = build_objects(spec)
    trained = train(model, sampler, tuner_object, data, spec, run_dir, progress=False)
    return data, trained.model, trained.sampler, trained.summary["seconds"]


class _Guide(torch.nn.Module):
    """``q(z | x) = N(mu(x), diag sigma(x)^2)`` with a 784-256-16 GELU MLP."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.GELU())
        self.loc = torch.nn.Linear(256, latent_dim)
        self.scale = torch.nn.Linear(256, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.loc(h), torch.nn.functional.softplus(self.scale(h)) + 1e-4


def _train_pyro_svi(iterations: int, seed: int, data_dir: Path):
    import pyro
    import pyro.distributions as dist

    from examples import pyro_mnist
    from inferkit.models.pyro_model import pyro_model

    data = _data(data_dir)
    torch.manual_seed(seed)
    encoder = _Guide(pyro_mnist.LATENT_DIM)

    def guide(x):
        pyro.module("svi_encoder", encoder)
        loc, scale = encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    pyro.clear_param_store()
    svi = pyro.infer.SVI(pyro_mnist.model, guide, pyro.optim.Adam({"lr": LEARNING_RATE}), pyro.infer.Trace_ELBO())
    generator = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    for _ in range(iterations):
        index = torch.randint(len(data.train), (BATCH_SIZE,), generator=generator)
        svi.step(data.train.batch(index)["x"])
    seconds = time.perf_counter() - began
    model = pyro_model(pyro_mnist.model)(data_shape=tuple(data.data_shape))
    return data, model, encoder, seconds


def _guide_errors(model, encoder, x: torch.Tensor) -> list[float]:
    """Per-image MSE of the decoded guide mean ``E[x | z = mu(x)]`` (the guide is not a sampler)."""
    with torch.no_grad():
        return [e for start in range(0, x.shape[0], 250)
                for e in (model.decode((encoder(x[start:start + 250])[0],)) - x[start:start + 250])
                .pow(2).flatten(1).mean(1).tolist()]


def _evaluate(data, model, own_errors, reference_steps: int) -> dict[str, Any]:
    """Per-image test MSE by the method's own inference (``own_errors(x)``) and by the common
    reference inference, batches of 250 seeded by their first row; and the own inference's per-image
    MSE on as many training images (the first ones), which shows how much of the test error is a gap
    between the images the generator learned from and new ones."""
    from inferkit.eval.reconstruction import reconstruction_errors
    from inferkit.eval.reference import reference_sampler

    x = data.test.x
    reference, record = reference_sampler(model, x[:64], num_steps=reference_steps)
    return {"own": own_errors(x), "own_train": own_errors(data.train.x[:x.shape[0]]),
            "reference": reconstruction_errors(model, reference, x, batch_size=250).tolist(),
            "reference_inference": record}


def run_one(method: str, iterations: int, seed: int, data_dir: Path, run_dir: Path, reference_steps: int,
            model_key: str = "pyro") -> None:
    from inferkit.eval.reconstruction import reconstruction_errors

    torch.set_num_threads(1)
    run_dir.mkdir(parents=True, exist_ok=True)
    if method == "pyro-svi":
        data, model, encoder, seconds = _train_pyro_svi(iterations, seed, data_dir)
        own = lambda x: _guide_errors(model, encoder, x)
        step_size = math.nan
    else:
        data, model, sampler, seconds = _train_inferkit(method, iterations, seed, data_dir, run_dir, model_key)
        own = lambda x: reconstruction_errors(model, sampler, x, batch_size=250).tolist()
        step_size = float(sampler.hyperparameters().get("step_size", torch.tensor(math.nan)).mean())
    result = {"model": model_key, "method": method, "iterations": iterations, "seed": seed,
              "seconds_per_iteration": seconds / iterations,
              "step_size": step_size, **_evaluate(data, model, own, reference_steps)}
    (run_dir / "result.json").write_text(json.dumps(result, allow_nan=True))


# -- the parent: runs, statistics, tables --------------------------------------------------------------
def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-image differences ``a - b`` (same images, same order)."""
    return _mean_se([u - v for u, v in zip(a, b)])


def allowed_methods(model: str) -> tuple[str, ...]:
    """The methods ``--methods`` may name on ``model``."""
    return METHODS if model == "pyro" else tuple(m for m in METHODS if m != "pyro-svi")


def run_pyro(data_dir: Path, out: Path, budget: str, model: str = "pyro",
             methods: tuple[str, ...] | None = None, seeds: tuple[int, ...] | None = None,
             iterations: tuple[int, ...] | None = None, report: bool = False) -> dict[str, Any]:
    """Every run of ``budget`` (its seeds and iteration counts, or ``seeds`` and ``iterations``) for
    ``methods`` (default the model's), reusing the runs under ``out/runs`` that have a ``result.json``;
    with ``report``, only those (the missing ones are ``-`` in the tables)."""
    settings = dict(BUDGETS[budget])
    if seeds is not None:
        settings["seeds"] = tuple(seeds)
    if iterations is not None:
        settings["iterations"] = tuple(iterations)
    methods = tuple(methods or MODELS[model][1])
    runs = []
    for seed in settings["seeds"]:
        for count in settings["iterations"]:
            for method in methods:
                run_dir = out / "runs" / f"{method}-{count}-seed{seed}"
                done = run_dir / "result.json"
                if report and not done.is_file():
                    continue
                result = json.loads(done.read_text()) if done.is_file() else one_run(
                    method, count, seed, data_dir, run_dir, settings["reference_steps"], model)
                mean_own = sum(result["own"]) / len(result["own"])
                print(f"  {method} {count} seed {seed}: MSE own {mean_own:.4f}, "
                      f"{result['seconds_per_iteration']:.4f} s/iteration", flush=True)
                runs.append(result)
    return {"budget": budget, "model": model, "methods": methods, "settings": settings, "runs": runs,
            "machine": f"CPU, {torch.get_num_threads()} torch threads in this process, 1 per run"}


def _methods(results: dict[str, Any]) -> tuple[str, ...]:
    return tuple(results.get("methods") or MODELS[results.get("model", "pyro")][1])


def _inferences(results: dict[str, Any]) -> tuple[str, ...]:
    """The per-image error lists the runs hold: ``own`` and ``reference`` on the test images, and
    ``own_train`` (the own inference on training images) where some run measured it."""
    with_train = any("own_train" in r for r in results["runs"])
    return ("own", "own_train", "reference") if with_train else ("own", "reference")


def _table(results: dict[str, Any]) -> list[str]:
    iterations = results["settings"]["iterations"]
    lines = ["| method | inference | " + " | ".join(f"T={t}" for t in iterations) + " |",
             "|---|---|" + "---:|" * len(iterations)]
    for method in _methods(results):
        for which in _inferences(results):
            cells = []
            for t in iterations:
                per_seed = [sum(r[which]) / len(r[which]) for r in results["runs"]
                            if r["method"] == method and r["iterations"] == t and which in r]
                if not per_seed:
                    cells.append("-")
                    continue
                mean, se = _mean_se(per_seed)
                cells.append(f"{mean:.4f} ± {se:.4f} ({len(per_seed)})")
            lines.append(f"| {method} | {which} | " + " | ".join(cells) + " |")
    return lines


def _find(results: dict[str, Any], method: str, iterations: int, seed: int) -> dict | None:
    return next((r for r in results["runs"] if (r["method"], r["iterations"], r["seed"]) == (method, iterations, seed)),
                None)


def _claims(results: dict[str, Any]) -> list[str]:
    """Paired per-image differences (per seed): training longer, and method against method."""
    iterations, seeds = results["settings"]["iterations"], results["settings"]["seeds"]
    lines = ["| claim | inference | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|---|" + "---:|" * len(seeds)]
    methods = _methods(results)
    pairs = [(f"{m}: T={b} below T={a}", (m, b), (m, a)) for m in methods for a, b in itertools.pairwise(iterations)]
    pairs += [(f"{m} below {o} at T={t}", (m, t), (o, t)) for t in iterations
              for m, o in COMPARED if {m, o} <= set(methods)]
    for label, (m1, t1), (m2, t2) in pairs:
        for which in _inferences(results):
            cells = []
            for seed in seeds:
                a, b = _find(results, m1, t1, seed), _find(results, m2, t2, seed)
                if a is None or b is None or which not in a or which not in b:
                    cells.append("-")
                    continue
                mean, se = paired(a[which], b[which])
                verdict = "yes" if mean + 2 * se < 0 else ("no" if mean - 2 * se > 0 else "inconclusive")
                cells.append(f"{mean:+.4f} ± {se:.4f} ({verdict})")
            lines.append(f"| {label} | {which} | " + " | ".join(cells) + " |")
    return lines


def _seconds(results: dict[str, Any]) -> list[str]:
    """Training seconds per run (mean over seeds): the cost axis for comparisons at equal wall time."""
    iterations = results["settings"]["iterations"]
    lines = ["| method | " + " | ".join(f"T={t}" for t in iterations) + " |", "|---|" + "---:|" * len(iterations)]
    for method in _methods(results):
        cells = []
        for t in iterations:
            seconds = [r["seconds_per_iteration"] * t for r in results["runs"]
                       if r["method"] == method and r["iterations"] == t]
            cells.append(f"{sum(seconds) / len(seconds):.0f}" if seconds else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    times = {m: _mean_se(ts)[0] for m in _methods(results)
             if (ts := [r["seconds_per_iteration"] for r in results["runs"] if r["method"] == m])}
    model = MODELS[results.get("model", "pyro")][0]
    title = "Short-run inference against Pyro SVI" if results.get("model", "pyro") == "pyro" else "Learning curves"
    lines = [f"# {title} on `{model}` (`--budget {results['budget']}`)", "",
             (f"{results['machine']}. Test MSE on all test images: mean over seeds ± standard error over seeds "
              "(number of seeds)."), "",
             *_table(results), "",
             "Training seconds per run (mean over seeds; seconds per iteration: "
             + ", ".join(f"{m} {t:.4f}" for m, t in times.items()) + "):", "", *_seconds(results), "",
             ("Paired per-image differences of test MSE (mean ± s.e. over images; yes: below zero by more than "
              "two standard errors, no: above zero by more than two):"), "", *_claims(results)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--one":
    method_, iterations_, seed_, data_dir_, run_dir_, steps_, model_ = sys.argv[2:9]
    run_one(method_, int(iterations_), int(seed_), Path(data_dir_), Path(run_dir_), int(steps_), model_)
