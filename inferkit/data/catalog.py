"""Where inferkit keeps the files it can fetch, and how a data set finds them.

``inferkit data fetch NAME`` writes the files of ``NAME`` into a folder of their own,
``ROOT/NAME``, where ``ROOT`` is, in order: ``--root DIR``; ``$INFERKIT_DATA``; the user cache
folder ``$XDG_CACHE_HOME/inferkit`` (``~/.cache/inferkit`` when ``XDG_CACHE_HOME`` is unset).
A data set given no ``--data-dir`` asks :func:`default_data_dir`, which looks in
``$INFERKIT_DATA/NAME`` and then in the cache; nothing is ever downloaded on the way.

The published checksums are data, each with its source beside it; :data:`CHECKSUMS` is a
module-level table, so a test can serve files of its own and put their checksums in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from inferkit.errors import UserError

__all__ = ["CHECKSUMS", "DATA_ENV", "MIRROR_ENV", "SOURCES", "Checksum", "Source", "cache_root", "data_root",
           "default_data_dir", "source"]

DATA_ENV = "INFERKIT_DATA"
"""The environment variable naming the folder that holds one sub-folder per data set."""
MIRROR_ENV = "INFERKIT_MIRROR"
"""The environment variable naming a base URL that replaces every source's own (``--mirror`` wins)."""


@dataclass(frozen=True)
class Checksum:
    """A file's published digest: ``algorithm`` is a :mod:`hashlib` name (``md5``, ``sha256``)."""

    algorithm: str
    digest: str


@dataclass(frozen=True)
class Source:
    """A fetchable data set: its files (name -> approximate size in bytes, for the progress bar
    and ``inferkit data list``) under ``base_url``."""

    name: str
    title: str
    base_url: str
    files: dict[str, int]


SOURCES: dict[str, Source] = {
    # The MNIST mirror torchvision's datasets/mnist.py lists beside yann.lecun.com/exdb/mnist/.
    "mnist": Source("mnist", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": 9_912_422, "train-labels-idx1-ubyte.gz": 28_881,
        "t10k-images-idx3-ubyte.gz": 1_648_877, "t10k-labels-idx1-ubyte.gz": 4_542}),
    # Larochelle & Murray's fixed binarization (the .amat text files of 0 / 1, one image a line).
    "binarized-mnist": Source("binarized-mnist", "binarized MNIST",
                              "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/", {
                                  "binarized_mnist_train.amat": 78_400_000,
                                  "binarized_mnist_valid.amat": 15_680_000,
                                  "binarized_mnist_test.amat": 15_680_000}),
    # The cropped-digits format (format 2) of SVHN.
    "svhn": Source("svhn", "SVHN", "http://ufldl.stanford.edu/housenumbers/", {
        "train_32x32.mat": 182_040_794, "test_32x32.mat": 64_275_384}),
    # TensorFlow's Inception-v3 of 2015-12-05 as pytorch-fid publishes it (inferkit.eval.inception).
    "inception": Source("inception", "the FID Inception weights file",
                        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/", {
                            "pt_inception-2015-12-05-6726825d.pth": 95_628_359}),
}

CHECKSUMS: dict[str, dict[str, Checksum]] = {
    # MD5s of torchvision's torchvision/datasets/mnist.py (MNIST.resources).
    "mnist": {
        "train-images-idx3-ubyte.gz": Checksum("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte.gz": Checksum("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte.gz": Checksum("md5", "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte.gz": Checksum("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
    },
    # SHA-256s of TensorFlow Datasets' tensorflow_datasets/url_checksums/binarized_mnist.txt.
    "binarized-mnist": {
        "binarized_mnist_train.amat": Checksum(
            "sha256", "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
        "binarized_mnist_valid.amat": Checksum(
            "sha256", "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
        "binarized_mnist_test.amat": Checksum(
            "sha256", "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
    },
    # MD5s of torchvision's torchvision/datasets/svhn.py (SVHN.split_list).
    "svhn": {
        "train_32x32.mat": Checksum("md5", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        "test_32x32.mat": Checksum("md5", "eb5a983be6a315427106f1b164d9cef3"),
    },
    # The SHA-256 genforce's inception model table (_MODEL_URL_SHA256['tf_inception_v3'], e.g. in
    # snap-research/discoscene models/inception_model.py) lists for pytorch-fid's release file; its
    # first eight hex digits are the 6726825d of the file name (torch.hub's naming rule).
    "inception": {
        "pt_inception-2015-12-05-6726825d.pth": Checksum(
            "sha256", "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"),
    },
}


def source(name: str) -> Source:
    """The :class:`Source` called ``name``; an unknown name is a :class:`UserError` listing them."""
    if name not in SOURCES:
        raise UserError(f"unknown data set {name!r} to fetch; the names are {', '.join(SOURCES)}")
    return SOURCES[name]


def cache_root() -> Path:
    """The user cache folder of inferkit: ``$XDG_CACHE_HOME/inferkit``, else ``~/.cache/inferkit``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "inferkit"


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where ``inferkit data fetch`` writes: ``root`` if given, else ``$INFERKIT_DATA``, else
    :func:`cache_root`."""
    if root is not None and str(root).strip():
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else cache_root()


def search_folders(name: str) -> list[Path]:
    """The folders :func:`default_data_dir` looks in for ``name``, in order."""
    env = os.environ.get(DATA_ENV, "").strip()
    folders = [Path(env).expanduser() / name] if env else []
    cached = cache_root() / name
    return folders + ([cached] if cached not in folders else [])


def holds_files(folder: Path, name: str) -> bool:
    """True when ``folder`` is a folder holding one of ``name``'s files (a ``.gz`` file also counts
    unpacked); for a data set inferkit does not fetch, when ``folder`` is a folder."""
    if not folder.is_dir():
        return False
    if name not in SOURCES:
        return True
    names = SOURCES[name].files
    return any((folder / f).is_file() or (folder / f.removesuffix(".gz")).is_file() for f in names)


def default_data_dir(name: str) -> str:
    """The folder of data set ``name`` when no ``--data-dir`` is given: ``$INFERKIT_DATA/NAME`` if it
    holds the data set's files, else the cache's ``NAME`` folder; neither is a :class:`UserError`
    naming the fetch command."""
    folders = search_folders(name)
    for folder in folders:
        if holds_files(folder, name):
            return str(folder.resolve())
    title = SOURCES[name].title if name in SOURCES else name
    looked = " and ".join(str(folder) for folder in folders)
    how = f"run: inferkit data fetch {name}" if name in SOURCES else f"set {DATA_ENV}"
    raise UserError(f"{title[0].upper() + title[1:]} is not here; {how} (looked in {looked}), "
                    "or give --data-dir DIR")
