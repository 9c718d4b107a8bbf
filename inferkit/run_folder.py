"""The run folder on disk: its files, its lock, and its JSON-lines logs.

A run folder holds ``config.json``, ``checkpoint.pt``, ``metrics.jsonl``, ``tuner.jsonl``,
``summary.json``, figures, and ``.lock``. One run at a time holds it: :class:`RunLock` takes an
exclusive ``flock`` on ``RUN/.lock`` for the run's life. JSON-lines files are appended one strict
JSON record per line; a torn last line (a crash mid-append) is dropped with a warning on reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from inferkit import distributed
from inferkit.errors import UserError
from inferkit.runs import CONFIG_FILE, strict_json, write_text_atomic

try:  # POSIX; elsewhere run folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

METRICS_FILE = "metrics.jsonl"
TUNER_FILE = "tuner.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line of strict JSON (non-finite numbers as ``null``)."""
    with open(path, "a") as handle:
        handle.write(strict_json(record) + "\n")


def read_jsonl(path: Path, console: Console | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` when it does not exist). A torn last line (a crash in
    the middle of an append) is dropped with a warning; a damaged line before it is a user error."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(f"{path} line {number} is not valid JSON; the run folder is damaged") from None
            if console is not None:
                console.print(f"warning: dropped the torn last line of {path} (a crash while it was written)",
                              markup=False, highlight=False)
    return records


def truncate_jsonl(path: Path, before_iteration: int, console: Console | None = None) -> None:
    """Drop records at or after ``before_iteration`` (written after the checkpoint we resume from), and
    a torn last line; the file is replaced atomically."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path, console) if r.get("iteration", -1) < before_iteration]
    write_text_atomic(path, "".join(strict_json(r) + "\n" for r in kept))


def recorded_tuning_seconds(path: Path) -> float:
    """Seconds of the tunings already in ``tuner.jsonl`` (a resumed run's share before the checkpoint)."""
    return sum(float(r.get("seconds") or 0.0) for r in read_jsonl(path))


_LEFTOVERS = (CONFIG_FILE, METRICS_FILE, TUNER_FILE, LOCK_FILE)
"""What a run that stopped before its first checkpoint leaves (with ``*.tmp`` files and image grids)."""


def _is_leftover(path: Path) -> bool:
    name = path.name
    return (name in _LEFTOVERS or name.endswith(".tmp") or
            (name.endswith(".png") and name.startswith(("samples_", "reconstructions_"))))


def check_new_run_folder(run_dir: Path) -> None:
    """Refuse a folder that holds anything but an empty folder, or a run that stopped before its first
    checkpoint (its ``config.json`` and what it wrote before), which a new run may start over."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} exists and is not a folder; give a new --out")
    entries = list(run_dir.iterdir())
    if not entries or all(e.name == LOCK_FILE for e in entries):
        return
    dead = (run_dir / CONFIG_FILE).is_file() and all(_is_leftover(e) for e in entries)
    if not dead:
        raise UserError(f"{run_dir} already exists and is not empty; give a new --out, or --resume {run_dir}")


def clear_leftovers(run_dir: Path) -> None:
    """Remove what a run that stopped before its first checkpoint wrote (its lock stays)."""
    for entry in run_dir.iterdir():
        if _is_leftover(entry) and entry.name != LOCK_FILE and entry.is_file():
            entry.unlink()


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock`` for the life of a run. The kernel drops it when the
    process ends, however it ends, so a crashed run leaves no stale lock (the file itself stays)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._handle = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`UserError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open while the lock is: release() closes it
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise UserError(f"{self.path.parent} is in use by another inferkit run (process {holder}); "
                                "wait for it to end, or give another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None


def lock_run_folder(run_dir: Path, *, fresh: bool) -> RunLock | None:
    """Rank 0 locks the folder (and, for a new run, checks it is free to start in); every process
    learns the outcome, so all raise the same error together. Returns rank 0's held lock."""
    lock, error = None, None
    if distributed.context().is_main:
        try:
            lock = RunLock(run_dir)
            lock.acquire()
            if fresh:
                check_new_run_folder(run_dir)
                clear_leftovers(run_dir)
        except UserError as exc:
            if lock is not None:
                lock.release()
            error = str(exc)
    error = distributed.broadcast_from_main(error)
    if error is not None:
        raise UserError(error)
    return lock
