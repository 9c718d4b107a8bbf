"""Stopping a run safely: non-finite values before a step, and SIGINT / SIGTERM between steps."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from inferkit.errors import TrainingInterrupted
from inferkit.runs import CHECKPOINT_FILE


def nonfinite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d tensor, 1.0 when any of ``tensors`` holds a NaN or an infinity (one fused reduction: the
    max-norm of each tensor, which is NaN or inf exactly when the tensor has one; no host sync)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        norms = torch._foreach_norm([t.detach() for t in tensors], math.inf)
        return (~torch.isfinite(torch.stack([n.double() for n in norms]))).any().double()


def gradients(parameters: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in parameters if p.grad is not None]


class StopRequest:
    """SIGINT / SIGTERM handlers for the life of a run (main thread only; the old ones come back after).
    While the iterations run (``deferring``) the first signal asks the run to stop at the next iteration
    boundary; otherwise, or at a second signal, the handler interrupts at once (``KeyboardInterrupt``)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.deferring = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested or not self.deferring:
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


def interrupted(iteration: int, run_dir: Path) -> TrainingInterrupted:
    return TrainingInterrupted(f"interrupted at iteration {iteration}; continue with inferkit run "
                               f"--resume {run_dir}")


def checkpoint_name(run_dir: Path, iteration: int | None, checkpoint_every: int) -> str:
    """The last good checkpoint for a message, or that there is none yet."""
    if iteration is None:
        return (f"no checkpoint was written yet (the first was due at iteration {checkpoint_every}), so "
                "nothing can be resumed")
    return f"the last good checkpoint is {run_dir / CHECKPOINT_FILE} (iteration {iteration})"
