"""Learning with short-run inference (the papers' Algorithm 1), for any model, sampler and tuner.

Every iteration t: draw a batch ``x``; every ``T_s`` iterations let the tuner set the sampler's
hyperparameters; infer ``z ~ q(z | x)``; take one Adam step on ``sampler.loss`` (for short-run
samplers ``-mean log p_theta(x, z_K)`` with ``z_K`` held fixed). The learning rate decays
step-wise and the observation sigma anneals linearly.

Reproducibility: the batch of iteration t and every random draw in it depend on ``(seed, t)``
alone, so a run resumed from a checkpoint gives the same numbers as an uninterrupted one.

Data parallel (:mod:`inferkit.distributed`): under ``torchrun`` every process trains its shards of the
batch through ``DistributedDataParallel``; rank 0 alone writes the run folder.

Safety: before every optimiser step the loss and all gradients are checked to be finite (one fused
check, one host sync per iteration, agreed across processes); a non-finite one stops the run without
taking the step, so no checkpoint ever holds non-finite parameters. SIGINT and SIGTERM stop at the next
iteration boundary with a checkpoint there (:class:`~inferkit.errors.TrainingInterrupted`). A run holds
an exclusive lock on its folder (``RUN/.lock``) for its whole life, so two runs never share a folder.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import warnings
from bisect import bisect_right
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from inferkit import distributed
from inferkit.acceleration import autocast
from inferkit.errors import TrainingInterrupted, UserError
from inferkit.eval.reconstruction import reconstruction_mse
from inferkit.images import is_image_shape, save_grid
from inferkit.interfaces import (
    HasObservationNoise,
    Model,
    Sampler,
    Tuner,
    UnnormalizedModel,
    require_compatible,
)
from inferkit.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    RunSpec,
    TrainConfig,
    restore_checkpoint,
    save_atomic,
    strict_json,
    write_json_atomic,
    write_text_atomic,
)
from inferkit.seeding import seeded_generator

try:  # POSIX; elsewhere run folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

METRICS_FILE = "metrics.jsonl"
TUNER_FILE = "tuner.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: Model
    sampler: Sampler
    run_dir: Path
    summary: dict[str, Any]


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """``eta_t = eta * gamma^(number of milestones passed)`` (step-wise decay)."""
    milestones = sorted(round(m * config.schedule_total) for m in config.lr_milestones)
    return config.learning_rate * config.lr_gamma ** bisect_right(milestones, iteration)


def observation_sigma(config: TrainConfig, iteration: int) -> float:
    """Linear annealing from ``sigma_start`` to ``sigma_end`` over ``sigma_anneal`` of the schedule
    (``config.schedule_total``: the run's planned iterations)."""
    span = config.sigma_anneal * config.schedule_total
    fraction = 1.0 if span <= 0 else min(1.0, iteration / span)
    return config.sigma_start + fraction * (config.sigma_end - config.sigma_start)


def _step_size_summary(sampler: Sampler) -> float:
    step = sampler.hyperparameters().get("step_size")
    return math.nan if step is None else float(step.detach().double().mean())


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line of strict JSON (non-finite numbers as ``null``)."""
    with open(path, "a") as handle:
        handle.write(strict_json(record) + "\n")


def _read_jsonl(path: Path, console: Console | None = None) -> list[dict[str, Any]]:
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


def _truncate_jsonl(path: Path, before_iteration: int, console: Console | None = None) -> None:
    """Drop records at or after ``before_iteration`` (written after the checkpoint we resume from), and
    a torn last line; the file is replaced atomically."""
    if not path.exists():
        return
    kept = [r for r in _read_jsonl(path, console) if r.get("iteration", -1) < before_iteration]
    write_text_atomic(path, "".join(strict_json(r) + "\n" for r in kept))


def _recorded_tuning_seconds(path: Path) -> float:
    """Seconds of the tunings already in ``tuner.jsonl`` (a resumed run's share before the checkpoint)."""
    return sum(float(r.get("seconds") or 0.0) for r in _read_jsonl(path))


# -- the run folder: one run at a time ----------------------------------------------------------------
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


def _clear_leftovers(run_dir: Path) -> None:
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
        handle = open(self.path, "a+")
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


def _lock_run_folder(run_dir: Path, *, fresh: bool) -> RunLock | None:
    """Rank 0 locks the folder (and, for a new run, checks it is free to start in); every process
    learns the outcome, so all raise the same error together. Returns rank 0's held lock."""
    lock, error = None, None
    if distributed.context().is_main:
        try:
            lock = RunLock(run_dir)
            lock.acquire()
            if fresh:
                check_new_run_folder(run_dir)
                _clear_leftovers(run_dir)
        except UserError as exc:
            if lock is not None:
                lock.release()
            error = str(exc)
    error = distributed.broadcast_from_main(error)
    if error is not None:
        raise UserError(error)
    return lock


# -- stopping safely: non-finite values and signals ----------------------------------------------------
def _nonfinite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d tensor, 1.0 when any of ``tensors`` holds a NaN or an infinity (one fused reduction: the
    max-norm of each tensor, which is NaN or inf exactly when the tensor has one; no host sync)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        norms = torch._foreach_norm([t.detach() for t in tensors], math.inf)
        return (~torch.isfinite(torch.stack([n.double() for n in norms]))).any().double()


def _gradients(parameters: list[torch.Tensor]) -> list[torch.Tensor]:
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


def _interrupted(iteration: int, run_dir: Path) -> TrainingInterrupted:
    return TrainingInterrupted(f"interrupted at iteration {iteration}; continue with inferkit run "
                               f"--resume {run_dir}")


def _checkpoint_name(run_dir: Path, iteration: int | None, checkpoint_every: int) -> str:
    """The last good checkpoint for a message, or that there is none yet."""
    if iteration is None:
        return (f"no checkpoint was written yet (the first was due at iteration {checkpoint_every}), so "
                "nothing can be resumed")
    return f"the last good checkpoint is {run_dir / CHECKPOINT_FILE} (iteration {iteration})"


def _plot_tuning(run_dir: Path, console: Console) -> None:
    """Redraw the tuner figures (inferkit.plots); a failure is a warning, never the end of a run."""
    try:
        from inferkit.plots import plot_run_tuning

        plot_run_tuning(run_dir)
    except Exception as exc:  # noqa: BLE001 - figures are a by-product; training goes on
        console.print(f"warning: could not draw the tuner figures in {run_dir} ({type(exc).__name__}: {exc})",
                      markup=False, highlight=False)


def _save_images(model: Model, sampler: Sampler, x_test: torch.Tensor, run_dir: Path, tag: str,
                 seed: int) -> None:
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


class TrainingStep(torch.nn.Module):
    """One shard's share of an iteration as a module (what ``DistributedDataParallel`` wraps): infer
    ``z ~ q(z | x)`` and return ``(sampler.loss [+ the model's negative phase], z)``."""

    def __init__(self, model: Model, sampler: Sampler) -> None:
        super().__init__()
        self.model = model
        self.sampler = sampler
        self.negative_phase = isinstance(model, UnnormalizedModel)  # an unnormalised prior's grad log Z

    def forward(self, x: torch.Tensor, index: torch.Tensor | None, generator: torch.Generator,
                negative_generator: torch.Generator | None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        inference = self.sampler.infer(self.model, x, index=index, generator=generator)
        loss = self.sampler.loss(self.model, x, inference)
        if self.negative_phase:
            loss = loss + self.model.log_normalizer_surrogate(x.shape[0], generator=negative_generator)
        return loss, tuple(inference.z)


def _data_parallel(step: TrainingStep, device: torch.device) -> torch.nn.Module:
    """``step`` wrapped in ``DistributedDataParallel`` in a process group (as it is otherwise). Buffers
    are not broadcast: each process keeps its own per-example state (torch >= 2.13 warns that
    ``broadcast_buffers`` will go, and itself advises keeping it for rank-local buffers until
    ``init_sync_buffers`` exists). Unused parameters are looked for every iteration only for samplers
    that say some iterations leave parameters without a gradient (``Sampler.uses_every_parameter``)."""
    if not distributed.context().distributed:
        return step
    from torch.nn.parallel import DistributedDataParallel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False,
                                       find_unused_parameters=not step.sampler.uses_every_parameter)


class BatchSource:
    """The batches of iteration ``t``: this process's shards, each ``split.batch(indices)``. For a split
    that reads from storage (``split.streaming``, e.g. image folders) iteration ``t + 1``'s batches are
    read on a background thread while iteration ``t`` computes, so decoding overlaps the model step;
    batches are pure functions of their indices, so the numbers do not change."""

    def __init__(self, split, config: TrainConfig, shards: int, mine: list[int]) -> None:
        self.split, self.config, self.shards, self.mine = split, config, shards, mine
        self.streaming = bool(getattr(split, "streaming", False))
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inferkit-prefetch") if self.streaming else None
        self._pending: tuple[int, Future] | None = None

    def _read(self, t: int) -> list[dict[str, torch.Tensor]]:
        return [self.split.batch(distributed.shard_batch_indices(
            len(self.split), self.config.batch_size, shards=self.shards, shard=s, seed=self.config.seed, step=t))
            for s in self.mine]

    def get(self, t: int) -> list[dict[str, torch.Tensor]]:
        """Iteration ``t``'s batches (and, when streaming, start reading ``t + 1``'s)."""
        if self._executor is None:
            return self._read(t)
        pending, self._pending = self._pending, None
        batches = pending[1].result() if pending is not None and pending[0] == t else self._read(t)
        if t + 1 < self.config.iterations:
            self._pending = (t + 1, self._executor.submit(self._read, t + 1))
        return batches

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _run_guard(run_dir: Path, *, fresh: bool) -> Iterator[StopRequest]:
    """For the life of a run: the folder's lock (rank 0) and the SIGINT / SIGTERM handlers."""
    lock = _lock_run_folder(run_dir, fresh=fresh)
    try:
        with StopRequest().installed() as stop:
            yield stop
    finally:
        if lock is not None:
            lock.release()


def train(model: Model, sampler: Sampler, tuner: Tuner, data, spec: RunSpec, run_dir: str | Path, *,
          resume: bool = False, progress: bool = True, console: Console | None = None,
          notes: tuple[str, ...] = ()) -> TrainResult:
    """Run Algorithm 1 and write the run folder (config, checkpoint, metrics, tuner history and its
    figures, images, summary). With ``resume`` continue from the folder's checkpoint. In a process
    group (``torchrun``) every process calls it; rank 0 alone writes.

    The run holds the folder's lock throughout (a second run into it is a :class:`UserError`). A
    non-finite loss or gradient stops it before the step (:class:`UserError` naming the last good
    checkpoint); SIGINT / SIGTERM stop it at the next iteration boundary after a checkpoint there
    (:class:`TrainingInterrupted`). ``notes`` are lines for the run's log, shown by rank 0 once the
    folder is locked and the checkpoint read."""
    config = spec.train
    config.validate()
    run_dir = Path(run_dir)
    ctx = distributed.context()
    main = ctx.is_main
    device = distributed.local_device(config.device)
    console = console or Console(stderr=True)
    model.to(device)
    # Lifecycle hooks (interfaces.Sampler/Tuner): before the optimiser and the checkpoint, before anything
    # is written, so a sampler's own parameters are trained and a tuner that cannot work fails early.
    require_compatible(model, sampler)
    sampler.setup(model, num_examples=len(data.train))
    sampler.to(device)
    if config.tune_every:
        tuner.check(model, sampler)
    train_split, test_split = data.train.to(device), data.test.to(device)
    if len(train_split) < config.batch_size:
        raise UserError(f"batch size {config.batch_size} is larger than the {len(train_split)} training examples; "
                        "lower --batch-size")
    resharded = resume and config.shards % ctx.world_size != 0
    if resharded:
        if main:
            console.print(f"note: this run trained with shards={config.shards}, which {ctx.world_size} processes "
                          f"cannot split; it goes on with shards={ctx.world_size} (batches differ from here on "
                          "from an uninterrupted run)", markup=False, highlight=False)
        config.shards = ctx.world_size
    shards = distributed.resolve_shards(config.shards, ctx.world_size, config.batch_size)
    config.shards = shards  # saved in config.json: a resumed run keeps its shards on any process count
    with _run_guard(run_dir, fresh=not resume) as stop:
        return _train(model, sampler, tuner, train_split, test_split, spec, run_dir, resume=resume,
                      progress=progress, console=console, device=device, stop=stop, notes=notes,
                      resharded=resharded)


def _train(model: Model, sampler: Sampler, tuner: Tuner, train_split, test_split, spec: RunSpec, run_dir: Path,
           *, resume: bool, progress: bool, console: Console, device: torch.device,
           stop: StopRequest, notes: tuple[str, ...], resharded: bool) -> TrainResult:
    """The body of :func:`train`, in the locked run folder."""
    config = spec.train
    ctx = distributed.context()
    main = ctx.is_main
    shards = config.shards  # resolved by train, before the folder is locked
    my_shards = distributed.shards_of(ctx.rank, ctx.world_size, shards)
    owned = distributed.owned_examples(len(train_split), shards, my_shards)
    x_test = test_split.x[: config.eval_examples]
    parameters = [p for p in list(model.parameters()) + list(sampler.parameters()) if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    anneal = isinstance(model, HasObservationNoise)

    start = 0
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if resume:
        if not checkpoint_path.is_file():
            raise UserError(f"{run_dir} has no checkpoint to resume from; start a new run instead")
        state = restore_checkpoint(checkpoint_path, device, model, sampler, optimizer)
        start = int(state["iteration"])
        mse_start = float(state.get("test_mse_start", math.nan))
        elapsed_before = float(state.get("seconds", 0.0))
        if start > config.iterations:
            raise UserError(f"{run_dir} is checkpointed at iteration {start}; --iterations {config.iterations} "
                            f"would end before it (give at least {start})")
        distributed.barrier()  # every process has read the checkpoint before rank 0 rewrites anything
        if main:
            for name in (METRICS_FILE, TUNER_FILE):
                _truncate_jsonl(run_dir / name, start, console)
            spec.save(run_dir)  # the total and the schedule it continues to (and any new shards)
        tuning_seconds = _recorded_tuning_seconds(run_dir / TUNER_FILE) if main else 0.0
    else:
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            spec.save(run_dir)
        if anneal:
            model.set_observation_sigma(observation_sigma(config, 0))
        mse_start = reconstruction_mse(model, sampler, x_test, seed=config.seed) if main else math.nan
        elapsed_before = 0.0
        tuning_seconds = 0.0
    for note in notes if main else ():
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    last_checkpoint = start if resume else None  # the last checkpoint's iteration (finite by construction)
    training_step = TrainingStep(model, sampler)
    step = _data_parallel(training_step, device)
    mixed_precision = autocast(device, config.precision)  # bf16: the generator in bfloat16, latents float32

    def checkpoint(iteration: int, seconds: float) -> None:
        nonlocal last_checkpoint
        sampler.gather_example_state(owned.to(device), distributed.all_reduce_sum)  # collective: every rank
        if bool(_nonfinite(parameters)):  # never reached after the per-step checks; a checkpoint stays good
            raise UserError(f"the parameters are not finite at iteration {iteration}; no checkpoint was written; "
                            + _checkpoint_name(run_dir, last_checkpoint, config.checkpoint_every))
        if main:
            save_atomic({"iteration": iteration, "model": model.state_dict(), "sampler": sampler.state_dict(),
                         "optimizer": optimizer.state_dict(), "test_mse_start": mse_start, "seconds": seconds,
                         "spec": spec.to_dict()}, checkpoint_path)
        last_checkpoint = iteration

    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4g}  mse {task.fields[mse]:.4f}  "
                          "s {task.fields[step]:.3g}  {task.fields[speed]:.2f} it/s"), TimeRemainingColumn()]
    began = time.perf_counter()
    loss_value, mse_value = math.nan, math.nan
    stopping = False
    source = BatchSource(train_split, config, shards, my_shards)
    with closing(source), Progress(*columns, console=console, disable=not (progress and main), transient=False) as bar:
        task = bar.add_task("train", total=config.iterations, completed=start, loss=math.nan, mse=math.nan,
                            step=_step_size_summary(sampler), speed=0.0)
        stop.deferring = True  # from here a signal stops the run at an iteration boundary, with a checkpoint
        for t in range(start, config.iterations):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, t)
            if anneal:
                model.set_observation_sigma(observation_sigma(config, t))
            sampler.begin_iteration(t, config.iterations)
            batches = source.get(t)
            if config.tune_every and t % config.tune_every == 0:
                tune_began = time.perf_counter()
                result = tuner.tune(model, sampler, batches[0]["x"], reduce=distributed.all_reduce_sum)
                sampler.set_hyperparameters(result.hyperparameters)  # J is averaged over processes: same everywhere
                tune_seconds = time.perf_counter() - tune_began
                tuning_seconds += tune_seconds
                if main:
                    _append_jsonl(run_dir / TUNER_FILE, {
                        "iteration": t, "objective": result.objective, "history": result.history,
                        "hyperparameters": {k: v.tolist() for k, v in result.hyperparameters.items()},
                        "per": result.per, "seconds": tune_seconds})
            optimizer.zero_grad(set_to_none=True)
            # (1/S) sum_s grad L_s: each of this process's shards weighs len(my_shards)^-1, DDP averages ranks.
            totals = torch.zeros(2, dtype=torch.float64, device=device)  # sum of shard losses, squared errors
            for position, (shard, batch) in enumerate(zip(my_shards, batches)):
                last = position == len(my_shards) - 1
                seed = distributed.shard_seed(config.seed, shard)
                sync = nullcontext() if last or not hasattr(step, "no_sync") else step.no_sync()
                with sync:
                    negative = seeded_generator(seed, 1_000_000 + t, device) if training_step.negative_phase else None
                    with mixed_precision:
                        loss, z = step(batch["x"], batch["index"], seeded_generator(seed, t, device), negative)
                    (loss / len(my_shards)).backward()
                totals[0] += loss.detach().double()
                if (t + 1) % config.log_every == 0 or t + 1 == config.iterations:
                    with torch.no_grad():
                        totals[1] += (model.decode(z) - batch["x"]).pow(2).mean().double()
            # One host sync: is the loss or any gradient non-finite (on any process), and is a stop asked for.
            flags = torch.stack([_nonfinite([totals[:1], *_gradients(parameters)]).to(device),
                                 torch.tensor(float(stop.requested), dtype=torch.float64, device=device)])
            nonfinite, stopping = (value > 0 for value in distributed.all_reduce_sum(flags).tolist())
            if nonfinite:
                what = "loss" if not math.isfinite(float(totals[0])) else "gradient"
                raise UserError(f"training diverged at iteration {t} (non-finite {what}); the step was not taken; "
                                + _checkpoint_name(run_dir, last_checkpoint, config.checkpoint_every)
                                + "; lower the step size or the learning rate, or tune more often (--tune-every), "
                                "in a new run")
            optimizer.step()
            done = t + 1
            if done % config.log_every == 0 or done == config.iterations:
                distributed.all_reduce_sum(totals)  # means over all S shards, the same on every rank
                loss_value, mse_value = (totals / shards).tolist()
                seconds = time.perf_counter() - began
                speed = (done - start) / max(seconds, 1e-9)
                step_size = _step_size_summary(sampler)
                if main:
                    _append_jsonl(run_dir / METRICS_FILE, {
                        "iteration": t, "loss": loss_value, "mse": mse_value, "step_size": step_size,
                        "learning_rate": learning_rate(config, t),
                        "sigma": observation_sigma(config, t) if anneal else None,
                        "iterations_per_second": speed})
                bar.update(task, loss=loss_value, mse=mse_value, step=step_size, speed=speed)
            bar.update(task, completed=done)
            if done % config.image_every == 0 and main:
                _save_images(model, sampler, x_test, run_dir, f"{done:06d}", config.seed)
            if done % config.checkpoint_every == 0 or done == config.iterations or stopping:
                checkpoint(done, elapsed_before + time.perf_counter() - began)
                if config.tune_every and done < config.iterations and main and not stopping:
                    _plot_tuning(run_dir, console)
            if stopping:
                raise _interrupted(done, run_dir)
        stop.deferring = False
    if stop.requested:  # a signal after the last iteration's check: its checkpoint is written
        raise _interrupted(config.iterations, run_dir)

    seconds = elapsed_before + time.perf_counter() - began
    summary = {
        "iterations": config.iterations, "seconds": seconds,
        "iterations_per_second": (config.iterations - start) / max(time.perf_counter() - began, 1e-9),
        "test_mse_start": mse_start, "test_mse_end": math.nan, "final_loss": loss_value,
        "final_step_size": _step_size_summary(sampler), "eval_examples": int(x_test.shape[0]),
        "tuning_seconds": tuning_seconds, "processes": ctx.world_size, "shards": shards,
        "schedule_iterations": config.schedule_total,
    }
    if main:
        summary["test_mse_end"] = reconstruction_mse(model, sampler, x_test, seed=config.seed)
        _save_images(model, sampler, x_test, run_dir, "final", config.seed)
        _plot_tuning(run_dir, console)
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
    distributed.barrier()  # nobody leaves before rank 0 has written the run folder
    return TrainResult(model=model, sampler=sampler, run_dir=run_dir, summary=summary)
