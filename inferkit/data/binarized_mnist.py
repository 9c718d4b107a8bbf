"""``binarized-mnist``: statically binarised MNIST, the data of the discrete-latent paper's Table 1.

Binary images ``b in {0, 1}^(28 x 28)``, held as ``[1, 28, 28]`` floats ``2 b - 1`` in ``{-1, 1}`` (the
``[-1, 1]`` range of every inferkit image data set, so ``rbm-prior``'s midpoint threshold reads them back
exactly). Two sources in ``--data-dir``:

* the Larochelle-Murray files ``binarized_mnist_train.amat``, ``binarized_mnist_valid.amat`` and
  ``binarized_mnist_test.amat`` (text, one image a line, 784 space-separated 0/1 in row-major order;
  50,000 / 10,000 / 10,000 images, no labels), read when all three are there and ``binarize="bernoulli"``;
* otherwise the MNIST IDX files (:mod:`inferkit.data.mnist`), binarised here with the same
  50,000 / 10,000 / 10,000 split: train is the first 50,000 rows of the training file, validation its
  last 10,000 (its last sixth), test the t10k file. With only the t10k files, the 8,000 / 2,000
  split of ``mnist`` (``split_seed``) and no validation split.

Binarisation of the grey levels ``u in {0, ..., 255}`` (``binarize``):

* ``"bernoulli"`` (default, the paper's "statically binarized MNIST" after Salakhutdinov and Murray
  2008 and Larochelle and Murray 2011): ``b_d ~ Bernoulli(u_d / 255)``, drawn *once* for the data set
  with the fixed ``binarize_seed``. Row ``r`` of IDX file ``F`` is ``b = 1[v < u]`` with
  ``v`` the ``r``-th row of a ``[rows(F), 784]`` array of integers uniform on ``{0, ..., 254}``
  drawn by numpy's PCG64 from ``SeedSequence([binarize_seed, crc32(F)])``, so ``P(b_d = 1) = u_d / 255``
  exactly, and the binary image depends only on ``(binarize_seed, F, r)``: the same in every epoch,
  iteration and run, whatever ``num_train`` keeps. (A fresh draw per batch would be the *dynamic*
  binarisation, a different benchmark whose NLLs are not comparable.) The Larochelle-Murray files are
  one such draw, fixed once for everybody.
* ``"threshold"``: ``b_d = 1[u_d / 255 > 1/2]`` (from the IDX files; deterministic, about 45 nats per
  image less pixel noise than the Bernoulli draw, so its NLLs are not comparable with the paper's).

The binarisation lives in the data, not in the model: a fixed-seed draw inside ``log p(x | z)`` would
need each row's data set index (which the likelihood never sees) to give the same binary image on every
visit, whereas here it is drawn once, stored with the images, and every consumer (training, the
encoder, evaluation, image grids) sees the same binary data. ``train_on="train+valid"`` trains on all
60,000 non-test images (``valid`` is then ``None``); ``num_train`` / ``num_test`` > 0 keep only the
first that many. Items from the IDX files carry ``label``; ``source_index`` is each item's row in its
file.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import torch

from inferkit.data.base import ImageData, TensorSplit, as_int
from inferkit.data.catalog import default_data_dir
from inferkit.data.mnist import FILES, MNISTDataset, _find
from inferkit.errors import UserError

__all__ = ["AMAT_FILES", "BINARIZATIONS", "BinarizedMNISTDataset", "read_amat", "static_bernoulli"]

AMAT_FILES = {
    "train": "binarized_mnist_train.amat",
    "valid": "binarized_mnist_valid.amat",
    "test": "binarized_mnist_test.amat",
}
BINARIZATIONS = ("bernoulli", "threshold")
TRAIN_ON = ("train", "train+valid")
PIXELS = 28 * 28
VALID_FRACTION = 6  # validation: the last sixth of the IDX training file (10,000 of 60,000 rows)


def read_amat(path: str | os.PathLike[str], width: int = PIXELS) -> np.ndarray:
    """The rows of a Larochelle-Murray ``.amat`` file as ``uint8`` ``[N, width]`` of 0/1: each line
    ``width`` space-separated ``0`` or ``1`` (blank lines at the end are ignored). A missing file or a
    malformed line is a one-line :class:`UserError` naming the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}); check --data-dir") from None
    lines = raw.rstrip().split(b"\n") if raw.strip() else []
    if not lines:
        raise UserError(f"{path} holds no images; re-download it")
    rows = np.empty((len(lines), width), dtype=np.uint8)
    for number, line in enumerate(lines):
        tokens = line.split()
        joined = b"".join(tokens)
        if len(tokens) != width or len(joined) != width or joined.translate(None, b"01"):
            raise UserError(f"{path}, line {number + 1}: {_what_is_wrong(tokens, width)}; expected {width} "
                            "space-separated values 0 or 1 (re-download the file)")
        rows[number] = np.frombuffer(joined, dtype=np.uint8) - ord("0")
    return rows


