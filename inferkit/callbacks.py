"""What a training run reports, apart from what it computes: callbacks, as pythae's ``CallbackHandler``.

The trainer calls a :class:`CallbackHandler` at fixed points of Algorithm 1; in a data-parallel run
only rank 0 holds callbacks, so nothing else in the trainer asks which rank it is. Built in:

* :class:`RunWriter`: ``metrics.jsonl``, ``tuner.jsonl``, image grids, the tuner figures, ``summary.json``;
* :class:`ProgressDisplay`: a rich progress bar with loss, MSE, step size and speed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from inferkit.images import is_image_shape, save_grid
from inferkit.interfaces import Model, Sampler
from inferkit.run_folder import METRICS_FILE, SUMMARY_FILE, TUNER_FILE, append_jsonl
from inferkit.runs import write_json_atomic
from inferkit.seeding import seeded_generator


class Callback:
    """Hooks of a training run; every default does nothing.

    Order: ``on_train_begin`` once; per iteration ``on_tune`` (tuning iterations), ``on_log`` (logged
    iterations), ``on_iteration_end``, ``on_checkpoint`` (after a checkpoint is written); ``on_train_end``
    once with the summary; ``close`` always, also when the run stops with an error."""

    def on_train_begin(self, start: int, total: int, step_size: float) -> None: ...

    def on_tune(self, record: dict[str, Any]) -> None: ...

    def on_log(self, record: dict[str, Any]) -> None: ...

    def on_iteration_end(self, done: int) -> None: ...

    def on_checkpoint(self, done: int, *, more_to_come: bool) -> None: ...

    def on_train_end(self, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class CallbackHandler(Callback):
    """Calls each of ``callbacks`` in order."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_train_begin(self, start: int, total: int, step_size: float) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(start, total, step_size)

    def on_tune(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_tune(record)

    def on_log(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_log(record)

    def on_iteration_end(self, done: int) -> None:
        for callback in self.callbacks:
            callback.on_iteration_end(done)

    def on_checkpoint(self, done: int, *, more_to_come: bool) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(done, more_to_come=more_to_come)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_train_end(summary)

    def close(self) -> None:
        for callback in self.callbacks:
            callback.close()


def save_images(model: Model, sampler: Sampler, x_test: torch.Tensor, run_dir: Path, tag: str, seed: int) -> None:
    """``samples_TAG.png`` (64 draws from the model) and ``reconstructions_TAG.png`` (rows of test
    images and their decoded inferences) for image data; nothing for other data."""
    if not is_image_shape(tuple(model.data_shape)):
        return
    with torch.no_grad():
        samples = model.sample(64, generator=seeded_generator(seed, 7, x_test.device))
    save_grid(samples, run_dir / f"samples_{tag}.png", nrow=8)
    originals = x_test[:32]
    recon = sampler.infer(model, originals, generator=seeded_generator(seed, 11, x_test.device)).z
    with torch.no_grad():
        decoded = model.decode(recon)
    rows = torch.cat([originals[:8], decoded[:8], originals[8:16], decoded[8:16]])
    save_grid(rows, run_dir / f"reconstructions_{tag}.png", nrow=8)


def plot_tuning(run_dir: Path, console: Console) -> None:
    """Redraw the tuner figures (:mod:`inferkit.plots`); a failure is a warning, never the end of a run."""
    try:
        from inferkit.plots import plot_run_tuning

        plot_run_tuning(run_dir)
    except Exception as exc:  # noqa: BLE001 - figures are a by-product; training goes on
        console.print(f"warning: could not draw the tuner figures in {run_dir} ({type(exc).__name__}: {exc})",
                      markup=False, highlight=False)


class RunWriter(Callback):
    """Writes the run folder's logs and figures: a line of ``metrics.jsonl`` per logged iteration and of
    ``tuner.jsonl`` per tuning, image grids every ``image_every`` iterations and at the end, the tuner
    figures after each checkpoint, and ``summary.json``."""

    def __init__(self, run_dir: Path, model: Model, sampler: Sampler, x_test: torch.Tensor, *, seed: int,
                 image_every: int, plots: bool, console: Console) -> None:
        self.run_dir, self.model, self.sampler, self.x_test = run_dir, model, sampler, x_test
        self.seed, self.image_every, self.plots, self.console = seed, image_every, plots, console

    def on_tune(self, record: dict[str, Any]) -> None:
        append_jsonl(self.run_dir / TUNER_FILE, record)

    def on_log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.run_dir / METRICS_FILE, record)

    def on_iteration_end(self, done: int) -> None:
        if done % self.image_every == 0:
            save_images(self.model, self.sampler, self.x_test, self.run_dir, f"{done:06d}", self.seed)

    def on_checkpoint(self, done: int, *, more_to_come: bool) -> None:
        if self.plots and more_to_come:
            plot_tuning(self.run_dir, self.console)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        save_images(self.model, self.sampler, self.x_test, self.run_dir, "final", self.seed)
        plot_tuning(self.run_dir, self.console)
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)


class ProgressDisplay(Callback):
    """A rich progress bar on ``console``: iterations done, loss, MSE, step size, iterations per second."""

    COLUMNS = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4g}  mse {task.fields[mse]:.4f}  "
                          "s {task.fields[step]:.3g}  {task.fields[speed]:.2f} it/s"), TimeRemainingColumn())

    def __init__(self, console: Console) -> None:
        self.bar = Progress(*self.COLUMNS, console=console, transient=False)
        self.task = None

    def on_train_begin(self, start: int, total: int, step_size: float) -> None:
        self.task = self.bar.add_task("train", total=total, completed=start, loss=math.nan, mse=math.nan,
                                      step=step_size, speed=0.0)
        self.bar.start()

    def on_log(self, record: dict[str, Any]) -> None:
        self.bar.update(self.task, loss=record["loss"], mse=record["mse"], step=record["step_size"],
                        speed=record["iterations_per_second"])

    def on_iteration_end(self, done: int) -> None:
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        self.bar.stop()
