"""Learning with short-run inference (the papers' Algorithm 1), for any model, sampler and tuner.

Every iteration t: draw a batch ``x``; every ``T_s`` iterations, and where the annealed sigma has
fallen by ``retune_sigma_ratio`` since the last tuning (:func:`tuning_iterations`), let the tuner
choose the sampler's hyperparameters and apply them; infer ``z ~ q(z | x)``; take one Adam step on
``sampler.loss`` (for short-run samplers ``-mean log p_theta(x, z_K)`` with ``z_K`` held fixed). The learning rate decays
step-wise and the observation sigma anneals linearly (:func:`learning_rate`, :func:`observation_sigma`).
:func:`run_iterations` is that loop; the rest of this module prepares it and resumes it.

Reproducibility: the batch of iteration t and every random draw in it depend on ``(seed, t)``
alone, so a run resumed from a checkpoint gives the same numbers as an uninterrupted one.

Data parallel (:mod:`inferkit.distributed`): under ``torchrun`` every process trains its shards of the
batch through ``DistributedDataParallel``; rank 0 alone holds callbacks (:mod:`inferkit.callbacks`),
so it alone writes the run folder.

Safety (:mod:`inferkit.stopping`): before every optimiser step the loss and all gradients are checked
to be finite (one fused check, one host sync per iteration, agreed across processes); a non-finite one
stops the run without taking the step, so no checkpoint ever holds non-finite parameters. SIGINT and
SIGTERM stop at the next iteration boundary with a checkpoint there
(:class:`~inferkit.errors.TrainingInterrupted`). A run holds an exclusive lock on its folder
(:class:`~inferkit.run_folder.RunLock`) for its whole life, so two runs never share a folder.
"""

from __future__ import annotations

import math
import time
import warnings
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from inferkit import distributed
from inferkit.acceleration import autocast
from inferkit.callbacks import Callback, CallbackHandler, ProgressDisplay, RunWriter
from inferkit.errors import UserError
from inferkit.eval.reconstruction import reconstruction_mse
from inferkit.interfaces import (
    HasObservationNoise,
    Model,
    Sampler,
    Tuner,
    UnnormalizedModel,
    require_compatible,
)
from inferkit.loggers import check_logger, make_logger
from inferkit.optimizers import RunOptimizer, model_sgd_groups
from inferkit.run_folder import (
    METRICS_FILE,
    TUNER_FILE,
    lock_run_folder,
    recorded_tuning_seconds,
    truncate_jsonl,
)
from inferkit.runs import CHECKPOINT_FILE, RunSpec, TrainConfig, restore_checkpoint, save_atomic
from inferkit.seeding import seeded_generator
from inferkit.stopping import StopRequest, checkpoint_name, gradients, interrupted, nonfinite

