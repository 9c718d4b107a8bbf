"""How closely a sampler's own inference follows the generator it trains, at every checkpoint of one run.

    python benchmarks/inference_gap.py --out bench/gap/seed1 --data-dir DIR --seed 1 --iterations 1200 --every 300
    python benchmarks/inference_gap.py --out bench/gap/n2000 --data-dir DIR --seed 1 --num-train 2000 ...
    python benchmarks/inference_gap.py --out bench/gap/lr --train-opt learning_rate=1e-4 ...
    python benchmarks/inference_gap.py --out bench/gap/seed1 --data-dir DIR --resume --iterations 2400

The run is the ladder learning-curve suite's (``compare.py --suite ladder-curve``, method ``shortrun``):
the ladder plugin with its defaults, ``shortrun`` (K = 20), ``kl-grid`` with its defaults every 100
iterations, batch 32, Adam at 1e-3 and the trainer's default schedules for the planned
``--iterations``, on MNIST's 8,000 / 2,000 split (``--num-train`` keeps the first that many training
images). ``--sampler``, ``--sampler-opt``, ``--tuner-opt`` and ``--train-opt KEY=VALUE`` (values read
as JSON, else as text) change it.

At every checkpoint (``--every`` iterations; ``--measure-at`` picks some of them) a callback
measures, on the first ``--examples`` training and test images, the mean per-pixel squared error of
the run's own inference and of the common reference inference (noise-free gradient flow,
``--reference-steps`` steps, step size chosen on 64 training images:
:func:`inferkit.eval.reference.reference_sampler`). The measurement changes
neither the model nor the global random state (``torch.random.fork_rng``, for samplers that draw from
it), so the run trains as it would without it. The own error falling on training images while it
stays level on test images is a gap between the images the generator learned from and new ones; both
level while the reference error falls is inference that no longer follows the generator.

A run stopped by SIGINT or SIGTERM saves its checkpoint and says how to continue it (exit code 130).
``--resume`` continues ``OUT/run`` to ``--iterations`` in total with the schedules it was planned
with (the iterations past its planned total train at its final learning rate and sigma, as
``inferkit run --resume`` does) and its own settings; the other options are then ignored.
``--threads`` (default 1) sets torch's CPU threads, for this call only.

Writes the run folder ``OUT/run``, a copy of every checkpoint (``OUT/checkpoints/<iteration>.pt``),
one JSON line per checkpoint to ``OUT/gap.jsonl`` (``{"iteration", "own_train", "own_test",
"ref_train", "ref_test", "step_size", "eval_seconds", "per_image"}``: the means and the per-image
errors) and ``OUT/gap.md``: the means, and each measure's paired per-image change from one
checkpoint to the next (mean ± standard error over the images).

    python benchmarks/inference_gap.py --out OUT --data-dir DIR --measure OUT/checkpoints/*.pt

measures saved checkpoint files of ``OUT/run`` the same way, training nothing, into
``OUT/measured.jsonl`` and ``OUT/measured.md``.

    python benchmarks/inference_gap.py --out OUT --data-dir DIR --report

writes ``OUT/gap.md`` from the lines ``OUT/gap.jsonl`` holds, training and measuring nothing: the
table of a run that was stopped before its end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from inferkit.callbacks import Callback
from inferkit.errors import TrainingInterrupted, UserError
from inferkit.eval.paired import paired_difference
from inferkit.eval.reconstruction import reconstruction_errors
from inferkit.eval.reference import reference_sampler
from inferkit.interfaces import Model, Sampler
from inferkit.options import parse_assignments
from inferkit.runs import CHECKPOINT_FILE, PluginSpec, RunSpec, TrainConfig, build_objects, restore_checkpoint
from inferkit.trainer import step_size_summary, train

MEASURES = ("own_train", "own_test", "ref_train", "ref_test")


def errors(model: Model, sampler: Sampler, x_train: torch.Tensor, x_test: torch.Tensor,
           reference_steps: int) -> dict[str, list[float]]:
    """Per-image squared errors of ``sampler``'s reconstructions and of the reference inference's
    (its step size chosen on the first 64 of ``x_train``), on ``x_train`` and ``x_test``, under a
    forked random-number state."""
    def per_image(inference: Sampler, x: torch.Tensor) -> list[float]:
        return reconstruction_errors(model, inference, x, batch_size=250).tolist()

    with torch.random.fork_rng():
        reference, _ = reference_sampler(model, x_train[:64], num_steps=reference_steps)
        return {"own_train": per_image(sampler, x_train), "own_test": per_image(sampler, x_test),
                "ref_train": per_image(reference, x_train), "ref_test": per_image(reference, x_test)}


def record(iteration: int, model: Model, sampler: Sampler, x_train: torch.Tensor, x_test: torch.Tensor,
           reference_steps: int) -> dict[str, Any]:
    """One line of ``gap.jsonl``: the mean of every measure, the step size, and the per-image errors."""
    began = time.perf_counter()
    per_image = errors(model, sampler, x_train, x_test, reference_steps)
    means = {name: sum(values) / len(values) for name, values in per_image.items()}
    return {"iteration": iteration, **means, "step_size": step_size_summary(sampler),
            "eval_seconds": time.perf_counter() - began, "per_image": per_image}


class InferenceGap(Callback):
    """At every checkpoint (or those of ``measure_at``), one :func:`record` appended to ``path``; with
    ``keep``, a copy of every checkpoint file first (``FOLDER/<iteration>.pt``)."""

    def __init__(self, model: Model, sampler: Sampler, x_train: torch.Tensor, x_test: torch.Tensor, path: Path,
                 reference_steps: int, keep: tuple[Path, Path] | None = None,
                 measure_at: frozenset[int] | None = None) -> None:
        self.model, self.sampler = model, sampler
        self.x_train, self.x_test, self.path, self.reference_steps = x_train, x_test, path, reference_steps
        self.keep, self.measure_at = keep, measure_at

    def on_checkpoint(self, done: int, *, more_to_come: bool) -> None:
        if self.keep is not None:  # (the run's checkpoint file, the folder its copies go to)
            checkpoint, folder = self.keep
            folder.mkdir(exist_ok=True)
            shutil.copyfile(checkpoint, folder / f"{done}.pt")
        if self.measure_at is not None and done not in self.measure_at:
            return
        line = record(done, self.model, self.sampler, self.x_train, self.x_test, self.reference_steps)
        with open(self.path, "a") as out:
            out.write(json.dumps(line) + "\n")


def paired_table(lines: list[dict[str, Any]]) -> str:
    """Means per checkpoint, and each measure's paired per-image difference from one line to the next
    (mean ± standard error over the images) where both hold their per-image errors."""
    rows = ["| iteration | s | " + " | ".join(MEASURES) + " |", "|---:|---:|" + "---:|" * len(MEASURES)]
    for line in lines:
        rows.append(f"| {line['iteration']} | {line['step_size']:.3f} | "
                    + " | ".join(f"{line[name]:.4f}" for name in MEASURES) + " |")
    rows += ["", "| change | " + " | ".join(MEASURES) + " |", "|---|" + "---:|" * len(MEASURES)]
    for before, after in itertools.pairwise(lines):
        if "per_image" not in before or "per_image" not in after:
            continue
        changes = [paired_difference(before["per_image"][name], after["per_image"][name]) for name in MEASURES]
        cells = [f"{c['mean_difference']:+.4f} ± {c['standard_error']:.4f}" for c in changes]
        rows.append(f"| {before['iteration']} -> {after['iteration']} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def measure_checkpoints(run_dir: Path, checkpoints: list[Path], examples: int, reference_steps: int,
                        path: Path) -> list[dict[str, Any]]:
    """:func:`record` of each saved checkpoint file of the run in ``run_dir``, in order of iteration,
    written to ``path``."""
    spec = RunSpec.load(run_dir)
    data, model, sampler, _ = build_objects(spec, resolve=False)
    lines = []
    for checkpoint in checkpoints:
        state = restore_checkpoint(checkpoint, "cpu", model, sampler)
        lines.append(record(int(state["iteration"]), model, sampler, data.train.x[:examples],
                            data.test.x[:examples], reference_steps))
    lines.sort(key=lambda line: line["iteration"])
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def _options(items: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items with each value read as JSON where it parses, else kept as text."""
    def value(text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    return {key: value(text) for key, text in parse_assignments(items, flag).items()}


def run_spec(args: argparse.Namespace) -> RunSpec:
    train_options = {"batch_size": 32, "learning_rate": 1e-3, "tune_every": 100, "log_every": 10,
                     **_options(args.train_opt, "--train-opt")}
    return RunSpec(model=PluginSpec("ladder"), sampler=PluginSpec(args.sampler, _options(args.sampler_opt, "--sampler-opt")),
                   tuner=PluginSpec("kl-grid", _options(args.tuner_opt, "--tuner-opt")),
                   data=PluginSpec("mnist", {"data_dir": str(args.data_dir), "num_train": args.num_train}),
                   train=TrainConfig(iterations=args.iterations, seed=args.seed, checkpoint_every=args.every,
                                     image_every=args.iterations, **train_options))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="MNIST's t10k files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--every", type=int, default=300, help="checkpoint (and measure) every this many iterations")
    parser.add_argument("--measure-at", default=None, metavar="I,J,...",
                        help="measure only at these checkpoint iterations (every checkpoint is still kept)")
    parser.add_argument("--num-train", type=int, default=0, help="keep the first this many training images (0: all)")
    parser.add_argument("--examples", type=int, default=500, help="training and test images measured")
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--resume", action="store_true", help="continue OUT/run to --iterations")
    parser.add_argument("--measure", type=Path, nargs="+", default=None, metavar="CHECKPOINT",
                        help="measure these saved checkpoint files of OUT/run (nothing is trained) into "
                             "OUT/measured.jsonl")
    parser.add_argument("--report", action="store_true",
                        help="write OUT/gap.md from OUT/gap.jsonl (nothing is trained or measured)")
    parser.add_argument("--sampler", default="shortrun")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's CPU threads (values differ from another count's in the last digits)")
    for flag in ("--sampler-opt", "--tuner-opt", "--train-opt"):
        parser.add_argument(flag, action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads < 1:
        print(f"error: --threads must be 1 or more, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        lines = reported(args.out) if args.report else measured(args) if args.measure else trained(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted:  # SIGINT/SIGTERM: the run stopped after its checkpoint
        measure = f" --measure-at {args.measure_at}" if args.measure_at else ""
        print(f"error: interrupted; continue with python benchmarks/inference_gap.py --out {args.out} "
              f"--data-dir {args.data_dir} --resume --iterations {args.iterations}{measure}", file=sys.stderr)
        return 130
    table = paired_table(lines)
    (args.out / ("measured.md" if args.measure else "gap.md")).write_text(table)
    print(table, end="")
    return 0


def trained(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train (or continue) ``OUT/run``, measuring at every checkpoint (or those of ``--measure-at``);
    every line of ``OUT/gap.jsonl``."""
    run_dir = args.out / "run"
    if args.resume:
        spec = RunSpec.load(run_dir)
        spec.train.resized(args.iterations)
    elif run_dir.exists():
        raise UserError(f"{run_dir} exists; give a new --out, or --resume to continue it")
    else:
        spec = run_spec(args)
    measured_iterations = measure_at(args.measure_at, spec.train.checkpoint_every)
    data, model, sampler, tuner = build_objects(spec, resolve=not args.resume)
    args.out.mkdir(parents=True, exist_ok=True)
    gap = InferenceGap(model, sampler, data.train.x[:args.examples], data.test.x[:args.examples],
                       args.out / "gap.jsonl", args.reference_steps,
                       keep=(run_dir / CHECKPOINT_FILE, args.out / "checkpoints"), measure_at=measured_iterations)
    train(model, sampler, tuner, data, spec, run_dir, resume=args.resume, progress=False, callbacks=[gap])
    return [json.loads(line) for line in (args.out / "gap.jsonl").read_text().splitlines()]


def reported(out: Path) -> list[dict[str, Any]]:
    """The lines of ``out/gap.jsonl``, whole runs' or a stopped run's."""
    path = out / "gap.jsonl"
    if not path.is_file():
        raise UserError(f"{path} does not exist; --report reads the lines of a run made with --out {out}")
    return [json.loads(line) for line in path.read_text().splitlines()]


def measure_at(text: str | None, every: int) -> frozenset[int] | None:
    """``--measure-at``'s iterations, checkpoints of a run that checkpoints every ``every`` iterations
    (None: every checkpoint)."""
    if text is None:
        return None
    try:
        iterations = frozenset(int(item) for item in text.split(","))
    except ValueError:
        raise UserError(f"--measure-at takes iterations separated by commas, got {text!r}") from None
    if not iterations or min(iterations) <= 0 or any(i % every for i in iterations):
        raise UserError(f"--measure-at takes positive multiples of the run's checkpoint interval ({every}), "
                        f"got {text!r}")
    return iterations


def measured(args: argparse.Namespace) -> list[dict[str, Any]]:
    missing = [str(path) for path in args.measure if not path.is_file()]
    if missing:
        raise UserError(f"no checkpoint file {missing[0]}; give files saved from OUT/run's checkpoint.pt")
    return measure_checkpoints(args.out / "run", args.measure, args.examples, args.reference_steps,
                               args.out / "measured.jsonl")


if __name__ == "__main__":
    sys.exit(main())
