"""``image-folder``: a streaming data set over a folder tree of JPEG / PNG images.

For folders too large to hold in memory (CelebA-size), the splits keep only the list of
files; images are decoded on demand. ``data_dir`` is searched recursively for ``.jpg``,
``.jpeg`` and ``.png`` files (any case; names starting with ``.`` are skipped), sorted by
relative path, so the file list is the same on every machine. ``max_images`` > 0 keeps the
first that many; ``num_test`` of them (0: 10 %, at most 1000) go to the test split, chosen by a
permutation seeded with ``seed``; both splits keep sorted file order.

Only regular files are listed (a FIFO or device named ``*.png`` is skipped; a link to an image is
followed). Each image is opened with Pillow (EXIF orientation applied); 16-bit grayscale is
scaled by its bit depth (65535 is white), a palette is expanded, transparent pixels are
composited onto white, CMYK is converted; then it becomes ``RGB`` or ``L`` (``channels`` 3 or 1), its centre square (side = the short side) is resized to
``image_size`` x ``image_size`` with a Lanczos filter (the same as resizing the short side to
``image_size`` and centre-cropping), and pixels are mapped to ``[-1, 1]`` as for MNIST:
``x = 2 * v / 255 - 1``. Items are ``[C, H, W]`` float32.

Two ways to read:

* ``split.batch(indices)`` (what the trainer calls each iteration) decodes the requested
  files in parallel on a persistent :class:`concurrent.futures.ProcessPoolExecutor` of
  ``num_workers`` processes (which exit when their parent dies, even by ``kill -9``) (the trainer asks for iteration ``t + 1``'s batch on a background
  thread while ``t`` computes, since the split is ``streaming``). Batches are asked for by index, so a pool
  that splits each batch into ``num_workers`` contiguous chunks fits it directly: there is no
  sampler order to hand to a ``DataLoader`` and no iterator to keep in step with resumes.
  Results are gathered in request order, so ``num_workers=0`` (decode in-process) gives the
  same tensors.
* ``split`` is a ``torch.utils.data.Dataset`` (``split[i]`` decodes one image in-process) and
  ``split.loader(batch_size, ...)`` returns a ``DataLoader`` with ``num_workers`` workers and
  ``pin_memory`` on CUDA, for users who loop themselves.

``split.x`` is a lazy view: ``split.x[:n]`` (what ``inferkit eval``, ``inferkit tune`` and the
trainer's test examples read) decodes only the first ``n`` images.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import operator
import os
import signal
import stat
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from inferkit.data.base import ImageData, as_int, batch_indices, make_loader
from inferkit.errors import UserError
from inferkit.interfaces import DataSplit

__all__ = ["EXTENSIONS", "ImageFolderDataset", "ImageFolderSplit", "LazyImages", "find_images", "load_image"]

EXTENSIONS = (".jpg", ".jpeg", ".png")
AUTO_TEST_FRACTION, AUTO_TEST_MAX = 0.1, 1000
MAX_IMAGE_SIZE = 1024
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # how Pillow opens 16-bit grayscale PNGs
PARENT_POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1


def find_images(root: Path) -> list[str]:
    """Every ``.jpg`` / ``.jpeg`` / ``.png`` file under ``root`` (recursively, any case, names
    starting with ``.`` skipped), as paths sorted by their path relative to ``root``."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = os.path.join(folder, name)
            if not name.startswith(".") and name.lower().endswith(EXTENSIONS) and _is_regular(path):
                found.append(os.path.relpath(path, root))
    found.sort(key=lambda rel: Path(rel).as_posix())
    return [str(root / rel) for rel in found]


