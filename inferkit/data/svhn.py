"""``svhn``: Street View House Numbers, the cropped 32 x 32 digits, from the ``.mat`` files in ``--data-dir``.

Files: ``train_32x32.mat`` (73,257 images) and ``test_32x32.mat`` (26,032), as distributed (MATLAB
v5 files, read with ``scipy.io.loadmat``, which builds arrays and runs no code). Each holds ``X``,
uint8 ``[32, 32, 3, N]``, and ``y``, ``[N, 1]`` with labels 1..10, where 10 stands for the digit 0.
``num_train`` / ``num_test`` > 0 keep only the first that many. Images are ``[3, 32, 32]`` in
``[-1, 1]`` (``x = 2 v / 255 - 1``, as for MNIST); items carry ``label``, the digit 0..9.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from inferkit.data.base import ImageData, TensorSplit, as_int
from inferkit.data.catalog import default_data_dir
from inferkit.errors import UserError

__all__ = ["FILES", "SVHNDataset", "read_svhn_mat"]

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def _damaged(path: Path, why: str) -> UserError:
    return UserError(f"SVHN file {path} is damaged or not the cropped-digits format ({why}); re-download "
                     f"{path.name}")


def _load_mat(path: Path) -> dict:
    """``X`` and ``y`` of a MATLAB file, or a one-line :class:`UserError`."""
    from scipy.io import loadmat

    try:
        return loadmat(path, variable_names=["X", "y"])
    except OSError as exc:
        raise UserError(f"cannot read SVHN file {path} ({exc.strerror or exc}); check --data-dir") from None
    except NotImplementedError:  # MATLAB v7.3 (HDF5)
        raise _damaged(path, "a MATLAB v7.3 file; the distributed files are v5") from None
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, TypeError, MatReadError, ... on bad bytes
        raise _damaged(path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
                       ) from None


def read_svhn_mat(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one SVHN ``.mat`` file: uint8 ``[N, 3, 32, 32]`` and int64 digits ``[N]``
    (label 10 becomes 0); a missing or damaged file is a one-line :class:`UserError`."""
    path = Path(path)
    data = _load_mat(path)
    if "X" not in data or "y" not in data:
        missing = " and ".join(name for name in ("X", "y") if name not in data)
        raise _damaged(path, f"no variable {missing}")
    images, labels = data["X"], data["y"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != IMAGE_SHAPE:
        raise _damaged(path, f"X is {images.dtype} {list(images.shape)}, expected uint8 [32, 32, 3, N]")
    n = images.shape[3]
    if labels.size != n or (labels.ndim == 2 and 1 not in labels.shape) or labels.ndim > 2:
        raise _damaged(path, f"y has shape {list(labels.shape)} for {n} images, expected [{n}, 1]")
    labels = labels.reshape(-1)
    if not np.issubdtype(labels.dtype, np.number) or n == 0:
        raise _damaged(path, "no images" if n == 0 else f"y holds {labels.dtype} values")
    bad = (labels < 1) | (labels > NUM_CLASSES) | (labels != np.round(labels))
    if bad.any():
        row = int(np.argmax(bad))
        raise _damaged(path, f"label {labels[row].item():g} at row {row}; SVHN labels are 1 to 10")
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels.astype(np.int64) % NUM_CLASSES


def _split(images: np.ndarray, labels: np.ndarray, keep: int, name: str) -> TensorSplit:
    ids = np.arange(images.shape[0])[: keep or None]
    x = torch.from_numpy(images[ids]).to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)
    return TensorSplit(x, labels=torch.from_numpy(labels[ids]), name=name,
                       source_index=torch.from_numpy(ids.astype(np.int64)))


class SVHNDataset(ImageData):
    """SVHN from the local ``train_32x32.mat`` and ``test_32x32.mat`` (see the module docstring);
    ``source_index`` on each split gives each item's column in its file's ``X``."""

    name = "svhn"

    def __init__(self, data_dir: str = "", num_train: int = 0, num_test: int = 0) -> None:
        num_train = as_int("num_train", num_train, minimum=0)
        num_test = as_int("num_test", num_test, minimum=0)
        expected = " and ".join(FILES.values())
        data_dir = os.fspath(data_dir) if data_dir is not None else ""
        if not str(data_dir).strip():
            data_dir = default_data_dir("svhn")  # $INFERKIT_DATA/svhn or the cache; its error names the fetch
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise UserError(f"--data-dir {root} is not a folder; point it at the folder holding {expected}")
        missing = [name for name in FILES.values() if not (root / name).is_file()]
        if missing:
            raise UserError(f"--data-dir {root} lacks {' and '.join(missing)}; it must hold {expected} (SVHN "
                            "format 2, the cropped digits)")
        self.data_dir = str(root)
        train = _split(*read_svhn_mat(root / FILES["train"]), num_train, "train")
        test = _split(*read_svhn_mat(root / FILES["test"]), num_test, "test")
        super().__init__(train, test, num_classes=NUM_CLASSES)
