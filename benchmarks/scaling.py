"""Data-parallel scaling: seconds per training iteration and samples per second of
``inferkit run`` with 1 and more processes (``torchrun``, gloo on the CPU, nccl on GPUs), the same
global batch, model and sampler in every configuration; interleaved rounds, medians.

    python benchmarks/scaling.py                                   # CPU: 1x1, 1x2 and 2x1 processes x threads
    python benchmarks/scaling.py --configs 1x2,2x1 --rounds 3 --iterations 30
    python benchmarks/scaling.py --device cuda --configs 1x8 --batch 128 --model-opt image_size=64 ...

Each configuration trains a fresh run of ``--iterations`` iterations (shortrun, fixed step size, no
tuning, checkpoint and images only at the end) and reads the trainer's own clock from the run's
``metrics.jsonl``: the seconds between the first and the last logged iteration, so process start-up,
data loading and the first (warm-up) iteration are left out. ``1x2`` is one process with two threads,
``2x1`` two processes with one thread each: the same cores, so their ratio is what data parallelism
buys on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for item in text.split(","):
        processes, _, threads = item.strip().partition("x")
        configs.append((int(processes), int(threads or 1)))
    return configs


def run_once(processes: int, threads: int, args, out: Path) -> float:
    """Seconds per iteration of one fresh run (the trainer's clock, warm-up iteration excluded)."""
    command = ["run", "--model", "ladder", "--sampler", "shortrun", "--tuner", "fixed", "--tune-every", "0",
               "--sampler-opt", f"num_steps={args.steps}", "--sampler-opt", "step_size=0.01",
               "--iterations", str(args.iterations), "--batch-size", str(args.batch), "--device", args.device,
               "--train-opt", "log_every=1", "--train-opt", f"checkpoint_every={args.iterations}",
               "--train-opt", f"image_every={args.iterations}", "--quiet", "--out", str(out)]
    for option in args.model_opt:
        command += ["--model-opt", option]
    for option in args.data_opt:
        command += ["--data-opt", option]
    if args.data:
        command += ["--data", args.data]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if processes == 1:
        launcher = [sys.executable, "-m", "inferkit"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(processes), "-m", "inferkit"]
    done = subprocess.run(launcher + command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: the {processes}x{threads} run failed:\n{done.stderr[-2000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # iterations_per_second is cumulative from the loop's start: seconds at iteration i = (i + 1) / speed.
    first, last = metrics[0], metrics[-1]
    seconds_first = (first["iteration"] + 1) / first["iterations_per_second"]
    seconds_last = (last["iteration"] + 1) / last["iterations_per_second"]
    return (seconds_last - seconds_first) / (last["iteration"] - first["iteration"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="1x1,1x2,2x1", help="PROCESSESxTHREADS, comma-separated")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="global batch (split over the processes)")
    parser.add_argument("--steps", type=int, default=20, help="K")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None, help="dataset plugin [default: inferkit's]")
    parser.add_argument("--model-opt", action="append", default=[], help="key=value for the ladder model")
    parser.add_argument("--data-opt", action="append", default=[], help="key=value for the dataset")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    configs = parse_configs(args.configs)
    if args.iterations < 3 or args.rounds < 1 or args.batch < 1:
        parser.error("--iterations must be >= 3, --rounds and --batch positive")
    times: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for i in range(len(configs)):
                config = configs[(i + round_) % len(configs)]  # rotate the order between rounds
                out = Path(scratch) / f"{config[0]}x{config[1]}-{round_}"
                times[config].append(run_once(*config, args, out))
                print(f"  round {round_}: {config[0]}x{config[1]} {times[config][-1]:.3f} s/iteration", flush=True)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    rows = []
    base = statistics.median(times[configs[0]])
    for config in configs:
        median = statistics.median(times[config])
        rows.append({"processes": config[0], "threads_per_process": config[1], "seconds_per_iteration": median,
                     "all_seconds": times[config], "samples_per_second": args.batch / median,
                     "speed_up_over_first": base / median})
    print(f"\n## Data-parallel scaling: {device}, ladder {' '.join(args.model_opt) or 'defaults'}, shortrun K="
          f"{args.steps}, global batch {args.batch}, median of {args.rounds} rounds\n")
    print("| processes x threads | s / iteration | samples / s | speed-up over the first row |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['processes']} x {row['threads_per_process']} | {row['seconds_per_iteration']:.3f} | "
              f"{row['samples_per_second']:.1f} | {row['speed_up_over_first']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
