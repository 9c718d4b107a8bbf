"""Data-parallel training on ``torch.distributed`` (processes started by ``torchrun``).

    torchrun --nproc_per_node N -m inferkit run --model ladder --sampler shortrun --tuner kl-grid ...

**Shards.** The global batch ``B`` of iteration ``t`` is the union of ``S`` shard batches (``S`` =
``TrainConfig.shards``, default: one per process). Shard ``s`` owns the training examples
``i = s mod S`` (fixed shards: the layout of an unshuffled ``DistributedSampler`` without its padding,
which would give an example two owners), takes its ``B / S``
examples of iteration ``t`` from them by :func:`shard_batch_indices`, and draws its random numbers from
``seeded_generator(shard_seed(seed, s), t)``, a pure function of ``(seed, t, s)``. Process ``r`` of ``W`` trains shards
``r, r + W, ...`` (gradients accumulated over them), ``DistributedDataParallel`` averages over
processes, so the gradient of every iteration is ``(1/S) sum_s grad L_s`` for any ``W`` dividing ``S``:
one process with ``shards=S`` computes exactly what ``S`` processes compute. With ``S = 1`` the
batches and random draws are those of an ordinary single-process run.

**Per-example state** (ABP's persistent chains) lives with the process that owns the example; before a
checkpoint :meth:`~inferkit.interfaces.Sampler.gather_example_state` unites it (one all-reduce), so
the checkpoint holds every example's state and resumes with any number of processes.

Everything here is a no-op without an initialised process group (or with one process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from inferkit.data.base import step_indices
from inferkit.errors import UserError

SHARD_SEED_STRIDE = 7_919  # shard s > 0 draws from seed + s * stride (shard 0 keeps the run's seed)


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` processes (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and figures; the others write nothing."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context() -> Context:
    """This process's place in the initialised process group (a single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def launched_by_torchrun() -> bool:
    """True when the environment names more than one process (``torchrun`` sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def initialize(device: str) -> Context:
    """Join the process group ``torchrun`` describes (``nccl`` for CUDA, ``gloo`` otherwise) and pin
    this process to GPU ``LOCAL_RANK`` on CUDA; a no-op outside ``torchrun`` or when joined already."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return context()
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run inferkit in one process")
    cuda = str(device).startswith("cuda")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); "
                            "start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return context()


def shutdown() -> None:
    """Leave the process group (at the end of a distributed command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str) -> torch.device:
    """``device`` for this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a process group."""
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None and context().distributed:
        return torch.device("cuda", context().local_rank)
    return resolved


def barrier() -> None:
    if context().distributed:
        dist.barrier()


def broadcast_from_main(value):
    """Rank 0's ``value`` on every process (any picklable object)."""
    if not context().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """``sum_r tensor_r`` over processes, in place (the tensor itself with one process)."""
    if context().distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """``(1/W) sum_r tensor_r`` over the ``W`` processes, in place."""
    world = context().world_size
    if world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world)
    return tensor


def resolve_shards(shards: int, world_size: int, batch_size: int) -> int:
    """``S``: ``shards`` (0: one per process), checked to be a multiple of the process count that
    divides the batch."""
    resolved = shards or world_size
    if resolved % world_size:
        raise UserError(f"shards={resolved} cannot be split over {world_size} processes; start a number of "
                        f"processes that divides {resolved} (torchrun --nproc_per_node), or set --train-opt "
                        f"shards=<a multiple of {world_size}>")
    if batch_size % resolved:
        raise UserError(f"batch size {batch_size} does not split into {resolved} equal shards; give a batch size "
                        f"divisible by {resolved}")
    return resolved


def shards_of(rank: int, world_size: int, shards: int) -> list[int]:
    """The shards process ``rank`` trains: ``rank, rank + W, ...``."""
    return list(range(rank, shards, world_size))


def owned_examples(num_examples: int, shards: int, mine: list[int], device: torch.device | str = "cpu") -> Tensor:
    """Boolean ``[num_examples]``: the examples ``i`` with ``i mod S`` among this process's shards."""
    owner = torch.arange(num_examples, device=device) % shards
    return torch.isin(owner, torch.tensor(mine, device=device, dtype=owner.dtype))


def shard_batch_indices(num_examples: int, batch_size: int, *, shards: int, shard: int, seed: int,
                        step: int) -> Tensor:
    """The ``B / S`` dataset indices shard ``shard`` trains at iteration ``step``: shuffled epochs
    over the examples ``i = shard mod S`` (with ``S = 1``: :func:`~inferkit.data.base.step_indices`)."""
    if shards == 1:
        return step_indices(num_examples, batch_size, seed=seed, step=step)
    owned = torch.arange(shard, num_examples, shards)
    local = step_indices(len(owned), batch_size // shards, seed=seed + SHARD_SEED_STRIDE * shard, step=step)
    return owned[local]


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``'s random draws (shard 0: the run's seed itself)."""
    return seed + SHARD_SEED_STRIDE * shard
