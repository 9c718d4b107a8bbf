"""``mnist``: MNIST digits read from the original IDX files in ``--data-dir``.

Without ``--data-dir`` the files are looked for in ``$INFERKIT_DATA/mnist``, then in the cache
folder ``inferkit data fetch mnist`` writes (:func:`inferkit.data.catalog.default_data_dir`).

Files (each plain or ``.gz``): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. With all four, train is the
60,000 training images and test the 10,000 test images. With only the ``t10k`` pair
(the 10,000 test images), they are split by ``split_seed`` into 8,000 train and
2,000 test. ``num_train`` / ``num_test`` > 0 keep only the first that many.
Images are ``[1, 28, 28]`` in ``[-1, 1]``; items carry ``label``.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from inferkit.data.base import ImageData, TensorSplit, as_int
from inferkit.data.catalog import default_data_dir
from inferkit.errors import UserError

__all__ = ["FILES", "IMAGE_MAGIC", "LABEL_MAGIC", "MNISTDataset", "read_idx"]

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10
TEST_ONLY_TRAIN = 8000  # train size when only the t10k files are present


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"MNIST file {path} is corrupt or truncated ({why}); delete it and re-download it")


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain, or gzip if the name ends in ``.gz``)
    whose magic number must be ``magic``; validate dims and length.

    Returns a ``uint8`` array shaped by the header's dimensions.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read MNIST file {path} ({exc.strerror or exc}); check --data-dir") from None
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise _corrupt(path, f"bad gzip data: {exc}") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, f"{len(raw)} bytes, shorter than the {header}-byte IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _corrupt(path, f"magic number 0x{found:08X}, expected 0x{magic:08X}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if any(d == 0 for d in dims):
        raise _corrupt(path, f"empty dimension in header {dims}")
    expected = header + math.prod(dims)  # Python ints: header dimensions cannot overflow
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "trailing bytes"
        raise _corrupt(path, f"{kind}: {len(raw)} bytes, header {dims} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def _expected_files_message() -> str:
    return ", ".join(FILES.values()) + " (each plain or .gz)"


def _load_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IMAGE_MAGIC)
    labels = read_idx(labels_path, LABEL_MAGIC)
    if labels.size and labels.max() >= NUM_CLASSES:
        raise _corrupt(labels_path, f"label {int(labels.max())} at row {int(labels.argmax())}, but MNIST "
                                    f"labels are 0 to {NUM_CLASSES - 1}")
    if images.shape[0] != labels.shape[0]:
        raise UserError(
            f"MNIST files {images_path.name} ({images.shape[0]} images) and {labels_path.name} "
            f"({labels.shape[0]} labels) do not match; re-download them"
        )
    return images, labels


def _to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W]`` to float32 ``[N, 1, H, W]`` in ``[-1, 1]``."""
    x = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32)
    return x.mul_(2.0 / 255.0).sub_(1.0)


class MNISTDataset(ImageData):
    """MNIST from local IDX files; see the module docstring for the split rules.

    ``source_index`` on each split gives each item's row in its IDX file.
    """

    name = "mnist"
    levels = 256  # 8-bit values, x = 2 v / 255 - 1

    def __init__(
        self, data_dir: str = "", num_train: int = 0, num_test: int = 0, split_seed: int = 0
    ) -> None:
        num_train = as_int("num_train", num_train, minimum=0)
        num_test = as_int("num_test", num_test, minimum=0)
        split_seed = as_int("split_seed", split_seed)
        data_dir = os.fspath(data_dir) if data_dir is not None else ""
        if not str(data_dir).strip():
            data_dir = default_data_dir("mnist")
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise UserError(
                f"--data-dir {root} is not a folder; point it at the folder holding {_expected_files_message()}"
            )
        found = {key: _find(root, base) for key, base in FILES.items()}
        missing = [FILES[k] for k in ("test_images", "test_labels") if found[k] is None]
        has_train = [found[k] is not None for k in ("train_images", "train_labels")]
        if any(has_train) and not all(has_train):
            missing += [FILES[k] for k in ("train_images", "train_labels") if found[k] is None]
        if missing:
            raise UserError(
                f"--data-dir {root} lacks {', '.join(missing)}[.gz]; it must hold {_expected_files_message()}"
            )
        test_images, test_labels = _load_pair(found["test_images"], found["test_labels"])  # type: ignore[arg-type]
        if all(has_train):
            train_images, train_labels = _load_pair(found["train_images"], found["train_labels"])  # type: ignore[arg-type]
            if train_images.shape[1:] != test_images.shape[1:]:
                raise UserError(
                    f"MNIST train images are {train_images.shape[1:]} but test images "
                    f"{test_images.shape[1:]}; re-download the files"
                )
            train_ids = np.arange(train_images.shape[0])
            test_ids = np.arange(test_images.shape[0])
            self.split_rule = "files"
        else:
            n = test_images.shape[0]
            if n < 2:
                raise UserError(
                    f"{found['test_images']} holds {n} image(s), too few to split; re-download it"
                )
            rng = np.random.default_rng(np.random.SeedSequence([split_seed % 2**64, 0x4D4E]))
            perm = rng.permutation(n)
            cut = round(n * TEST_ONLY_TRAIN / 10000)
            train_ids, test_ids = perm[:cut], perm[cut:]
            train_images, train_labels = test_images, test_labels
            self.split_rule = "t10k-split"
        if num_train:
            train_ids = train_ids[:num_train]
        if num_test:
            test_ids = test_ids[:num_test]
        self.data_dir = str(root)
        self.split_seed = split_seed
        train = TensorSplit(
            _to_float(train_images[train_ids]),
            labels=torch.from_numpy(train_labels[train_ids].astype(np.int64)),
            name="train",
            source_index=torch.from_numpy(np.asarray(train_ids, dtype=np.int64)),
        )
        test = TensorSplit(
            _to_float(test_images[test_ids]),
            labels=torch.from_numpy(test_labels[test_ids].astype(np.int64)),
            name="test",
            source_index=torch.from_numpy(np.asarray(test_ids, dtype=np.int64)),
        )
        super().__init__(train, test, num_classes=NUM_CLASSES)
