"""Cost and accuracy of the three log-determinant estimators of J(s) on the ladder model (issue 5).

For each latent size (the ladder's default, and one with latent dimension >= 200) and each estimator
(exact, stepwise, stochastic): seconds per evaluation of J on a batch (median of interleaved
rounds), the relative error of J and of log|det dF/dz_0| against ``exact``, and the speed-up over
``exact``. Then whether kl-grid with ``stochastic`` picks the same grid point as with ``exact``.

    python benchmarks/logdet.py [--threads 2] [--batch 4] [--steps 20] [--reps 3] [--image-size 16] [--json out.json]
    python benchmarks/logdet.py --quick

Tuning's share of a training run is measured by a real run: ``summary.json`` of ``inferkit run``
records ``tuning_seconds`` next to ``seconds`` (see the README for the command).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import inferkit
from inferkit.objective import kl_objective
from inferkit.tuners.kl_grid import KLGrid

SIZES = {
    "default": {},  # latent dims (16, 8, 4): D = 28
    "D=224": {"latent_dims": (128, 64, 32)},
}
ESTIMATORS = ("exact", "stepwise", "stochastic")


def evaluate(model, sampler, x, logdet, options):
    start = time.perf_counter()
    value, info = kl_objective(model, sampler, x, logdet=logdet, generator=torch.Generator().manual_seed(0),
                               return_info=True, differentiable=False, **options)
    return time.perf_counter() - start, value, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="K of the short-run sampler")
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--lanczos-steps", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=16, help="16: the shapes data of the headline run")
    parser.add_argument("--quick", action="store_true", help="K=3, 1 round, 16x16 images (a smoke run)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.reps, args.image_size = 3, 1, 16
    torch.set_num_threads(args.threads)
    options = {"num_probes": args.probes, "lanczos_steps": args.lanczos_steps}
    results = {"config": vars(args), "sizes": {}}
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, K={args.steps}, "
          f"s={args.step_size}, probes {args.probes}, Lanczos steps {args.lanczos_steps}")
    for size, model_options in SIZES.items():
        torch.manual_seed(0)
        model = inferkit.load_model("ladder", image_size=args.image_size, **model_options)
        x = model.sample(args.batch, generator=torch.Generator().manual_seed(1)).detach()
        sampler = inferkit.load_sampler("shortrun", num_steps=args.steps, step_size=args.step_size)
        times = {name: [] for name in ESTIMATORS}
        values, infos = {}, {}
        for _ in range(args.reps):  # interleaved rounds
            for name in ESTIMATORS:
                seconds, values[name], infos[name] = evaluate(model, sampler, x, name, options)
                times[name].append(seconds)
        exact = values["exact"]
        row = {"latent_dim": model.latent_dim}
        print(f"\nladder {size} (latent dimension {model.latent_dim}):")
        print(f"{'estimator':>11} {'s/eval':>9} {'speed-up':>9} {'max rel err J':>14} {'max rel err logdet':>19}")
        for name in ESTIMATORS:
            seconds = statistics.median(times[name])
            speedup = statistics.median(times["exact"]) / seconds
            error_j = float(((values[name] - exact).abs() / exact.abs()).max())
            error_logdet = float(((infos[name].log_det - infos["exact"].log_det).abs()
                                  / infos["exact"].log_det.abs()).max())
            row[name] = {"seconds": seconds, "speedup_over_exact": speedup, "max_relative_error_J": error_j,
                         "max_relative_error_logdet": error_logdet, "J": values[name].tolist()}
            print(f"{name:>11} {seconds:9.3f} {speedup:9.2f} {error_j:14.2e} {error_logdet:19.2e}")
        grid = tuple(args.step_size * 2.0**e for e in range(-2, 6))
        chosen = {}
        for name in ("exact", "stochastic"):
            tuned = inferkit.load_sampler("shortrun", num_steps=args.steps, step_size=args.step_size)
            KLGrid(grid=grid, logdet=name, batch_size=args.batch, **options).tune(
                model, tuned, x)
            chosen[name] = tuned.step_size.item()
        row["grid"] = {"grid": grid, "chosen": chosen, "same": chosen["exact"] == chosen["stochastic"]}
        print(f"kl-grid over {[round(g, 5) for g in grid]}: exact picks {chosen['exact']:.4g}, "
              f"stochastic picks {chosen['stochastic']:.4g}")
        results["sizes"][size] = row
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