def _is_regular(path: str) -> bool:
    """True for a regular file (or a link to one): never a FIFO, socket or device, which would block."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _eight_bit(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit ``RGB``, ``RGBA``, ``L`` or ``LA`` (16-bit grayscale scaled by its bit depth,
    palettes expanded, CMYK converted), without clipping."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(values * (255 / 65535)), 0, 255).astype(np.uint8))
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return image
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _on_white(image: Image.Image) -> Image.Image:
    """An 8-bit image without alpha: transparent pixels composited onto white."""
    if image.mode not in ("RGBA", "LA"):
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def load_image(path: str, image_size: int, channels: int) -> np.ndarray:
    """One image as uint8 ``[image_size, image_size, channels]``: EXIF-oriented, converted to
    RGB / L, its centre square resized with Lanczos. A file Pillow cannot read is a
    :class:`UserError` naming it."""
    try:
        with Image.open(path) as image:
            image.draft("RGB" if channels == 3 else "L", (image_size, image_size))  # JPEG: decode smaller
            image = ImageOps.exif_transpose(image)
            image = _on_white(_eight_bit(image)).convert("RGB" if channels == 3 else "L")
            w, h = image.size
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            image = image.resize((image_size, image_size), Image.Resampling.LANCZOS,
                                 box=(left, top, left + side, top + side))
            array = np.array(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read image {path} ({reason}); remove or replace the file") from None
    return array.reshape(image_size, image_size, channels)


def _load_many(paths: Sequence[str], image_size: int, channels: int) -> np.ndarray:
    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = load_image(path, image_size, channels)
    return out


def _to_float(images: np.ndarray) -> Tensor:
    """uint8 ``[N, H, W, C]`` to float32 ``[N, C, H, W]`` in ``[-1, 1]`` (as MNIST's ``_to_float``)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32).contiguous()
    return x.mul_(2.0 / 255.0).sub_(1.0)


def _exit_with_parent(parent: int, forked_by_main_thread: bool) -> None:
    """Worker initializer: end this worker when the process that started it dies, even by
    ``kill -9``. A thread watches ``os.getppid()`` (it changes once the parent is gone); on Linux
    the kernel also sends SIGKILL, when the pool was started from the parent's main thread (the
    signal follows the thread that forked, and other threads may end before the process)."""
    if sys.platform.startswith("linux") and forked_by_main_thread:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the thread below still ends the worker
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="inferkit-parent-watch").start()