__all__ = ["BatchSource", "TrainResult", "TrainingStep", "learning_rate",
           "observation_sigma", "run_iterations", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: Model
    sampler: Sampler
    run_dir: Path
    summary: dict[str, Any]


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """Step-wise decay: with ``k`` milestones passed (milestone ``m`` is iteration
    ``round(m * schedule_total)``), ``eta_t = lr_values[k - 1]`` when ``lr_values`` is given (``eta``
    before the first), else ``eta * gamma^k``."""
    milestones = sorted(round(m * config.schedule_total) for m in config.lr_milestones)
    passed = bisect_right(milestones, iteration)
    if config.lr_values:
        return config.learning_rate if passed == 0 else float(config.lr_values[passed - 1])
    return config.learning_rate * config.lr_gamma ** passed


def observation_sigma(config: TrainConfig, iteration: int) -> float:
    """Linear annealing from ``sigma_start`` to ``sigma_end`` over ``sigma_anneal`` of the schedule
    (``config.schedule_total``: the run's planned iterations)."""
    span = config.sigma_anneal * config.schedule_total
    fraction = 1.0 if span <= 0 else min(1.0, iteration / span)
    return config.sigma_start + fraction * (config.sigma_end - config.sigma_start)


def tuning_iterations(config: TrainConfig, anneal: bool) -> frozenset[int]:
    """The iterations at which Algorithm 1 runs the tuner: every ``T_s`` (``tune_every``; none when it is
    0) and, where sigma anneals, wherever sigma has fallen by ``retune_sigma_ratio`` since the tuning
    before. A function of the config alone, so a resumed run tunes where an uninterrupted one does."""
    if not config.tune_every:
        return frozenset()
    ratio = config.retune_sigma_ratio if anneal else 0.0
    found, sigma_tuned = [], math.inf
    for t in range(config.iterations):
        sigma = observation_sigma(config, t)
        if t % config.tune_every == 0 or (ratio and sigma * ratio <= sigma_tuned):
            found.append(t)
            sigma_tuned = sigma
    return frozenset(found)


def step_size_summary(sampler: Sampler) -> float:
    """The mean of the sampler's ``step_size`` hyperparameter (NaN for a sampler without one)."""
    step = sampler.hyperparameters().get("step_size")
    return math.nan if step is None else float(step.detach().double().mean())


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


def _data_parallel(step: TrainingStep, device: torch.device, find_unused: str) -> torch.nn.Module:
    """``step`` wrapped in ``DistributedDataParallel`` in a process group (as it is otherwise). Buffers
    are not broadcast: each process keeps its own per-example state (torch >= 2.13 warns that
    ``broadcast_buffers`` will go, and itself advises keeping it for rank-local buffers until
    ``init_sync_buffers`` exists). Unused parameters are looked for every iteration only for samplers
    that train in phases (``Sampler.trains_in_phases``), unless ``find_unused`` (``TrainConfig.find_unused_parameters``)
    is ``on`` or ``off``."""
    if not distributed.context().distributed:
        return step
    from torch.nn.parallel import DistributedDataParallel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False,
                                       find_unused_parameters=_find_unused(find_unused, step.sampler))


def _find_unused(setting: str, sampler: Sampler) -> bool:
    """``TrainConfig.find_unused_parameters`` for ``sampler``: ``auto`` follows ``trains_in_phases``."""
    return sampler.trains_in_phases if setting == "auto" else setting == "on"


class BatchSource:
    """The batches of iteration ``t``: this process's shards, each ``split.batch(indices)``. For a split
    that reads from storage (``split.streaming``, e.g. image folders) iteration ``t + 1``'s batches are
    read on a background thread while iteration ``t`` computes, so decoding overlaps the model step;
    batches are pure functions of their indices, so the numbers do not change."""

    def __init__(self, split, config: TrainConfig, shards: int, mine: list[int]) -> None:
        self.split, self.config, self.shards, self.mine = split, config, shards, mine
        self.streaming = split.streaming
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


@dataclass
class Run:
    """The state of a training run between iterations: the objects, the optimiser, this process's
    shards, and where the run stands (first iteration, last good checkpoint, seconds so far)."""

    model: Model
    sampler: Sampler
    tuner: Tuner
    spec: RunSpec
    run_dir: Path
    device: torch.device
    train_split: Any
    x_test: torch.Tensor
    my_shards: list[int]
    owned: torch.Tensor
    parameters: list[torch.Tensor]
    optimizer: RunOptimizer
    training_step: TrainingStep
    step: torch.nn.Module
    mixed_precision: Any
    """The context of the learning step: bf16 autocast (generator in bfloat16, latents float32) or none."""
    start: int = 0
    mse_start: float = math.nan
    elapsed_before: float = 0.0
    tuning_seconds: float = 0.0
    last_checkpoint: int | None = None
    last_loss: float = math.nan
    began: float = 0.0

    @property
    def config(self) -> TrainConfig:
        return self.spec.train

    @property
    def anneal(self) -> bool:
        return isinstance(self.model, HasObservationNoise)

    def seconds(self) -> float:
        """Training seconds so far, those before a resume included."""
        return self.elapsed_before + time.perf_counter() - self.began


