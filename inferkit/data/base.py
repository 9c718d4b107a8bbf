"""In-memory image data sets: two splits of ``[C, H, W]`` float images in ``[-1, 1]``.

Every item is a dict ``{"x", "index", ["label"], ["factors"]}``; ``index`` is the
item's stable position in its split, so persistent samplers can key chains on it.
Batch order is a pure function of ``(seed, epoch)`` (see :func:`batch_indices`),
so a run resumed at iteration ``t`` sees exactly the batches it would have seen.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from inferkit.errors import UserError
from inferkit.interfaces import DataSet, DataSplit

__all__ = [
    "ImageData",
    "TensorSplit",
    "as_int",
    "batch_indices",
    "batches_per_epoch",
    "epoch_permutation",
    "make_loader",
    "step_indices",
]


def as_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an int (ints or integer strings, as options arrive from the CLI);
    :class:`UserError` otherwise or when below ``minimum``."""
    if isinstance(value, bool):
        raise UserError(f"option {name} must be an integer, got {value!r}; pass e.g. {name}=100")
    try:
        if isinstance(value, str):
            result = int(value.strip())
        else:
            result = operator.index(value)
    except (TypeError, ValueError):
        raise UserError(f"option {name} must be an integer, got {value!r}; pass e.g. {name}=100") from None
    if minimum is not None and result < minimum:
        raise UserError(f"option {name} must be at least {minimum}, got {result}")
    return result


class TensorSplit(DataSplit, Dataset):
    """One split held as tensors: ``x`` ``[N, C, H, W]`` float32 in ``[-1, 1]``, optional
    ``labels`` ``[N]`` int64 and ``factors`` ``[N, F]``.

    ``split[i]`` is a per-item dict (for ``DataLoader`` and its default collate);
    ``split.batch(indices)`` is the fast path that gathers a whole batch at once.
    """

    def __init__(
        self,
        x: Tensor,
        *,
        labels: Tensor | None = None,
        factors: Tensor | None = None,
        name: str = "train",
        source_index: Tensor | None = None,
    ) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a tensor [N, C, H, W], got {getattr(x, 'shape', type(x))}")
        n = x.shape[0]
        if labels is not None and (labels.dim() != 1 or labels.shape[0] != n):
            raise ValueError(f"labels must have shape [{n}], got {tuple(labels.shape)}")
        if factors is not None and (factors.dim() != 2 or factors.shape[0] != n):
            raise ValueError(f"factors must have shape [{n}, F], got {tuple(factors.shape)}")
        self.x = x.to(torch.float32).contiguous()
        self.labels = None if labels is None else labels.to(torch.int64).contiguous()
        self.factors = None if factors is None else factors.contiguous()
        self.name = name
        self.source_index = source_index
        """Optional: each item's row in the original source (e.g. its IDX file)."""

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item ``i`` (a copy): ``x`` ``[C, H, W]``, ``index`` (int), ``label``/``factors``
        when present."""
        n = len(self)
        i = operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a split of {n} items")
        i %= n
        item: dict[str, Any] = {"x": self.x[i].clone(), "index": i}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        if self.factors is not None:
            item["factors"] = self.factors[i].clone()
        return item

    def batch(self, indices: Tensor | Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        """The items at ``indices`` gathered as one batch: ``x`` ``[B, C, H, W]``,
        ``index`` ``[B]`` int64, and ``label`` / ``factors`` when present."""
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices)
        idx = idx.to(dtype=torch.int64).reshape(-1)
        n = len(self)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"batch indices must lie in [0, {n}), got [{int(idx.min())}, {int(idx.max())}]")
        dev_idx = idx.to(self.device)
        out = {"x": self.x.index_select(0, dev_idx), "index": idx.to(self.device)}
        if self.labels is not None:
            out["label"] = self.labels.index_select(0, dev_idx)
        if self.factors is not None:
            out["factors"] = self.factors.index_select(0, dev_idx)
        return out

    def batches(
        self, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = True
    ) -> Iterator[dict[str, Tensor]]:
        """The batches of one epoch, in the order :func:`batch_indices` fixes."""
        for idx in batch_indices(
            len(self), batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last
        ):
            yield self.batch(idx)

    def to(self, device: torch.device | str) -> TensorSplit:
        """The same split with its tensors on ``device`` (for a fast on-device path)."""
        return TensorSplit(
            self.x.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            factors=None if self.factors is None else self.factors.to(device),
            name=self.name,
            source_index=self.source_index,
        )

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}" for k, v in (("labels", self.labels), ("factors", self.factors)) if v is not None
        )
        return f"TensorSplit({self.name!r}, n={len(self)}, shape={self.data_shape}{extra})"


class ImageData(DataSet):
    """An image data set (:class:`~inferkit.interfaces.DataSet`): ``train`` and ``test`` splits with
    the same image shape ``(C, H, W)``; ``factor_names`` names the columns of ``factors`` (``None``
    for data without known generative factors); ``num_classes`` is set when items carry a ``label``.
    """

    def __init__(
        self,
        train: TensorSplit,
        test: TensorSplit,
        *,
        name: str | None = None,
        factor_names: Sequence[str] | None = None,
        num_classes: int | None = None,
    ) -> None:
        if train.data_shape != test.data_shape:
            raise ValueError(f"train and test shapes differ: {train.data_shape} vs {test.data_shape}")
        if factor_names is not None:
            for split in (train, test):
                if split.factors is None or split.factors.shape[1] != len(factor_names):
                    raise ValueError(f"{split.name} factors do not match factor_names {list(factor_names)}")
        self.train = train
        self.test = test
        if name is not None:
            self.name = name
        self.factor_names: tuple[str, ...] | None = None if factor_names is None else tuple(factor_names)
        self.num_classes = num_classes

    def split(self, which: str) -> TensorSplit:
        """``"train"`` or ``"test"``."""
        if which == "train":
            return self.train
        if which == "test":
            return self.test
        raise UserError(f"unknown data split {which!r}; use 'train' or 'test'")

    def to(self, device: torch.device | str) -> ImageData:
        """A shallow copy with both splits on ``device``."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.train = self.train.to(device)
        new.test = self.test.to(device)
        return new

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, data_shape={self.data_shape}, "
            f"train={len(self.train)}, test={len(self.test)})"
        )