def _watch_parent(parent: int) -> None:
    """End this process at once when its parent ``parent`` is gone."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _pool_context():
    # fork (Linux, as DataLoader does) starts workers at once; workers only use Pillow and numpy.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class _Decoder:
    """Decodes lists of files, in-process (``num_workers=0``) or on a persistent process pool
    created on first use and shut down with the decoder (or at exit)."""

    def __init__(self, image_size: int, channels: int, num_workers: int) -> None:
        self.image_size, self.channels, self.num_workers = image_size, channels, num_workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers (spawn) copy the split, never the pool
        return {"image_size": self.image_size, "channels": self.channels, "num_workers": self.num_workers,
                "_pool": None, "_finalizer": None}

    def pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # The workers are forked by this thread, at the first submit.
            from_main = threading.current_thread() is threading.main_thread()
            self._pool = concurrent.futures.ProcessPoolExecutor(self.num_workers, mp_context=_pool_context(),
                                                                initializer=_exit_with_parent,
                                                                initargs=(os.getpid(), from_main))
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._pool, self._finalizer = None, None

    def decode(self, paths: Sequence[str]) -> Tensor:
        """Float32 ``[N, C, H, W]`` in ``[-1, 1]``, rows in the order of ``paths``."""
        paths = list(paths)
        if self.num_workers == 0 or len(paths) <= 1:
            return _to_float(_load_many(paths, self.image_size, self.channels))
        chunks = [list(c) for c in np.array_split(np.asarray(paths, dtype=object), min(self.num_workers,
                                                                                        len(paths)))]
        try:
            futures = [self.pool().submit(_load_many, chunk, self.image_size, self.channels) for chunk in chunks]
            parts = [f.result() for f in futures]
        except concurrent.futures.process.BrokenProcessPool:
            self.close()
            raise UserError("an image decoding worker died (out of memory?); lower num_workers or use "
                            "num_workers=0") from None
        return _to_float(np.concatenate(parts))


class LazyImages:
    """``split.x`` without holding the images: ``shape``, ``len``, ``device``, ``dtype``; indexing
    (``[:n]``, ``[i]``, index lists / tensors) decodes only the images asked for."""

    dtype = torch.float32

    def __init__(self, split: ImageFolderSplit) -> None:
        self._split = split

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._split), *self._split.data_shape))

    @property
    def device(self) -> torch.device:
        return self._split.device

    @property
    def ndim(self) -> int:
        return 4

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return len(self._split)

    def to(self, device: torch.device | str, *args: Any, **kwargs: Any) -> LazyImages:
        return self._split.to(device).x

    def __getitem__(self, key: Any) -> Tensor:
        rest = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        n = len(self._split)
        if isinstance(key, (int, np.integer)) or (isinstance(key, Tensor) and key.dim() == 0):
            i = operator.index(key)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for a split of {n} items")
            image = self._split.decode([i % n])[0]
            return image[rest] if rest else image
        if isinstance(key, slice):
            rows = self._split.decode(range(*key.indices(n)))
        else:
            rows = self._split.decode(key)
        return rows[(slice(None), *rest)] if rest else rows

    def materialize(self) -> Tensor:
        """Every image of the split as one tensor (only for splits that fit in memory)."""
        return self[:]

    def __repr__(self) -> str:
        return f"LazyImages(shape={tuple(self.shape)}, device={self.device})"


class ImageFolderSplit(DataSplit, Dataset):
    """One split: a list of image files, decoded on demand. Same batch API as ``TensorSplit``
    (``batch``, ``batches``, ``data_shape``, ``to``, ``x``), and a ``Dataset`` for ``DataLoader``."""

    labels = None
    factors = None
    streaming = True
    """Read from storage per batch: the trainer reads the next iteration's batch while one computes."""

    def __init__(self, files: Sequence[str], source_index: Tensor, decoder: _Decoder, *, name: str,
                 device: torch.device | str = "cpu") -> None:
        self.files = tuple(files)
        self.source_index = source_index
        """Each item's position in the data set's sorted file list."""
        self.name = name
        self._decoder = decoder
        self._device = torch.device(device)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        d = self._decoder
        return (d.channels, d.image_size, d.image_size)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def x(self) -> LazyImages:
        return LazyImages(self)

    def _check(self, indices: Tensor | Sequence[int] | np.ndarray | range) -> list[int]:
        if isinstance(indices, range):
            idx = list(indices)
        else:
            array = indices.detach().cpu().numpy() if isinstance(indices, Tensor) else np.asarray(indices)
            idx = array.astype(np.int64).reshape(-1).tolist()
        n = len(self)
        if idx and (min(idx) < 0 or max(idx) >= n):
            raise IndexError(f"indices must lie in [0, {n}), got [{min(idx)}, {max(idx)}]")
        return idx

    def decode(self, indices: Tensor | Sequence[int] | np.ndarray | range) -> Tensor:
        """The images at ``indices`` as float32 ``[B, C, H, W]`` on the split's device."""
        idx = self._check(indices)
        x = self._decoder.decode([self.files[i] for i in idx])
        return x.to(self._device)

    def batch(self, indices: Tensor | Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        """The items at ``indices`` as one batch: ``x`` ``[B, C, H, W]`` and ``index`` ``[B]`` int64,
        decoded in parallel by the data set's worker processes."""
        idx = self._check(indices)
        return {"x": self.decode(idx), "index": torch.tensor(idx, dtype=torch.int64, device=self._device)}

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item ``i`` decoded in this process (DataLoader workers call this): ``x`` ``[C, H, W]``
        on the CPU and ``index``."""
        n = len(self)
        i = operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a split of {n} items")
        i %= n
        d = self._decoder
        x = _to_float(load_image(self.files[i], d.image_size, d.channels)[None])[0]
        return {"x": x, "index": i}

    def batches(self, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
                drop_last: bool = True) -> Iterator[dict[str, Tensor]]:
        """The batches of one epoch in :func:`~inferkit.data.base.batch_indices` order."""
        for idx in batch_indices(len(self), batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                                 drop_last=drop_last):
            yield self.batch(idx)

    def loader(self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
               drop_last: bool = True, num_workers: int | None = None, pin_memory: bool | None = None,
               **loader_options: Any) -> DataLoader:
        """A ``DataLoader`` over one epoch (same order as :meth:`batches`) whose ``num_workers``
        worker processes (default: the data set's) decode the images; ``pin_memory`` defaults to
        ``True`` when CUDA is available. Batches are on the CPU."""
        workers = self._decoder.num_workers if num_workers is None else as_int("num_workers", num_workers,
                                                                               minimum=0)
        pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        if workers and "multiprocessing_context" not in loader_options:
            loader_options["multiprocessing_context"] = _pool_context()
        return make_loader(self, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last,
                           num_workers=workers, pin_memory=pin, **loader_options)

    def to(self, device: torch.device | str) -> ImageFolderSplit:
        """The same split whose batches land on ``device`` (it shares the worker pool)."""
        return ImageFolderSplit(self.files, self.source_index, self._decoder, name=self.name, device=device)

    def __repr__(self) -> str:
        return f"ImageFolderSplit({self.name!r}, n={len(self)}, shape={self.data_shape}, streaming)"


class ImageFolderDataset(ImageData):
    """Images from a folder tree, streamed from disk; see the module docstring."""

    name = "image-folder"
    levels = 256  # 8-bit values, x = 2 v / 255 - 1

    def __init__(self, data_dir: str = "", image_size: int = 64, channels: int = 3, num_test: int = 0,
                 seed: int = 0, num_workers: int = 2, max_images: int = 0) -> None:
        image_size = as_int("image_size", image_size, minimum=1)
        if image_size > MAX_IMAGE_SIZE:
            raise UserError(f"option image_size must be at most {MAX_IMAGE_SIZE}, got {image_size}")
        channels = as_int("channels", channels)
        if channels not in (1, 3):
            raise UserError(f"option channels must be 3 (RGB) or 1 (grayscale), got {channels}")
        num_test = as_int("num_test", num_test, minimum=0)
        seed = as_int("seed", seed)
        num_workers = as_int("num_workers", num_workers, minimum=0)
        max_images = as_int("max_images", max_images, minimum=0)
        data_dir = os.fspath(data_dir) if data_dir is not None else ""
        if not str(data_dir).strip():
            raise UserError("the image-folder data set needs a folder of images: --data-dir DIR "
                            "(or --data-opt data_dir=DIR)")
        root = Path(data_dir).expanduser()
        if not root.exists():
            raise UserError(f"image folder {root} does not exist; check --data-dir")
        if not root.is_dir():
            raise UserError(f"{root} is not a folder; point --data-dir at a folder of images")
        files = find_images(root)
        if not files:
            raise UserError(f"no images found in {root} (searched recursively for "
                            f"{', '.join(EXTENSIONS)} files)")
        if max_images:
            files = files[:max_images]
        n = len(files)
        if n < 2:
            raise UserError(f"{root} holds {n} image, too few for a train and a test split; add images")
        if num_test == 0:
            num_test = max(1, min(AUTO_TEST_MAX, round(n * AUTO_TEST_FRACTION)))
        if num_test >= n:
            raise UserError(f"option num_test={num_test} leaves no training images out of {n}; "
                            f"pick num_test below {n}")
        rng = np.random.default_rng(np.random.SeedSequence([seed % 2**64, 0x1F01DE]))
        perm = rng.permutation(n)
        test_ids, train_ids = np.sort(perm[:num_test]), np.sort(perm[num_test:])
        self.data_dir = str(root)
        self.image_size, self.channels, self.num_workers, self.seed = image_size, channels, num_workers, seed
        self.files = tuple(files)
        self._decoder = _Decoder(image_size, channels, num_workers)
        train = ImageFolderSplit([files[i] for i in train_ids], torch.from_numpy(train_ids.astype(np.int64)),
                                 self._decoder, name="train")
        test = ImageFolderSplit([files[i] for i in test_ids], torch.from_numpy(test_ids.astype(np.int64)),
                                self._decoder, name="test")
        super().__init__(train, test)  # type: ignore[arg-type]

    def close(self) -> None:
        """Shut the decoding worker pool down (it also shuts down when the data set is collected)."""
        self._decoder.close()
