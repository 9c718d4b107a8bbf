"""J(s) against the test error of a trained generator's short-run inference, over a range of s.

    python benchmarks/step_size_probe.py RUN [--model SPEC] [--examples 256] [--j-examples 16]
        [--step-sizes 0.01,0.02,...] [--logdet stepwise|exact|stochastic] [--j-split test|train]
        [--num-steps K] [--momentum MU]

For the run's trained model (at the observation sigma it was checkpointed with) and a noise-free
short-run sampler with the run's K (or ``--num-steps``) and the run's kind of steps (gradient flow, or
heavy-ball steps at the run's momentum; ``--momentum MU`` probes heavy-ball steps at MU, 0 plain gradient
flow), for every step size s of a geometric range, or of
``--step-sizes`` (the authors' units, gradient coefficient s^2 / 2), it reports:

- the test MSE of the reconstruction from ``z_K`` (the first ``--examples`` test images);
- ``J(s)``, mean and median over the first ``--j-examples`` images of ``--j-split`` (``--draws``
  draws of ``z_0`` each, the same draws at every s), with the ``--logdet`` log-determinant
  (default the stepwise float64 one; ``stochastic`` for generators too large for it);
- the smallest eigenvalue of any step map ``I + S H_k`` on those paths (the flow is invertible where
  it is positive), which is what ``kl-grid``'s ``require_invertible=true`` rule decides by; with
  ``--logdet stochastic`` the smallest Lanczos Ritz value, which can only overstate it.

It prints a table and the argmins, and writes ``RUN/step_size_probe.json``. It answers: does the
step size that minimises J reconstruct well, and where does the invertibility rule put s?
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from inferkit.errors import UserError
from inferkit.eval.reconstruction import reconstruction_mse
from inferkit.interfaces import Sampler
from inferkit.objective import LOGDET_METHODS, LogDetEstimator, kl_objective
from inferkit.runs import CHECKPOINT_FILE, RunSpec, build_objects, restore_checkpoint
from inferkit.samplers.shortrun import ShortRun
from inferkit.samplers.shortrun_momentum import ShortRunMomentum


def probe(run: Path, model_name: str | None, step_sizes: list[float], examples: int, j_examples: int,
          draws: int, logdet: str = "stepwise", j_split: str = "test", num_steps: int | None = None,
          momentum: float | None = None) -> list[dict]:
    spec = RunSpec.load(run, model=model_name)
    data, model, sampler, _ = build_objects(spec)
    restore_checkpoint(run / CHECKPOINT_FILE, "cpu", model, sampler)
    model.eval()
    x = data.test.x[:examples]
    x_j = {"test": data.test, "train": data.train}[j_split].x[:j_examples]
    rows = []
    for s in step_sizes:
        flow = probed_flow(sampler, s, num_steps or sampler.num_steps, momentum)
        mse = reconstruction_mse(model, flow, x)
        with torch.no_grad():
            result = kl_objective(model, flow, x_j, num_samples=draws,
                                  estimator=LogDetEstimator(logdet),
                                  generator=torch.Generator().manual_seed(0))
        values = [float(v) for v in result.objective]
        finite = [v for v in values if math.isfinite(v)]
        rows.append({"step_size": s, "test_mse": mse,
                     "J_mean": sum(values) / len(values),
                     "J_median": statistics.median(finite) if finite else math.nan,
                     "min_eigenvalue": result.info.min_eigenvalue, "invertible": result.info.invertible})
        print(f"s={s:.4g}  MSE {mse:.4f}  J mean {rows[-1]['J_mean']:.1f}  median {rows[-1]['J_median']:.1f}  "
              f"min eig {result.info.min_eigenvalue:.3g}", flush=True)
    return rows


def probed_flow(run_sampler: Sampler, step_size: float, num_steps: int, momentum: float | None) -> ShortRun:
    """The noise-free flow probed at ``step_size``: heavy-ball steps at ``momentum`` where it is given and
    positive, plain gradient flow where it is 0, else the run's kind of steps (its momentum and Nesterov
    look-ahead where it ran ``shortrun-momentum``)."""
    if momentum is None and isinstance(run_sampler, ShortRunMomentum):
        return ShortRunMomentum(num_steps=num_steps, step_size=step_size, momentum=float(run_sampler.momentum),
                                nesterov=run_sampler.nesterov)
    if momentum:
        return ShortRunMomentum(num_steps=num_steps, step_size=step_size, momentum=momentum)
    return ShortRun(num_steps=num_steps, step_size=step_size)


def step_size_list(text: str) -> list[float]:
    """``"0.01,0.02"`` -> ``[0.01, 0.02]``: positive, finite step sizes, or an argparse error."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(s) and s > 0 for s in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive step sizes, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--model", default=None, help="the run's model again (needed for pyro: models)")
    parser.add_argument("--smallest", type=float, default=0.005)
    parser.add_argument("--largest", type=float, default=0.3)
    parser.add_argument("--points", type=int, default=13)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--j-examples", type=int, default=16)
    parser.add_argument("--draws", type=int, default=1)
    parser.add_argument("--step-sizes", type=step_size_list, default=None,
                        help="comma-separated step sizes instead of the range")
    parser.add_argument("--logdet", choices=LOGDET_METHODS, default="stepwise")
    parser.add_argument("--j-split", choices=("test", "train"), default="test",
                        help="the images J is estimated on")
    parser.add_argument("--num-steps", type=int, default=None,
                        help="K of the probed flows (default: the run's); more than the run's shows how far its K "
                             "steps are from where the flow goes")
    parser.add_argument("--momentum", type=float, default=None,
                        help="probe heavy-ball steps at this momentum in [0, 1) (0: plain gradient flow; default: "
                             "the run's kind of steps)")
    args = parser.parse_args(argv)
    if args.num_steps is not None and args.num_steps < 1:
        parser.error(f"--num-steps must be a positive integer, got {args.num_steps}")
    if args.momentum is not None and not 0 <= args.momentum < 1:
        parser.error(f"--momentum must lie in [0, 1), got {args.momentum}")
    if args.momentum and args.logdet == "stochastic":
        parser.error("--logdet stochastic does not apply to the heavy-ball steps of --momentum; use stepwise or exact")
    if args.step_sizes:
        grid = args.step_sizes
    else:
        ratio = (args.largest / args.smallest) ** (1 / (args.points - 1))
        grid = [args.smallest * ratio ** i for i in range(args.points)]
    try:
        rows = probe(args.run, args.model, grid, args.examples, args.j_examples, args.draws,
                     logdet=args.logdet, j_split=args.j_split, num_steps=args.num_steps, momentum=args.momentum)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    best = {key: min((r for r in rows if math.isfinite(r[key])), key=lambda r: r[key])["step_size"]
            for key in ("test_mse", "J_mean", "J_median")}
    invertible = [r["step_size"] for r in rows if r["invertible"]]
    summary = {"argmin": best, "largest_invertible": max(invertible) if invertible else None, "rows": rows}
    print(f"argmin test MSE {best['test_mse']:.4g}, argmin J (mean) {best['J_mean']:.4g}, "
          f"argmin J (median) {best['J_median']:.4g}, largest invertible s "
          f"{summary['largest_invertible'] if invertible else 'none'}")
    (args.run / "step_size_probe.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
