"""Optional loggers of a training run: ``inferkit run --logger tensorboard``.

A logger is a :class:`~inferkit.callbacks.Callback` beside the run folder's writer, which stays
the record (``metrics.jsonl``, ``tuner.jsonl``, ``summary.json``): a logger only mirrors what the
writer records, so a run without one loses nothing.

:class:`TensorBoardLogger` writes TensorBoard event files into ``RUN/tensorboard/`` with
:class:`torch.utils.tensorboard.SummaryWriter` (which needs the ``tensorboard`` package:
``pip install inferkit[tensorboard]``):

* ``train/loss``, ``train/mse``, ``train/step_size``, ``train/learning_rate``, ``train/sigma``,
  ``train/iterations_per_second`` at each logged iteration;
* ``tune/<hyperparameter>`` (``tune/step_size``, one entry per layer or step as ``tune/step_size/i``),
  ``tune/objective`` (the chosen J) and ``tune/seconds`` at each tuning;
* ``test/mse`` at the first and the last iteration, ``summary/tuning_seconds`` at the last;
* the image grids (``samples``, ``reconstructions``) each time the writer saves them, and the tuner
  figures (the J(s) curves, ``tuner_objective``, and the chosen step sizes, ``tuner_step_size``)
  each time the writer draws them.

A resumed run hides the events past its checkpoint (``purge_step``), so the curves continue
from where the checkpoint left them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inferkit.callbacks import Callback
from inferkit.errors import UserError
from inferkit.plots import OBJECTIVE_PNG, STEP_SIZE_PNG

__all__ = ["LOGGERS", "TENSORBOARD_DIR", "TensorBoardLogger", "check_logger", "make_logger"]

LOGGERS = ("tensorboard",)
TENSORBOARD_DIR = "tensorboard"
MISSING_TENSORBOARD = ("--logger tensorboard needs the tensorboard package, which is not installed; install it "
                       "with: pip install inferkit[tensorboard] (or pip install tensorboard)")


def _summary_writer_class():
    """:class:`torch.utils.tensorboard.SummaryWriter`; without the ``tensorboard`` package a
    :class:`UserError` saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(MISSING_TENSORBOARD) from None
    return SummaryWriter


def check_logger(name: str | None) -> None:
    """A :class:`UserError` unless ``name`` is ``None`` or a logger in :data:`LOGGERS` that can be
    built here (its package is installed)."""
    if name is None:
        return
    if name not in LOGGERS:
        raise UserError(f"unknown --logger {name!r}; the loggers are {', '.join(LOGGERS)}")
    _summary_writer_class()


def make_logger(name: str, run_dir: Path, *, image_every: int) -> Callback:
    """The logger ``name`` (see :func:`check_logger`) writing for the run in ``run_dir``."""
    check_logger(name)
    return TensorBoardLogger(run_dir, image_every=image_every)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardLogger(Callback):
    """Mirrors the run folder's records into TensorBoard event files in ``RUN/tensorboard/``; see the
    module docstring for the tags."""

    def __init__(self, run_dir: Path, *, image_every: int) -> None:
        self.run_dir, self.image_every = Path(run_dir), image_every
        self.writer_class = _summary_writer_class()
        self.writer = None
        self.start = self.total = 0
        self.figures_seen: dict[str, int] = {}

    def on_train_begin(self, start: int, total: int, step_size: float) -> None:
        self.start, self.total = start, total
        self.writer = self.writer_class(log_dir=str(self.run_dir / TENSORBOARD_DIR),
                                        purge_step=start if start > 0 else None)

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if self.writer is not None and _finite(value):
            self.writer.add_scalar(tag, float(value), step)

    def on_log(self, record: dict[str, Any]) -> None:
        step = record["iteration"]
        for key in ("loss", "mse", "step_size", "learning_rate", "sigma", "iterations_per_second"):
            self._scalar(f"train/{key}", record.get(key), step)

    def on_tune(self, record: dict[str, Any]) -> None:
        step = record["iteration"]
        for name, value in record["hyperparameters"].items():
            values = np.asarray(value, dtype=np.float64).reshape(-1)
            if values.size == 1:
                self._scalar(f"tune/{name}", values[0], step)
            else:
                for i, entry in enumerate(values):
                    self._scalar(f"tune/{name}/{i}", entry, step)
        self._scalar("tune/objective", record.get("objective"), step)
        self._scalar("tune/seconds", record.get("seconds"), step)

    def _image(self, tag: str, path: Path, step: int) -> None:
        """Add the PNG at ``path`` (written by the run folder's writer) as image ``tag``; a missing or
        unreadable file is skipped (the writer reports its own failures)."""
        if self.writer is None or not path.is_file():
            return
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB"))
        except OSError:
            return
        self.writer.add_image(tag, pixels, step, dataformats="HW" if pixels.ndim == 2 else "HWC")

    def _grids(self, suffix: str, step: int) -> None:
        for kind in ("samples", "reconstructions"):
            self._image(f"images/{kind}", self.run_dir / f"{kind}_{suffix}.png", step)

    def _figures(self, step: int) -> None:
        """The tuner figures, each time the writer has redrawn them (a new modification time)."""
        for name in (OBJECTIVE_PNG, STEP_SIZE_PNG):
            path = self.run_dir / name
            if not path.is_file():
                continue
            stamp = path.stat().st_mtime_ns
            if self.figures_seen.get(name) != stamp:
                self.figures_seen[name] = stamp
                self._image(f"tuner/{Path(name).stem}", path, step)

    def on_iteration_end(self, done: int) -> None:
        if done % self.image_every == 0:
            self._grids(f"{done:06d}", done)

    def on_checkpoint(self, done: int, *, more_to_come: bool) -> None:
        self._figures(done)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        end = summary.get("iterations", self.total)
        if self.start == 0:  # a resumed run logged its starting MSE before
            self._scalar("test/mse", summary.get("test_mse_start"), 0)
        self._scalar("test/mse", summary.get("test_mse_end"), end)
        self._scalar("summary/tuning_seconds", summary.get("tuning_seconds"), end)
        self._scalar("summary/final_step_size", summary.get("final_step_size"), end)
        if end % self.image_every != 0:  # else the grids of iteration `end` are these
            self._grids("final", end)
        self._figures(end)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
