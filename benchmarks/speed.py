"""Speed of training the ladder model (issue 4): seconds per training iteration at K=20, the K-step
ratio against its floor (K forward+backward passes of log_joint), the same ratio for the naive loop
the authors' code uses, and peak memory of a training step at K=5 and K=50.

    python benchmarks/speed.py [--threads 2] [--batch 32] [--reps 5] [--json out.json]

All figures come from one run, measured side by side (interleaved rounds, medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_speed

import inferkit


def seconds_per_iteration(model, sampler, x, reps: int) -> float:
    """One Algorithm-1 iteration without tuning: infer z_K, loss, backward, Adam step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def iteration():
        inference = sampler.infer(model, x)
        loss = sampler.loss(model, x, inference)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    iteration()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = inferkit.load_model("ladder", image_size=16, channels=3)
    label = (f"ladder defaults (L={model.num_layers}, z {'+'.join(str(s[0]) for s in model.latent_shapes)}, nf={model.config.nf}, 3x16x16), "
             f"batch {args.batch}, {args.threads} threads")
    sampler = inferkit.load_sampler("shortrun", num_steps=20, step_size=0.01)
    x = model.sample(args.batch, generator=torch.Generator().manual_seed(0)).detach()
    report = {"model": label, "seconds_per_iteration_K20": seconds_per_iteration(model, sampler, x, args.reps)}
    report["ratios_K20"] = kernel_speed.measure_ratios(model, 0.01, args.batch, 20, args.reps, "cpu")
    memory_args = argparse.Namespace(threads=args.threads, batch=args.batch, device="cpu")
    report["memory"] = kernel_speed.measure_memory("ladder-default", memory_args)
    r = report["ratios_K20"]
    mem = report["memory"]
    mib = 1 / 2**20
    print(f"## {label}\n")
    print("| figure | value |\n|---|---|")
    print(f"| seconds per training iteration (K=20, no tuning) | {report['seconds_per_iteration_K20']:.3f} |")
    print(f"| K x (forward+backward of log_joint), K=20 | {r['floor_s']:.3f} s |")
    print(f"| ratio shortrun / floor (median, best-of) | {r['shortrun_ratio']:.3f}, {r['shortrun_best_ratio']:.3f} |")
    print(f"| ratio langevin / floor | {r['langevin_ratio']:.3f}, {r['langevin_best_ratio']:.3f} |")
    print(f"| ratio naive Langevin loop / floor | {r['naive_langevin_ratio']:.3f}, "
          f"{r['naive_langevin_best_ratio']:.3f} |")
    for method in ("ours", "naive", "control"):
        k5, k50 = mem[f"{method}_K5"], mem[f"{method}_K50"]
        print(f"| peak memory of a training step, {method}, K=5 / K=50 | {k5['step_bytes'] * mib:.1f} / "
              f"{k50['step_bytes'] * mib:.1f} MiB ({k5['method']}) |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