def train(model: Model, sampler: Sampler, tuner: Tuner, data, spec: RunSpec, run_dir: str | Path, *,
          resume: bool = False, progress: bool = True, console: Console | None = None,
          notes: tuple[str, ...] = (), logger: str | None = None,
          callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Run Algorithm 1 and write the run folder (config, checkpoint, metrics, tuner history and its
    figures, images, summary). With ``resume`` continue from the folder's checkpoint. In a process
    group (``torchrun``) every process calls it; rank 0 alone writes.

    The run holds the folder's lock throughout (a second run into it is a :class:`UserError`). A
    non-finite loss or gradient stops it before the step (:class:`UserError` naming the last good
    checkpoint); SIGINT / SIGTERM stop it at the next iteration boundary after a checkpoint there
    (:class:`~inferkit.errors.TrainingInterrupted`). ``notes`` are lines for the run's log, shown by
    rank 0 once the folder is locked and the checkpoint read. ``logger`` names an optional logger
    of :mod:`inferkit.loggers` (``"tensorboard"``) that rank 0 runs beside the run folder's writer.
    ``callbacks`` (:class:`~inferkit.callbacks.Callback`) run on rank 0 after the built-in ones, so
    ``on_checkpoint`` sees the checkpoint written and ``model`` / ``sampler`` as they were saved."""
    console = console or Console(stderr=True)
    check_logger(logger)  # before anything is written
    run = _prepare(model, sampler, tuner, data, spec, Path(run_dir), resume=resume, console=console)
    main = distributed.context().is_main
    with _run_guard(run.run_dir, fresh=not resume) as stop:
        if resume:
            _resume(run, console)
        else:
            _begin(run)
        for note in notes if main else ():
            console.print(note, markup=False, highlight=False, soft_wrap=True)
        handler = CallbackHandler(_callbacks(run, progress=progress, console=console, logger=logger)
                                  + list(callbacks) if main else [])
        with closing(handler):
            run_iterations(run, stop, handler)
            summary = _summary(run)
            handler.on_train_end(summary)
    distributed.barrier()  # nobody leaves before rank 0 has written the run folder
    return TrainResult(model=model, sampler=sampler, run_dir=run.run_dir, summary=summary)


def run_iterations(run: Run, stop: StopRequest, callbacks: CallbackHandler) -> None:
    """Algorithm 1 from ``run.start`` to the planned total: schedules, tuning at
    :func:`tuning_iterations`, the sharded learning step behind a finite check, logs, images and
    checkpoints."""
    config = run.config
    source = BatchSource(run.train_split, config, config.shards, run.my_shards)
    run.began = time.perf_counter()
    callbacks.on_train_begin(run.start, config.iterations, step_size_summary(run.sampler))
    tunings = tuning_iterations(config, run.anneal)
    stop.deferring = True  # from here a signal stops the run at an iteration boundary, with a checkpoint
    with closing(source):
        for t in range(run.start, config.iterations):
            _apply_schedules(run, t)
            batches = source.get(t)
            if t in tunings:
                _tune(run, batches[0]["x"], t, callbacks)
            logged = (t + 1) % config.log_every == 0 or t + 1 == config.iterations
            totals = _learning_step(run, t, batches, with_mse=logged)
            stopping = _check_finite_or_stop(run, t, totals, stop)
            run.optimizer.step()
            done = t + 1
            if logged:
                callbacks.on_log(_metrics(run, t, totals))
            callbacks.on_iteration_end(done)
            if done % config.checkpoint_every == 0 or done == config.iterations or stopping:
                _checkpoint(run, done)
                callbacks.on_checkpoint(done, more_to_come=done < config.iterations and not stopping)
            if stopping:
                raise interrupted(done, run.run_dir)
    stop.deferring = False
    if stop.requested:  # a signal after the last iteration's check: its checkpoint is written
        raise interrupted(config.iterations, run.run_dir)


def _apply_schedules(run: Run, t: int) -> None:
    """Iteration ``t``'s learning rate and observation sigma, and the sampler's ``begin_iteration``."""
    run.optimizer.set_learning_rate(learning_rate(run.config, t))
    if run.anneal:
        run.model.set_observation_sigma(observation_sigma(run.config, t))
    run.sampler.begin_iteration(t, run.config.iterations)


def _tune(run: Run, x: torch.Tensor, t: int, callbacks: CallbackHandler) -> None:
    """Let the tuner choose the sampler's hyperparameters on ``x`` (J averaged over processes, so every
    process chooses the same) and apply them."""
    began = time.perf_counter()
    result = run.tuner.tune(run.model, run.sampler, x, reduce=distributed.all_reduce_sum)
    run.sampler.set_hyperparameters(result.hyperparameters)
    seconds = time.perf_counter() - began
    run.tuning_seconds += seconds
    callbacks.on_tune({"iteration": t, "objective": result.objective, "history": result.history,
                       "hyperparameters": {k: v.tolist() for k, v in result.hyperparameters.items()},
                       "per": result.per, "seconds": seconds})


def _learning_step(run: Run, t: int, batches: list[dict[str, torch.Tensor]], *, with_mse: bool) -> torch.Tensor:
    """Gradients of ``(1/S) sum_s L_s`` over this process's shards (each weighs ``len(my_shards)^-1``;
    DDP averages processes). Returns ``[sum of shard losses, sum of shard MSEs (when with_mse)]``."""
    run.optimizer.zero_grad(set_to_none=True)
    totals = torch.zeros(2, dtype=torch.float64, device=run.device)
    for position, (shard, batch) in enumerate(zip(run.my_shards, batches)):
        last = position == len(run.my_shards) - 1
        seed = distributed.shard_seed(run.config.seed, shard)
        sync = nullcontext() if last or run.step is run.training_step else run.step.no_sync()
        with sync:
            negative = (seeded_generator(seed, 1_000_000 + t, run.device)
                        if run.training_step.negative_phase else None)
            with run.mixed_precision:
                loss, z = run.step(batch["x"], batch["index"], seeded_generator(seed, t, run.device), negative)
            (loss / len(run.my_shards)).backward()
        totals[0] += loss.detach().double()
        if with_mse:
            with torch.no_grad():
                totals[1] += (run.model.decode(z) - batch["x"]).pow(2).mean().double()
    return totals


def _check_finite_or_stop(run: Run, t: int, totals: torch.Tensor, stop: StopRequest) -> bool:
    """One host sync: raise if the loss or any gradient is non-finite on any process (the step is not
    taken); return whether a stop was asked for (on any process)."""
    flags = torch.stack([nonfinite([totals[:1], *gradients(run.parameters)]).to(run.device),
                         torch.tensor(float(stop.requested), dtype=torch.float64, device=run.device)])
    found, stopping = (value > 0 for value in distributed.all_reduce_sum(flags).tolist())
    if found:
        what = "loss" if not math.isfinite(float(totals[0])) else "gradient"
        raise UserError(f"training diverged at iteration {t} (non-finite {what}); the step was not taken; "
                        + checkpoint_name(run.run_dir, run.last_checkpoint, run.config.checkpoint_every)
                        + "; lower the step size or the learning rate, or tune more often (--tune-every), "
                        "in a new run")
    return stopping


def _metrics(run: Run, t: int, totals: torch.Tensor) -> dict[str, Any]:
    """The ``metrics.jsonl`` record of iteration ``t``: means over all S shards (one all-reduce)."""
    distributed.all_reduce_sum(totals)
    loss, mse = (totals / run.config.shards).tolist()
    run.last_loss = loss
    speed = (t + 1 - run.start) / max(time.perf_counter() - run.began, 1e-9)
    return {"iteration": t, "loss": loss, "mse": mse, "step_size": step_size_summary(run.sampler),
            "learning_rate": learning_rate(run.config, t),
            "sigma": observation_sigma(run.config, t) if run.anneal else None, "iterations_per_second": speed}


def _checkpoint(run: Run, iteration: int) -> None:
    """Unite per-example state across processes (every rank), then rank 0 writes ``checkpoint.pt``
    atomically, from finite parameters only."""
    run.sampler.gather_example_state(run.owned.to(run.device), distributed.all_reduce_sum)
    if bool(nonfinite(run.parameters)):  # never reached after the per-step checks; a checkpoint stays good
        raise UserError(f"the parameters are not finite at iteration {iteration}; no checkpoint was written; "
                        + checkpoint_name(run.run_dir, run.last_checkpoint, run.config.checkpoint_every))
    if distributed.context().is_main:
        save_atomic({"iteration": iteration, "model": run.model.state_dict(), "sampler": run.sampler.state_dict(),
                     "optimizer": run.optimizer.state_dict(), "tuner": run.tuner.state_dict(),
                     "test_mse_start": run.mse_start,
                     "seconds": run.seconds(), "spec": run.spec.to_dict()}, run.run_dir / CHECKPOINT_FILE)
    run.last_checkpoint = iteration


# -- before the loop ------------------------------------------------------------------------------------
def _prepare(model: Model, sampler: Sampler, tuner: Tuner, data, spec: RunSpec, run_dir: Path, *, resume: bool,
             console: Console) -> Run:
    """Validate, place and set up the objects (the lifecycle hooks, before the optimiser and the
    checkpoint, so a sampler's own parameters are trained and a tuner that cannot work fails early),
    resolve the shards, and build the optimiser; nothing is written yet."""
    config = spec.train
    config.validate()
    ctx = distributed.context()
    device = distributed.local_device(config.device)
    model.to(device)
    require_compatible(model, sampler)
    sampler.setup(model, num_examples=len(data.train))
    sampler.to(device)
    if config.tune_every:
        tuner.check(model, sampler)
    train_split, test_split = data.train.to(device), data.test.to(device)
    if len(train_split) < config.batch_size:
        raise UserError(f"batch size {config.batch_size} is larger than the {len(train_split)} training examples; "
                        "lower --batch-size")
    _resolve_shards(config, resume=resume, console=console)
    my_shards = distributed.shards_of(ctx.rank, ctx.world_size, config.shards)
    parameters = [p for p in list(model.parameters()) + list(sampler.parameters()) if p.requires_grad]
    training_step = TrainingStep(model, sampler)
    return Run(model=model, sampler=sampler, tuner=tuner, spec=spec, run_dir=run_dir, device=device,
               train_split=train_split, x_test=test_split.x[: config.eval_examples], my_shards=my_shards,
               owned=distributed.owned_examples(len(train_split), config.shards, my_shards), parameters=parameters,
               optimizer=RunOptimizer(parameters, model_sgd_groups(model), learning_rate=config.learning_rate,
                                      betas=tuple(config.adam_betas)),
               training_step=training_step,
               step=_data_parallel(training_step, device, config.find_unused_parameters),
               mixed_precision=autocast(device, config.precision))


def _resolve_shards(config: TrainConfig, *, resume: bool, console: Console) -> None:
    """``config.shards`` resolved for this process count (saved in config.json: a resumed run keeps its
    shards on any process count it divides; otherwise it goes on with one shard per process)."""
    ctx = distributed.context()
    if resume and config.shards % ctx.world_size != 0:
        if ctx.is_main:
            console.print(f"note: this run trained with shards={config.shards}, which {ctx.world_size} processes "
                          f"cannot split; it goes on with shards={ctx.world_size} (batches differ from here on "
                          "from an uninterrupted run)", markup=False, highlight=False)
        config.shards = ctx.world_size
    config.shards = distributed.resolve_shards(config.shards, ctx.world_size, config.batch_size)


def _begin(run: Run) -> None:
    """A new run: write ``config.json``, set the first sigma, and measure the test MSE at the start."""
    main = distributed.context().is_main
    if main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run.spec.save(run.run_dir)
    if run.anneal:
        run.model.set_observation_sigma(observation_sigma(run.config, 0))
    run.mse_start = reconstruction_mse(run.model, run.sampler, run.x_test, seed=run.config.seed) if main else math.nan


def _resume(run: Run, console: Console) -> None:
    """Load the checkpoint into the objects and the optimiser, and cut the logs back to it."""
    path = run.run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{run.run_dir} has no checkpoint to resume from; start a new run instead")
    state = restore_checkpoint(path, run.device, run.model, run.sampler, run.optimizer)
    run.start = run.last_checkpoint = int(state["iteration"])
    tuner_state = state.get("tuner", {})
    if not isinstance(tuner_state, dict):
        raise UserError(f"checkpoint {path} cannot be read (its tuner state is not a table); it may be damaged")
    run.tuner.load_state_dict(tuner_state)
    run.mse_start = float(state.get("test_mse_start", math.nan))
    run.elapsed_before = float(state.get("seconds", 0.0))
    if run.start > run.config.iterations:
        raise UserError(f"{run.run_dir} is checkpointed at iteration {run.start}; --iterations "
                        f"{run.config.iterations} would end before it (give at least {run.start})")
    distributed.barrier()  # every process has read the checkpoint before rank 0 rewrites anything
    if distributed.context().is_main:
        for name in (METRICS_FILE, TUNER_FILE):
            truncate_jsonl(run.run_dir / name, run.start, console)
        run.spec.save(run.run_dir)  # the total and the schedule it continues to (and any new shards)
        run.tuning_seconds = recorded_tuning_seconds(run.run_dir / TUNER_FILE)


def _callbacks(run: Run, *, progress: bool, console: Console, logger: str | None = None) -> list:
    """Rank 0's callbacks: the run folder's writer, then the ``logger`` if one is named (it reads what
    the writer has just written), and a progress bar unless ``progress`` is off."""
    writer = RunWriter(run.run_dir, run.model, run.sampler, run.x_test, seed=run.config.seed,
                       image_every=run.config.image_every, plots=bool(run.config.tune_every), console=console)
    callbacks: list = [writer]
    if logger is not None:
        callbacks.append(make_logger(logger, run.run_dir, image_every=run.config.image_every))
    return callbacks + [ProgressDisplay(console)] if progress else callbacks


def _summary(run: Run) -> dict[str, Any]:
    """``summary.json``: totals, speed, test MSE at the start and (rank 0) at the end."""
    config = run.config
    summary = {
        "iterations": config.iterations, "seconds": run.seconds(),
        "iterations_per_second": (config.iterations - run.start) / max(time.perf_counter() - run.began, 1e-9),
        "test_mse_start": run.mse_start, "test_mse_end": math.nan, "final_loss": run.last_loss,
        "final_step_size": step_size_summary(run.sampler), "eval_examples": int(run.x_test.shape[0]),
        "tuning_seconds": run.tuning_seconds, "processes": distributed.context().world_size,
        "shards": config.shards, "schedule_iterations": config.schedule_total,
    }
    if distributed.context().is_main:
        summary["test_mse_end"] = reconstruction_mse(run.model, run.sampler, run.x_test, seed=config.seed)
    return summary


@contextmanager
def _run_guard(run_dir: Path, *, fresh: bool) -> Iterator[StopRequest]:
    """For the life of a run: the folder's lock (rank 0) and the SIGINT / SIGTERM handlers."""
    lock = lock_run_folder(run_dir, fresh=fresh)
    try:
        with StopRequest().installed() as stop:
            yield stop
    finally:
        if lock is not None:
            lock.release()
