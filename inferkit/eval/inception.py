"""The Inception-v3 network of the FID reference code, for FID from a local weights file.

FID is defined with one particular network: TensorFlow's Inception-v3 of 2015-12-05, ported to
PyTorch by pytorch-fid as ``pt_inception-2015-12-05-6726825d.pth``. It differs from torchvision's
Inception-v3 in its pooling: the 3x3 average pools of the A, C and first E blocks do not count
padded zeros, and the last E block pools by maximum. torchvision cannot be installed beside
inferkit's torch build, so the network is defined here with the module names of the published
state dict (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.bias``),
so that file loads as it is. Nothing is downloaded: the user gives the file by path.

Features are the 2048-d global average pool after ``Mixed_7c``, for inputs resized (bilinear) to
299 x 299 and scaled to [-1, 1] (inferkit images already are); one channel is repeated to three.

The file is checked against its SHA-256 before it is read (:data:`WEIGHTS_SHA256`; the name's suffix
``6726825d`` is the digest's first eight hex digits, the torch.hub naming convention). FID compares
``N`` generated images with reference statistics (mean and covariance of the features) of the
*training* images, as the papers compute it (Heusel et al. 2017; papers report ``N = 40,000`` or
50,000); :func:`reference_statistics` caches those statistics per data set, split and count as
``.npz`` files read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inferkit.errors import UserError
from inferkit.eval.frechet import gaussian_statistics

FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008  # the TF graph's logits (1000 ImageNet classes + 8 unused)
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
"""SHA-256 of :data:`WEIGHTS_NAME` (the pytorch-fid release file)."""


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: ``relu(bn(conv(x)))``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that averages over the image pixels only (TensorFlow's 'SAME')."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (``Mixed_5b..5d``)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_same(x)),
        ], 1)


class ReductionB(nn.Module):
    """35x35 -> 17x17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (``Mixed_6a``)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``Mixed_6b..6e``)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_avg_pool_same(x))], 1)


class ReductionD(nn.Module):
    """17x17 -> 8x8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (``Mixed_7a``)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        seven = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            seven = layer(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven,
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches (``Mixed_7b``: average pool; ``Mixed_7c``: max pool,
    as in the TensorFlow graph FID is defined with)."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool_same(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as used by FID; :meth:`features` gives the 2048-d pool features."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, pool_features=32)
        self.Mixed_5c = MixedA(256, pool_features=64)
        self.Mixed_5d = MixedA(288, pool_features=64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, channels_7x7=128)
        self.Mixed_6c = MixedC(768, channels_7x7=160)
        self.Mixed_6d = MixedC(768, channels_7x7=160)
        self.Mixed_6e = MixedC(768, channels_7x7=192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, pool="avg")
        self.Mixed_7c = MixedE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # unused for FID; part of the published file

    @staticmethod
    def prepare(images: Tensor) -> Tensor:
        """``[N, C, H, W]`` in [-1, 1] (C = 1 or 3) -> ``[N, 3, 299, 299]`` in [-1, 1]."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise UserError(f"FID needs images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)

    def features(self, images: Tensor) -> Tensor:
        """2048-d average-pool features of images in [-1, 1]."""
        x = self.prepare(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_fid_inception(path: str | Path | None, device: torch.device | str = "cpu", *,
                       expected_sha256: str | None = WEIGHTS_SHA256) -> FIDInceptionV3:
    """The FID network with the weights in ``path`` (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``),
    in eval mode; the file must have the SHA-256 ``expected_sha256`` (``None``: any state dict of this
    layout, e.g. for tests)."""
    if path is None or not str(path).strip():
        raise UserError(f"FID needs the Inception weights: give --inception-weights PATH (the file {WEIGHTS_NAME}); "
                        "nothing is downloaded")
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--inception-weights {path}: no such file; give the path of {WEIGHTS_NAME} "
                        "(nothing is downloaded)")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256.lower():
            raise UserError(f"--inception-weights {path}: SHA-256 {actual[:16]}... is not {expected_sha256[:16]}... "
                            f"of {WEIGHTS_NAME}; give that file (nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"--inception-weights {path} cannot be read as a PyTorch state dict "
                        f"({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    network = FIDInceptionV3()
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise UserError(f"--inception-weights {path} does not hold the FID Inception-v3 weights ({first}); "
                        f"give {WEIGHTS_NAME}") from None
    return network.to(device).eval().requires_grad_(False)


@torch.no_grad()
def inception_features(network: FIDInceptionV3, images: Tensor, batch_size: int = 50) -> Tensor:
    """Features ``[N, 2048]`` (float64, on the CPU) of ``images`` in batches."""
    device = next(network.parameters()).device
    out = [network.features(images[i:i + batch_size].to(device)).double().cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def default_cache_folder() -> Path:
    """``$XDG_CACHE_HOME/inferkit/fid`` (``~/.cache/inferkit/fid`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "inferkit" / "fid"


def _fingerprint(name: str, split: str, images, count: int) -> str:
    """A short digest of what the statistics depend on: data set, split, its size, the count, the first 64
    images' values and the weights' SHA-256."""
    digest = hashlib.sha256(f"{name}|{split}|{len(images)}|{count}|{WEIGHTS_SHA256}".encode())
    digest.update(np.ascontiguousarray(images[:64].detach().cpu().double().numpy()).tobytes())
    return digest.hexdigest()[:16]


def reference_statistics(network: FIDInceptionV3, images, *, name: str, split: str, count: int = 0,
                         cache: str | Path | None = None, batch_size: int = 50) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mu, Sigma, n)`` of the features of the first ``count`` rows of ``images`` (0: all), read from
    or written to ``cache`` (default :func:`default_cache_folder`) as
    ``{name}-{split}-{n}-{fingerprint}.npz`` (numpy, ``allow_pickle=False``)."""
    n = len(images) if count == 0 else min(count, len(images))
    folder = Path(cache).expanduser() if cache else default_cache_folder()
    path = folder / f"{name}-{split}-{n}-{_fingerprint(name, split, images, n)}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return stored["mu"], stored["sigma"], n
    features = torch.cat([inception_features(network, images[i:min(i + 1000, n)], batch_size)
                          for i in range(0, n, 1000)])
    mu, sigma = gaussian_statistics(features)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(partial, mu=mu, sigma=sigma)
        partial.replace(path)
    except OSError as exc:
        raise UserError(f"--fid-cache {folder}: cannot write the reference statistics ({exc.strerror})") from None
    return mu, sigma, n
