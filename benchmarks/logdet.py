"""Cost and accuracy of the three log-determinant estimators of J(s) on the ladder model.

For each latent size (the ladder's default, and one with latent dimension >= 200) and each estimator
(exact, stepwise, stochastic): seconds per evaluation of J on a batch (median of interleaved
rounds after a warm-up round), the relative error of J (per example, and of the batch mean) and of log|det dF/dz_0|
against ``exact``, and the speed-up over ``exact``. ``exact`` is timed bare (the Jacobian of F and
its slogdet); ``exact+check`` adds the per-step eigenvalue check the tuners run with it. Then whether kl-grid with ``stochastic`` picks the same grid point as with ``exact``.

    python benchmarks/logdet.py [--threads 2] [--batch 4] [--steps 20] [--reps 3] [--image-size 16] [--sizes default D=224]
        [--dtype float32|float64] [--json out.json]
    python benchmarks/logdet.py --quick

Tuning's share of a training run is measured by a real run: ``summary.json`` of ``inferkit run``
records ``tuning_seconds`` next to ``seconds`` (benchmarks/RESULTS.md, "The headline run").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import inferkit
from inferkit.objective import LogDetEstimator, kl_objective
from inferkit.tuners.kl_grid import KLGrid

SIZES = {
    "default": {},  # latent dims (16, 8, 4): D = 28
    "D=224": {"latent_dims": (128, 64, 32)},
    "D=448": {"latent_dims": (256, 128, 64)},
}
ESTIMATORS = ("exact", "stepwise", "stochastic")
CHECKED = "exact+check"  # exact with the per-step eigenvalue check the tuners run (check_invertible=True)


def evaluate(model, sampler, x, logdet, options, check_invertible=False):
    """Seconds, J and info of one evaluation. ``exact`` is timed bare (Jacobian of F and slogdet,
    ``check_invertible=False``); its per-step eigenvalue check is timed as its own row."""
    start = time.perf_counter()
    with torch.no_grad():
        result = kl_objective(model, sampler, x, estimator=LogDetEstimator(logdet, check_invertible=check_invertible,
                                                                           **options),
                              generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start, result.objective, result.info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="K of the short-run sampler")
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--lanczos-steps", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=16, help="16: the shapes data of the headline run")
    parser.add_argument("--quick", action="store_true", help="K=3, 1 round, 16x16 images (a smoke run)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=list(SIZES))
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                        help="compare the kl-grid argmin of exact and stochastic (costly at large D)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.reps, args.image_size = 3, 1, 16
    torch.set_num_threads(args.threads)
    options = {"num_probes": args.probes, "lanczos_steps": args.lanczos_steps}
    results = {"config": vars(args), "sizes": {}}
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, K={args.steps}, "
          f"s={args.step_size}, {args.dtype}, probes {args.probes}, Lanczos steps {args.lanczos_steps}")
    for size in args.sizes:
        model_options = SIZES[size]
        torch.manual_seed(0)
        model = inferkit.load_model("ladder", image_size=args.image_size, **model_options).to(getattr(torch, args.dtype))
        x = model.sample(args.batch, generator=torch.Generator().manual_seed(1)).detach()
        sampler = inferkit.load_sampler("shortrun", num_steps=args.steps, step_size=args.step_size)
        times = {name: [] for name in (*ESTIMATORS, CHECKED)}
        values, infos = {}, {}
        for round_ in range(args.reps + 1):  # interleaved rounds; round 0 warms up and is not timed
            for name in ESTIMATORS:
                seconds, values[name], infos[name] = evaluate(model, sampler, x, name, options)
                times[name].append(seconds)
            times[CHECKED].append(evaluate(model, sampler, x, "exact", options, check_invertible=True)[0])
        times = {name: seconds[1:] for name, seconds in times.items()}
        exact = values["exact"]
        row = {"latent_dim": model.latent_dim}
        print(f"\nladder {size} (latent dimension {model.latent_dim}):")
        print(f"{'estimator':>11} {'s/eval':>9} {'speed-up':>9} {'max rel err J':>14} {'rel err mean J':>15} "
              f"{'max rel err logdet':>19}")
        for name in (*ESTIMATORS, CHECKED):
            seconds = statistics.median(times[name])
            speedup = statistics.median(times["exact"]) / seconds
            row[name] = {"seconds": seconds, "speedup_over_exact": speedup}
            if name == CHECKED:
                print(f"{name:>11} {seconds:9.3f} {speedup:9.2f}")
                continue
            error_j = float(((values[name] - exact).abs() / exact.abs()).max())
            error_mean_j = float((values[name].mean() - exact.mean()).abs() / exact.mean().abs())
            error_logdet = float(((infos[name].log_det - infos["exact"].log_det).abs()
                                  / infos["exact"].log_det.abs()).max())
            row[name].update({"max_relative_error_J": error_j, "relative_error_mean_J": error_mean_j,
                              "max_relative_error_logdet": error_logdet, "J": values[name].tolist()})
            print(f"{name:>11} {seconds:9.3f} {speedup:9.2f} {error_j:14.2e} {error_mean_j:15.2e} {error_logdet:19.2e}")
        results["sizes"][size] = row
        if not args.grid:
            continue
        grid = tuple(args.step_size * 2.0**e for e in range(-2, 6))
        chosen = {}
        for name in ("exact", "stochastic"):
            tuned = inferkit.load_sampler("shortrun", num_steps=args.steps, step_size=args.step_size)
            result = KLGrid(grid=grid, logdet=name, batch_size=args.batch, search="grid", **options).tune(
                model, tuned, x)
            chosen[name] = result.hyperparameters["step_size"].item()
        row["grid"] = {"grid": grid, "chosen": chosen, "same": chosen["exact"] == chosen["stochastic"]}
        print(f"kl-grid over {[round(g, 5) for g in grid]}: exact picks {chosen['exact']:.4g}, "
              f"stochastic picks {chosen['stochastic']:.4g}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
