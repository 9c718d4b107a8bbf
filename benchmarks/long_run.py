"""A long training run in segments, with its test-MSE learning curve; it can stop and continue any time.

    python benchmarks/long_run.py --out bench/long-mnist --data-dir DIR --planned 300000 --segment 500 \\
        -- --config configs/paper/mnist.toml [more `inferkit run` options]

The first segment starts ``inferkit run`` (the options after ``--``) with ``--iterations SEGMENT`` and
the schedules of the ``--planned`` total (``--train-opt schedule_iterations=PLANNED``: the learning
rate and sigma are those of a ``PLANNED``-iteration run); every later one is ``inferkit run --resume
OUT/run --iterations T``. After each segment, ``inferkit eval`` measures the test MSE of the run's own
inference on ``--test-examples`` test images (eval's seeded subset: the same images every time) and one line
``{"iteration", "test_mse", "step_size", "train_seconds"}`` is appended to ``OUT/curve.jsonl``.
Started again with the same ``--out``, it continues from the last checkpoint (a segment cut short
resumes from the run's last checkpoint); ``--until`` stops it at that iteration (default: planned).
Writes ``OUT/curve.md``: the curve as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def inferkit(*args: str) -> None:
    """``inferkit ARGS`` in a child process (``python -m inferkit``), failing loudly."""
    subprocess.run([sys.executable, "-m", "inferkit", *args], check=True, cwd=REPO)


def measured_iteration(run_dir: Path) -> int:
    """Where the last finished segment ended (0: none has), from the run's ``summary.json``."""
    summary = run_dir / "summary.json"
    return int(json.loads(summary.read_text())["iterations"]) if summary.is_file() else 0


def measure(run_dir: Path, test_examples: int) -> dict[str, float]:
    """Test MSE of the run's own inference on ``test_examples`` test images (eval's seeded subset), nothing else."""
    inferkit("eval", str(run_dir), "--num-examples", str(test_examples), "--reference-steps", "0",
             "--inpaint-examples", "0", "--ais-examples", "0", "--bdmc-examples", "0", "--iwae-samples", "0",
             "--fd-samples", "0", "--no-figures", "--quiet")
    evaluation = json.loads((run_dir / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"iteration": int(summary["iterations"]), "test_mse": evaluation["test_reconstruction_mse"],
            "step_size": summary["final_step_size"], "train_seconds": summary["seconds"]}


def curve_markdown(points: list[dict[str, float]], test_examples: int) -> str:
    lines = [f"Test MSE of the run's own inference on {test_examples} test images (the same every time).", "",
             "| iteration | test MSE | step size s | training seconds |", "|---:|---:|---:|---:|"]
    lines += [f"| {p['iteration']} | {p['test_mse']:.4f} | {p['step_size']:.4f} | {p['train_seconds']:.0f} |"
              for p in points]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--planned", type=int, required=True, help="the run's planned total (its schedules)")
    parser.add_argument("--segment", type=int, default=500, help="iterations between two measurements")
    parser.add_argument("--until", type=int, default=0, help="stop at this iteration (0: --planned)")
    parser.add_argument("--test-examples", type=int, default=500)
    args = parser.parse_args(argv[:split])
    run_options = argv[split + 1:]
    run_dir, curve = args.out / "run", args.out / "curve.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    until = args.until or args.planned
    done = measured_iteration(run_dir)
    while done < until:
        target = min(done + args.segment, until)
        if not (run_dir / "checkpoint.pt").is_file():  # a new run, or one that died before its first checkpoint
            inferkit("run", *run_options, "--data-dir", args.data_dir, "--iterations", str(target),
                     "--train-opt", f"schedule_iterations={args.planned}", "--out", str(run_dir), "--quiet")
        else:
            inferkit("run", "--resume", str(run_dir), "--iterations", str(target), "--quiet")
        point = measure(run_dir, args.test_examples)
        with curve.open("a") as handle:
            handle.write(json.dumps(point) + "\n")
        points = [json.loads(line) for line in curve.read_text().splitlines() if line.strip()]
        (args.out / "curve.md").write_text(curve_markdown(points, args.test_examples))
        print(f"iteration {point['iteration']}: test MSE {point['test_mse']:.4f}", flush=True)
        done = target
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(REPO))
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as failed:  # the child's one-line error is already on stderr
        sys.exit(failed.returncode)