# --------------------------------------------------------------------------- batching


@lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed % 2**64, epoch, 0x1F2E]))
    perm = rng.permutation(n).astype(np.int64)
    perm.flags.writeable = False
    return perm


def epoch_permutation(n: int, *, seed: int, epoch: int) -> Tensor:
    """The order in which epoch ``epoch`` visits ``n`` items: a permutation of
    ``range(n)`` fixed by ``(seed, epoch)`` alone (independent of global RNG state)."""
    n, epoch = operator.index(n), operator.index(epoch)
    if n < 0 or epoch < 0:
        raise ValueError(f"n and epoch must be non-negative, got n={n}, epoch={epoch}")
    return torch.from_numpy(_permutation(n, operator.index(seed), epoch).copy())


def batches_per_epoch(n: int, batch_size: int, *, drop_last: bool = True) -> int:
    """How many batches one epoch over ``n`` items yields."""
    batch_size = as_int("batch_size", batch_size, minimum=1)
    return n // batch_size if drop_last else -(-n // batch_size)


def batch_indices(
    n: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = True
) -> list[Tensor]:
    """The index batches of epoch ``epoch`` over ``n`` items (int64 tensors).

    With ``shuffle`` the order is :func:`epoch_permutation`; with ``drop_last`` the
    incomplete final batch is dropped, so every batch has ``batch_size`` rows.
    """
    batch_size = as_int("batch_size", batch_size, minimum=1)
    if drop_last and batch_size > n:
        raise UserError(
            f"batch size {batch_size} is larger than the {n} examples of the split; lower the batch size"
        )
    order = epoch_permutation(n, seed=seed, epoch=epoch) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    return list(order[:stop].split(batch_size))


def step_indices(n: int, batch_size: int, *, seed: int, step: int) -> Tensor:
    """The index batch of global iteration ``step`` (0-based) when iterations run
    through shuffled epochs with ``drop_last``: what a resumed run needs."""
    step = operator.index(step)
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    per_epoch = batches_per_epoch(n, batch_size)
    if per_epoch == 0:
        raise UserError(
            f"batch size {batch_size} is larger than the {n} examples of the split; lower the batch size"
        )
    epoch, pos = divmod(step, per_epoch)
    perm = _permutation(n, operator.index(seed), epoch)
    return torch.from_numpy(perm[pos * batch_size : (pos + 1) * batch_size].copy())


def make_loader(
    split: Dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = True,
    **loader_options: Any,
) -> DataLoader:
    """A ``DataLoader`` over one epoch of ``split`` in :func:`batch_indices` order;
    batches are made by the default collate and carry ``index``."""
    n = len(split)  # type: ignore[arg-type]
    order = batch_indices(n, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last)
    batches = [b.tolist() for b in order]
    return DataLoader(split, batch_sampler=batches, **loader_options)