def _what_is_wrong(tokens: list[bytes], width: int) -> str:
    bad = next((t for t in tokens if t not in (b"0", b"1")), None)
    if bad is not None:
        return f"value {bad.decode(errors='replace')[:20]!r} is not 0 or 1"
    return f"{len(tokens)} values"


def static_bernoulli(grey: np.ndarray, seed: int, source: str) -> np.ndarray:
    """``1[v < u]`` for grey levels ``u`` (``uint8`` ``[N, ...]``, 0..255) and ``v`` uniform on
    ``{0, ..., 254}`` from ``SeedSequence([seed, crc32(source)])``: ``Bernoulli(u / 255)`` draws, as
    ``uint8`` 0/1, fixed by ``(seed, source)`` and each row's position."""
    tag = zlib.crc32(source.encode())
    rng = np.random.default_rng(np.random.SeedSequence([seed % 2**64, tag]))
    v = rng.integers(0, 255, size=grey.shape, dtype=np.uint8)
    return (v < grey).astype(np.uint8)


def _grey_levels(x: torch.Tensor) -> np.ndarray:
    """``u = (x + 1) 255 / 2`` back as ``uint8`` from ``mnist``'s ``[-1, 1]`` floats (exact, rounded)."""
    return ((x + 1.0) * 127.5).round_().to(torch.uint8).numpy()


def _data_root(data_dir: str) -> Path:
    where = (f"a folder holding {', '.join(AMAT_FILES.values())} (Larochelle-Murray) or the MNIST IDX "
             "files (see the mnist data set)")
    if data_dir is None or not str(data_dir).strip():
        try:
            return Path(default_data_dir("binarized-mnist"))
        except UserError:
            return Path(default_data_dir("mnist"))  # its error names the fetch command
    root = Path(os.fspath(data_dir)).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-dir {root} is not a folder; point it at {where}")
    return root


def _as_images(bits: np.ndarray) -> torch.Tensor:
    """0/1 ``[N, 784]`` or ``[N, 1, 28, 28]`` to float32 ``[N, 1, 28, 28]`` in ``{-1, 1}``."""
    x = torch.from_numpy(np.ascontiguousarray(bits)).reshape(-1, 1, 28, 28).to(torch.float32)
    return x.mul_(2.0).sub_(1.0)


def _split(name: str, bits: np.ndarray, rows: np.ndarray, labels: np.ndarray | None = None) -> TensorSplit:
    return TensorSplit(_as_images(bits), name=name, source_index=torch.from_numpy(rows.astype(np.int64)),
                       labels=None if labels is None else torch.from_numpy(labels.astype(np.int64)))


