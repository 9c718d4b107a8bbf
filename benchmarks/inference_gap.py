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

At every checkpoint (``--every`` iterations) a callback measures, on the first ``--examples`` training
and test images, the mean per-pixel squared error of the run's own inference and of the common
reference inference (noise-free gradient flow, ``--reference-steps`` steps, step size chosen on 64
training images: :func:`inferkit.eval.reference.reference_sampler`), under its own random-number
state so the run trains as it would without it. The own error falling on training images while it
stays level on test images is a gap between the images the generator learned from and new ones; both
level while the reference error falls is inference that no longer follows the generator.

``--resume`` continues ``OUT/run`` to ``--iterations`` in total with the schedules it was planned
with (the iterations past its planned total train at its final learning rate and sigma, as
``inferkit run --resume`` does) and its own settings; the other options are then ignored.

Writes the run folder ``OUT/run`` and one JSON line per checkpoint to ``OUT/gap.jsonl``:
``{"iteration", "own_train", "own_test", "ref_train", "ref_test", "step_size", "eval_seconds"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from inferkit.callbacks import Callback
from inferkit.errors import UserError
from inferkit.eval.reconstruction import reconstruction_errors
from inferkit.eval.reference import reference_sampler
from inferkit.interfaces import Model, Sampler
from inferkit.options import parse_assignments
from inferkit.runs import PluginSpec, RunSpec, TrainConfig, build_objects
from inferkit.trainer import step_size_summary, train


class InferenceGap(Callback):
    """At every checkpoint, one line of own and reference reconstruction errors on ``x_train`` and
    ``x_test`` appended to ``path``."""

    def __init__(self, model: Model, sampler: Sampler, x_train: torch.Tensor, x_test: torch.Tensor, path: Path,
                 reference_steps: int) -> None:
        self.model, self.sampler = model, sampler
        self.x_train, self.x_test, self.path, self.reference_steps = x_train, x_test, path, reference_steps

    def on_checkpoint(self, done: int, *, more_to_come: bool) -> None:
        began = time.perf_counter()
        with torch.random.fork_rng():
            record = {"iteration": done, **self.errors()}
        record.update(step_size=step_size_summary(self.sampler), eval_seconds=time.perf_counter() - began)
        with open(self.path, "a") as out:
            out.write(json.dumps(record) + "\n")

    def errors(self) -> dict[str, float]:
        def mse(sampler: Sampler, x: torch.Tensor) -> float:
            return reconstruction_errors(self.model, sampler, x, batch_size=250).mean().item()

        reference, _ = reference_sampler(self.model, self.x_train[:64], num_steps=self.reference_steps)
        return {"own_train": mse(self.sampler, self.x_train), "own_test": mse(self.sampler, self.x_test),
                "ref_train": mse(reference, self.x_train), "ref_test": mse(reference, self.x_test)}


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
    parser.add_argument("--num-train", type=int, default=0, help="keep the first this many training images (0: all)")
    parser.add_argument("--examples", type=int, default=500, help="training and test images measured")
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--resume", action="store_true", help="continue OUT/run to --iterations")
    parser.add_argument("--sampler", default="shortrun")
    for flag in ("--sampler-opt", "--tuner-opt", "--train-opt"):
        parser.add_argument(flag, action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run_dir = args.out / "run"
    try:
        if args.resume:
            spec = RunSpec.load(run_dir)
            spec.train.resized(args.iterations)
        elif run_dir.exists():
            raise UserError(f"{run_dir} exists; give a new --out, or --resume to continue it")
        else:
            spec = run_spec(args)
        data, model, sampler, tuner = build_objects(spec, resolve=not args.resume)
        args.out.mkdir(parents=True, exist_ok=True)
        gap = InferenceGap(model, sampler, data.train.x[:args.examples], data.test.x[:args.examples],
                           args.out / "gap.jsonl", args.reference_steps)
        train(model, sampler, tuner, data, spec, run_dir, resume=args.resume, progress=False, callbacks=[gap])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
