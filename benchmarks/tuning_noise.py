"""How much the step size a KL tuner chooses varies with the training batch it is estimated on.

    python benchmarks/tuning_noise.py RUN [--model SPEC] [--batch-sizes 4,16,64] [--repeats 20] [--search local]
    python benchmarks/tuning_noise.py RUN --tuner kl-grad [--batch-sizes 4,16]

For the run's trained model and sampler, ``kl-grid`` with its defaults except ``batch_size`` (and
``search``: with ``local`` every tuning starts from the run's own step size) tunes
``--repeats`` times for each batch size, each time on a different seeded draw of training images
(the trainer hands the tuner one training batch; ``kl-grid`` uses its first ``batch_size`` rows).
Every chosen s is then scored by the test MSE of the run's K-step inference at that s (the first
``--examples`` test images, one seeded evaluation per grid point). It reports, per batch size, the
chosen step sizes (how often each), the mean and spread of their test MSEs, and the seconds per
tuning, and writes ``RUN/tuning_noise.json``. With ``--tuner kl-grad`` the tuner is ``kl-grad``
with its defaults except ``batch_size``, starting from the run's own step size (its choices are
continuous: most are counted once). It answers: is the choice decided by the batch, and what does
a larger tuning batch buy against its cost?
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from inferkit.eval.reconstruction import reconstruction_mse
from inferkit.registry import load_tuner
from inferkit.runs import CHECKPOINT_FILE, RunSpec, build_objects, restore_checkpoint
from inferkit.tuners.kl_grid import PAPER_GRID, SEARCHES

TUNERS = ("kl-grid", "kl-grad")


def test_mse_at(model, sampler, x_test: torch.Tensor, cache: dict[float, float], s: float) -> float:
    """Test MSE of the sampler at step size ``s`` (computed once per s)."""
    if s not in cache:
        original = sampler.hyperparameters()["step_size"].clone()
        sampler.set_hyperparameters({"step_size": torch.full_like(original, s)})
        cache[s] = reconstruction_mse(model, sampler, x_test, seed=0)
        sampler.set_hyperparameters({"step_size": original})
    return cache[s]


def noise(run: Path, model_name: str | None, batch_sizes: list[int], repeats: int, examples: int,
          search: str = "grid", tuner_name: str = "kl-grid", **tuner_options) -> dict:
    """The table's rows and every scored step size; ``tuner_options`` go to the tuner as they are."""
    spec = RunSpec.load(run, model=model_name)
    data, model, sampler, _ = build_objects(spec)
    restore_checkpoint(run / CHECKPOINT_FILE, "cpu", model, sampler)
    model.eval()
    x_train, x_test = data.train.x, data.test.x[:examples]
    cache: dict[float, float] = {}
    rows = []
    for batch_size in batch_sizes:
        searched = {"search": search} if tuner_name == "kl-grid" else {}
        tuner = load_tuner(tuner_name, batch_size=batch_size, **searched, **tuner_options)
        chosen, seconds = [], []
        for repeat in range(repeats):
            index = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(repeat))[:batch_size]
            began = time.perf_counter()
            result = tuner.tune(model, sampler, x_train[index])
            seconds.append(time.perf_counter() - began)
            chosen.append(round(float(result.hyperparameters["step_size"].mean()), 6))
        mses = [test_mse_at(model, sampler, x_test, cache, s) for s in chosen]
        rows.append({"batch_size": batch_size, "tuner": tuner_name,
                     "search": search if tuner_name == "kl-grid" else None,
                     "chosen": dict(sorted(collections.Counter(chosen).items())),
                     "test_mse_mean": statistics.mean(mses), "test_mse_sd": statistics.pstdev(mses),
                     "test_mse_max": max(mses), "seconds_per_tuning": statistics.mean(seconds)})
        print(json.dumps(rows[-1]), flush=True)
    grid = {s: test_mse_at(model, sampler, x_test, cache, s) for s in PAPER_GRID}
    return {"rows": rows, "test_mse_on_grid": grid, "best_on_grid": min(grid, key=grid.get),
            "test_mse_at": dict(sorted(cache.items())), "examples": examples, "repeats": repeats,
            "run_step_size": float(sampler.hyperparameters()["step_size"].mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--model", default=None, help="model spec when config.json names a Pyro model")
    parser.add_argument("--batch-sizes", default="4,16,64")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--search", choices=SEARCHES, default="grid", help="kl-grid's search")
    parser.add_argument("--tuner", choices=TUNERS, default="kl-grid")
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    result = noise(args.run, args.model, sizes, args.repeats, args.examples, args.search, args.tuner)
    name = ("tuning_noise_kl-grad.json" if args.tuner == "kl-grad" else
            "tuning_noise.json" if args.search == "grid" else f"tuning_noise_{args.search}.json")
    (args.run / name).write_text(json.dumps(result, indent=1))
    print(f"test MSE is lowest on the grid at s = {result['best_on_grid']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