class BinarizedMNISTDataset(ImageData):
    """Statically binarised MNIST (see the module docstring): ``train`` and ``test``, and ``valid`` (the
    10,000 validation images; ``None`` with ``train_on="train+valid"`` or with only the t10k files).

    Args:
        data_dir: the folder with the ``.amat`` files or the MNIST IDX files.
        binarize: ``"bernoulli"`` (fixed-seed ``Bernoulli(u / 255)``) or ``"threshold"`` (``u / 255 > 1/2``).
        binarize_seed: the seed of the Bernoulli draw from the IDX files.
        train_on: ``"train"`` (50,000 images) or ``"train+valid"`` (60,000).
        num_train, num_test: > 0 keeps the first that many (``num_test`` cuts ``valid`` too).
        split_seed: the train/test split when only the t10k IDX files are present.
    """

    name = "binarized-mnist"

    def __init__(self, data_dir: str = "", binarize: str = "bernoulli", binarize_seed: int = 0,
                 train_on: str = "train", num_train: int = 0, num_test: int = 0, split_seed: int = 0) -> None:
        if binarize not in BINARIZATIONS:
            raise UserError(f"binarized-mnist: binarize must be one of {', '.join(BINARIZATIONS)}, "
                            f"got {binarize!r}")
        if train_on not in TRAIN_ON:
            raise UserError(f"binarized-mnist: train_on must be one of {', '.join(TRAIN_ON)}, "
                            f"got {train_on!r}")
        self.binarize = binarize
        self.binarize_seed = as_int("binarize_seed", binarize_seed)
        self.train_on = train_on
        num_train = as_int("num_train", num_train, minimum=0)
        num_test = as_int("num_test", num_test, minimum=0)
        root = _data_root(data_dir)
        amat = {key: root / base for key, base in AMAT_FILES.items()}
        present = [key for key, path in amat.items() if path.is_file()]
        if present and len(present) < len(amat):
            missing = ", ".join(AMAT_FILES[k] for k in amat if k not in present)
            raise UserError(f"--data-dir {root} has some Larochelle-Murray files but lacks {missing}; add "
                            "them, or remove the others to binarise the MNIST IDX files instead")
        if present and binarize == "bernoulli":
            splits = self._from_amat(amat)
        else:
            splits = self._from_idx(root, split_seed)
        train, valid, test = splits
        if train_on == "train+valid" and valid is not None:
            labels = None if train.labels is None else torch.cat([train.labels, valid.labels])
            train = TensorSplit(torch.cat([train.x, valid.x]), name="train", labels=labels,
                                source_index=torch.cat([train.source_index, valid.source_index]))
            valid = None
        self.valid = valid if valid is None or not num_test else _first(valid, num_test)
        self.data_dir = str(root)
        super().__init__(_first(train, num_train), _first(test, num_test),
                         num_classes=10 if train.labels is not None else None)

    def _from_amat(self, paths: dict[str, Path]) -> tuple[TensorSplit, TensorSplit, TensorSplit]:
        self.source = "amat"
        out = []
        for key in ("train", "valid", "test"):
            bits = read_amat(paths[key])
            out.append(_split(key, bits, np.arange(bits.shape[0])))
        return tuple(out)  # type: ignore[return-value]

    def _from_idx(self, data_dir: Path, split_seed: int
                  ) -> tuple[TensorSplit, TensorSplit | None, TensorSplit]:
        """Binarise the IDX files' grey levels, each file drawn whole (see the module docstring)."""
        self.source = "idx"
        if _find(data_dir, FILES["test_images"]) is None:
            raise UserError(f"--data-dir {data_dir} holds neither the Larochelle-Murray files "
                            f"({', '.join(AMAT_FILES.values())}) nor the MNIST IDX files "
                            f"({', '.join(FILES.values())}, each plain or .gz)")
        grey = MNISTDataset(str(data_dir), split_seed=split_seed)
        if grey.split_rule == "files":
            files = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
            bits = {key: self._binarize(_grey_levels(split.x), files[key])
                    for key, split in (("train", grey.train), ("test", grey.test))}
            labels = grey.train.labels.numpy()
            cut = bits["train"].shape[0] - bits["train"].shape[0] // VALID_FRACTION
            rows = np.arange(bits["train"].shape[0])
            train = _split("train", bits["train"][:cut], rows[:cut], labels[:cut])
            valid = _split("valid", bits["train"][cut:], rows[cut:], labels[cut:])
            test = _split("test", bits["test"], np.arange(bits["test"].shape[0]), grey.test.labels.numpy())
            return train, valid, test
        # only the t10k file: both splits are rows of it, so binarise the file in row order
        rows_train, rows_test = grey.train.source_index.numpy(), grey.test.source_index.numpy()
        whole = np.empty((rows_train.size + rows_test.size, 1, 28, 28), dtype=np.uint8)
        whole[rows_train], whole[rows_test] = _grey_levels(grey.train.x), _grey_levels(grey.test.x)
        bits = self._binarize(whole, "t10k-images-idx3-ubyte")
        return (_split("train", bits[rows_train], rows_train, grey.train.labels.numpy()), None,
                _split("test", bits[rows_test], rows_test, grey.test.labels.numpy()))

    def _binarize(self, grey: np.ndarray, source: str) -> np.ndarray:
        if self.binarize == "threshold":
            return (grey > 127.5).astype(np.uint8)
        return static_bernoulli(grey, self.binarize_seed, source)


def _first(split: TensorSplit, n: int) -> TensorSplit:
    """The first ``n`` items of ``split`` (all of them for ``n = 0``)."""
    if not n:
        return split
    labels = None if split.labels is None else split.labels[:n]
    return TensorSplit(split.x[:n], name=split.name, labels=labels,
                       source_index=None if split.source_index is None else split.source_index[:n])
