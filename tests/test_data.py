"""Tests for inferkit.data: shapes, MNIST IDX loading, batching and resumable order."""

from __future__ import annotations

import gzip
import hashlib
import struct
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferkit.data import (
    ImageData,
    MNISTDataset,
    ShapesDataset,
    TensorSplit,
    batch_indices,
    batches_per_epoch,
    epoch_permutation,
    make_loader,
    read_idx,
    render_shapes,
    step_indices,
)
from inferkit.data.mnist import IMAGE_MAGIC, LABEL_MAGIC
from inferkit.data.shapes import BACKGROUND_COLOURS, FOREGROUND_COLOURS
from inferkit.errors import UserError


@pytest.fixture(scope="module")
def small_shapes() -> ShapesDataset:
    return ShapesDataset(num_train=300, num_test=60, image_size=16, seed=3)


# ----------------------------------------------------------------------------- shapes


def test_shapes_same_seed_identical_tensors():
    """Same seed gives bit-identical images, factors and labels."""
    a = ShapesDataset(num_train=200, num_test=40, image_size=32, seed=7)
    b = ShapesDataset(num_train=200, num_test=40, image_size=32, seed=7)
    for sa, sb in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(sa.x, sb.x)
        assert torch.equal(sa.factors, sb.factors)
        assert torch.equal(sa.labels, sb.labels)


def test_shapes_different_seeds_differ():
    """Different seeds give different data."""
    a = ShapesDataset(num_train=100, num_test=20, image_size=16, seed=0)
    b = ShapesDataset(num_train=100, num_test=20, image_size=16, seed=1)
    assert not torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.train.factors, b.train.factors)


@pytest.mark.parametrize("size", [16, 28, 32, 64])
def test_shapes_shape_and_range(size):
    """Images are float32 [3, S, S] in [-1, 1] and use a good part of that range."""
    d = ShapesDataset(num_train=64, num_test=16, image_size=size, seed=0)
    assert d.data_shape == (3, size, size)
    assert d.name == "shapes"
    for split, n in ((d.train, 64), (d.test, 16)):
        assert split.x.shape == (n, 3, size, size)
        assert split.x.dtype == torch.float32
        assert split.x.min() >= -1.0 and split.x.max() <= 1.0
        assert torch.isfinite(split.x).all()
    assert d.train.x.max() > 0.5 and d.train.x.min() < -0.5


def test_shapes_default_options():
    """The defaults give 4096 / 512 images of 16x16 (sized for a CPU run)."""
    d = ShapesDataset()
    assert len(d.train) == 4096 and len(d.test) == 512
    assert d.data_shape == (3, 16, 16)


def test_shapes_generation_is_fast():
    """5,000 images of 32x32 take well under 2 s of CPU time (vectorised rendering)."""
    start = time.process_time()
    d = ShapesDataset(num_train=4500, num_test=500, image_size=32, seed=11)
    assert time.process_time() - start < 2.0
    assert len(d.train) + len(d.test) == 5000


def test_shapes_factors(small_shapes):
    """factors are [N, F] level indices within their sizes; label is the shape factor."""
    d = small_shapes
    assert d.factor_names == ("background", "shape", "foreground", "scale", "pos_x", "pos_y")
    assert len(d.factor_sizes) == len(d.factor_names)
    for split in (d.train, d.test):
        f = split.factors
        assert f.shape == (len(split), len(d.factor_names))
        assert f.dtype == torch.int64
        assert (f >= 0).all() and (f < torch.tensor(d.factor_sizes)).all()
        assert torch.equal(split.labels, f[:, 1])
    # every level of the discrete factors appears in a few hundred draws
    for j in range(3):
        assert set(d.train.factors[:, j].tolist()) == set(range(d.factor_sizes[j]))
    assert d.num_classes == 4


def test_shapes_images_follow_factors(small_shapes):
    """Re-rendering the factors reproduces x; centre pixel is foreground, corner background."""
    d = small_shapes
    assert torch.equal(d.render(d.train.factors), d.train.x)
    f = torch.tensor([[b, s, c, 5, 7, 7] for b in range(4) for s in range(4) for c in range(6)])
    x = render_shapes(f, 32)
    bg = torch.from_numpy(BACKGROUND_COLOURS)[f[:, 0]] * 2 - 1
    fg = torch.from_numpy(FOREGROUND_COLOURS)[f[:, 2]] * 2 - 1
    torch.testing.assert_close(x[:, :, 0, 0], bg)
    torch.testing.assert_close(x[:, :, 15, 15], fg)
    # moving pos_x moves the shape
    moved = render_shapes(torch.tensor([[0, 1, 0, 0, 0, 7], [0, 1, 0, 0, 15, 7]]), 32)
    assert moved[0, :, 15, 8].sub(fg[0]).abs().max() < 1e-6
    assert moved[1, :, 15, 8].sub(bg[0]).abs().max() < 1e-6


@pytest.mark.parametrize("size,seed", [(16, 0), (32, 5)])
def test_shapes_train_test_disjoint(size, seed):
    """No factor combination and no image appears in both train and test."""
    d = ShapesDataset(num_train=2000, num_test=500, image_size=size, seed=seed)
    train_f = {tuple(r) for r in d.train.factors.tolist()}
    test_f = {tuple(r) for r in d.test.factors.tolist()}
    assert not train_f & test_f
    assert len(train_f) == len(d.train) and len(test_f) == len(d.test)

    def digests(x):
        return {hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x}

    train_h, test_h = digests(d.train.x), digests(d.test.x)
    assert not train_h & test_h
    assert len(train_h) == len(d.train)  # distinct combinations render to distinct images


def test_shapes_bad_options_raise_user_error():
    """Bad options end in UserError that names the option."""
    with pytest.raises(UserError, match="image_size"):
        ShapesDataset(image_size=4)
    with pytest.raises(UserError, match="num_train"):
        ShapesDataset(num_train=0)
    with pytest.raises(UserError, match="num_test"):
        ShapesDataset(num_test="many")
    with pytest.raises(UserError, match="lower num_train"):
        ShapesDataset(num_train=10**6, image_size=16)
    d = ShapesDataset(num_train="10", num_test="5", image_size="16", seed="2")  # CLI strings
    assert len(d.train) == 10 and d.data_shape == (3, 16, 16)


def test_entry_points_registered():
    """The inferkit.datasets entry points resolve to the data set classes."""
    eps = {ep.name: ep for ep in entry_points(group="inferkit.datasets")}
    if "shapes" not in eps:
        pytest.skip("inferkit is not installed; entry points unavailable")
    assert eps["shapes"].load() is ShapesDataset
    assert eps["mnist"].load() is MNISTDataset


# ----------------------------------------------------------------------------- batching


def test_items_and_batches_carry_indices(small_shapes):
    """split[i] and split.batch(idx) carry the dataset index and agree with each other."""
    split = small_shapes.train
    item = split[17]
    assert item["index"] == 17 and isinstance(item["index"], int)
    assert torch.equal(item["x"], split.x[17]) and item["label"] == int(split.labels[17])
    assert split[-1]["index"] == len(split) - 1
    idx = torch.tensor([5, 0, 299, 17])
    batch = split.batch(idx)
    assert torch.equal(batch["index"], idx)
    for k, i in enumerate(idx.tolist()):
        assert torch.equal(batch["x"][k], split[i]["x"])
        assert torch.equal(batch["factors"][k], split[i]["factors"])
        assert int(batch["label"][k]) == split[i]["label"]
    with pytest.raises(IndexError):
        split.batch([len(split)])
    with pytest.raises(IndexError):
        split[len(split)]


def test_loader_batches_carry_indices(small_shapes):
    """Default-collated loader batches carry index; their rows are the indexed items."""
    split = small_shapes.train
    seen = []
    for batch in make_loader(split, 32, seed=1, epoch=2):
        assert batch["x"].shape == (32, 3, 16, 16)
        assert batch["index"].dtype == torch.int64
        assert torch.equal(batch["x"], split.x[batch["index"]])
        assert torch.equal(batch["label"], split.labels[batch["index"]])
        seen.append(batch["index"])
    expected = batch_indices(len(split), 32, seed=1, epoch=2)
    assert len(seen) == len(expected) == len(split) // 32
    for a, b in zip(seen, expected):
        assert torch.equal(a, b)
    fast = list(split.batches(32, seed=1, epoch=2))
    assert all(torch.equal(f["index"], s) for f, s in zip(fast, seen))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 500),
    seed=st.integers(-(2**40), 2**40),
    epoch=st.integers(0, 10**6),
)
def test_epoch_permutation_deterministic_and_complete(n, seed, epoch):
    """The epoch order is a permutation fixed by (seed, epoch), untouched by global RNG."""
    a = epoch_permutation(n, seed=seed, epoch=epoch)
    torch.manual_seed(seed % 1000)
    np.random.seed(epoch % 1000)
    b = epoch_permutation(n, seed=seed, epoch=epoch)
    assert torch.equal(a, b)
    assert a.dtype == torch.int64
    assert torch.equal(a.sort().values, torch.arange(n))


def test_epoch_permutation_varies_with_seed_and_epoch():
    """Different epochs or seeds give different orders."""
    base = epoch_permutation(1000, seed=0, epoch=0)
    assert not torch.equal(base, epoch_permutation(1000, seed=0, epoch=1))
    assert not torch.equal(base, epoch_permutation(1000, seed=1, epoch=0))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    batch_size=st.integers(1, 64),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 50),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
)
def test_batch_indices_cover_each_index_once(n, batch_size, seed, epoch, drop_last, shuffle):
    """An epoch visits each index at most once (exactly once without drop_last)."""
    if drop_last and batch_size > n:
        with pytest.raises(UserError, match="batch size"):
            batch_indices(n, batch_size, seed=seed, epoch=epoch, drop_last=True)
        return
    batches = batch_indices(n, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last)
    assert len(batches) == batches_per_epoch(n, batch_size, drop_last=drop_last)
    flat = torch.cat(batches)
    assert len(set(flat.tolist())) == flat.numel()
    if drop_last:
        assert all(b.numel() == batch_size for b in batches)
        assert flat.numel() == n - n % batch_size
    else:
        assert sorted(flat.tolist()) == list(range(n))
    if not shuffle:
        assert flat.tolist() == list(range(flat.numel()))
    again = batch_indices(n, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(8, 200), batch_size=st.integers(1, 8), seed=st.integers(0, 1000))
def test_step_indices_match_epoch_batches(n, batch_size, seed):
    """Global iteration t picks the same batch as walking the epochs (exact resume)."""
    walked = [b for e in range(3) for b in batch_indices(n, batch_size, seed=seed, epoch=e)]
    for t in range(0, len(walked), max(1, len(walked) // 17)):
        assert torch.equal(step_indices(n, batch_size, seed=seed, step=t), walked[t])


def test_batch_size_mistakes_raise_user_error():
    """Zero or oversized batch sizes are user errors with a hint."""
    with pytest.raises(UserError, match="batch_size"):
        batch_indices(10, 0, seed=0, epoch=0)
    with pytest.raises(UserError, match="lower the batch size"):
        batch_indices(10, 11, seed=0, epoch=0)
    with pytest.raises(UserError, match="lower the batch size"):
        step_indices(10, 11, seed=0, step=0)


def test_split_and_data_helpers(small_shapes):
    """split() names the splits; to() keeps contents; bad split names are user errors."""
    d = small_shapes
    assert d.split("train") is d.train and d.split("test") is d.test
    with pytest.raises(UserError, match="'train' or 'test'"):
        d.split("valid")
    moved = d.to("cpu")
    assert isinstance(moved, ShapesDataset) and torch.equal(moved.train.x, d.train.x)
    assert "n=300" in repr(d.train)
    plain = ImageData(TensorSplit(torch.zeros(4, 1, 2, 2)), TensorSplit(torch.zeros(2, 1, 2, 2), name="test"))
    assert plain.factor_names is None and plain.data_shape == (1, 2, 2)
    assert "label" not in plain.train[0] and "factors" not in plain.train.batch([0, 1])


# ----------------------------------------------------------------------------- MNIST IDX


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (magic 0x0000_08_ndim, big-endian dims)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def known_images(n: int, size: int = 28) -> np.ndarray:
    """Images with known pixels: (0, 0) = 255, row 1 = the image index, (2, 3) = 128."""
    img = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        img[i, 0, 0] = 255
        img[i, 1, :] = i
        img[i, 2, 3] = 128
    return img


def write_mnist(
    root: Path, n_test: int = 10, n_train: int = 0, *, gz: bool = False
) -> tuple[np.ndarray, ...]:
    root.mkdir(parents=True, exist_ok=True)
    test_x, test_y = known_images(n_test), (np.arange(n_test) % 10).astype(np.uint8)
    write_idx(root / "t10k-images-idx3-ubyte", test_x, gz=gz)
    write_idx(root / "t10k-labels-idx1-ubyte", test_y, gz=gz)
    train_x = known_images(n_train)[:, ::-1].copy()
    train_y = ((np.arange(n_train) + 3) % 10).astype(np.uint8)
    if n_train:
        write_idx(root / "train-images-idx3-ubyte", train_x, gz=gz)
        write_idx(root / "train-labels-idx1-ubyte", train_y, gz=gz)
    return test_x, test_y, train_x, train_y


def scaled(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip_t10k_only(tmp_path, gz):
    """With only t10k files the 10 images split 8 / 2, pixels scale to [-1, 1], labels kept."""
    test_x, test_y, _, _ = write_mnist(tmp_path, n_test=10, gz=gz)
    d = MNISTDataset(str(tmp_path), split_seed=4)
    assert (len(d.train), len(d.test)) == (8, 2)
    assert d.data_shape == (1, 28, 28) and d.name == "mnist" and d.num_classes == 10
    src = torch.cat([d.train.source_index, d.test.source_index])
    assert sorted(src.tolist()) == list(range(10))
    for split in (d.train, d.test):
        ids = split.source_index.numpy()
        torch.testing.assert_close(split.x, scaled(test_x[ids]), atol=1e-6, rtol=0)
        assert split.labels.tolist() == test_y[ids].tolist()
        assert split.x[:, 0, 0, 0].eq(1.0).all() and split.x[:, 0, 5, 5].eq(-1.0).all()
    again = MNISTDataset(str(tmp_path), split_seed=4)
    assert torch.equal(again.train.source_index, d.train.source_index)


def test_mnist_full_files_and_truncation(tmp_path):
    """With train files too, train comes from them; num_train / num_test truncate."""
    test_x, test_y, train_x, train_y = write_mnist(tmp_path, n_test=6, n_train=9, gz=True)
    d = MNISTDataset(tmp_path, num_train=5, num_test=4)
    assert (len(d.train), len(d.test)) == (5, 4)
    torch.testing.assert_close(d.train.x, scaled(train_x[:5]), atol=1e-6, rtol=0)
    torch.testing.assert_close(d.test.x, scaled(test_x[:4]), atol=1e-6, rtol=0)
    assert d.train.labels.tolist() == train_y[:5].tolist()
    assert d.test.labels.tolist() == test_y[:4].tolist()
    assert d.train.batch([1, 3])["label"].tolist() == [train_y[1], train_y[3]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)),
    gz=st.booleans(),
    data=st.data(),
)
def test_read_idx_round_trip(tmp_path, shape, gz, data):
    """Any uint8 array written as IDX reads back identically (plain and gzip)."""
    values = data.draw(
        st.lists(st.integers(0, 255), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))
    )
    array = np.array(values, dtype=np.uint8).reshape(shape)
    path = write_idx(tmp_path / f"prop-{'gz' if gz else 'raw'}-idx3-ubyte", array, gz=gz)
    assert np.array_equal(read_idx(path, IMAGE_MAGIC), array)


def test_mnist_truncated_file(tmp_path):
    """A truncated IDX file is reported by name as corrupt/truncated, to re-download."""
    write_mnist(tmp_path, n_test=10)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError) as err:
        MNISTDataset(str(tmp_path))
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte" in msg and "truncated" in msg and "re-download" in msg
    assert "\n" not in msg
    path.write_bytes(b"\x00\x00")
    with pytest.raises(UserError, match="truncated.*re-download"):
        MNISTDataset(str(tmp_path))


def test_mnist_trailing_bytes(tmp_path):
    """Extra bytes beyond the header's size are reported as corrupt."""
    write_mnist(tmp_path, n_test=10)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x01\x02")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.*corrupt.*re-download"):
        MNISTDataset(str(tmp_path))


def test_mnist_wrong_magic(tmp_path):
    """Swapped files (label magic where image magic is due) fail on the magic number."""
    write_mnist(tmp_path, n_test=10)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(idx_bytes(np.zeros(10, dtype=np.uint8)))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.*magic number 0x00000801.*re-download"):
        MNISTDataset(str(tmp_path))
    with pytest.raises(UserError, match="magic"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte", IMAGE_MAGIC)
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte", LABEL_MAGIC).shape == (10,)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_mnist_corrupt_gzip(tmp_path, damage):
    """A damaged .gz file is reported by name as corrupt, to re-download."""
    write_mnist(tmp_path, n_test=10, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        raw = bytearray(b"this is not gzip data at all")
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0xFF
        raw[-6] ^= 0xFF  # the stored CRC
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as err:
        MNISTDataset(str(tmp_path))
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "corrupt" in msg and "re-download" in msg


def test_mnist_label_count_mismatch(tmp_path):
    """Images and labels of different lengths are a user error."""
    write_mnist(tmp_path, n_test=10)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(9, dtype=np.uint8), gz=False)
    with pytest.raises(UserError, match="do not match"):
        MNISTDataset(str(tmp_path))


def test_mnist_missing_dir_and_files(tmp_path, no_fetched_data):
    """No --data-dir and nothing fetched names the fetch command; a missing folder, or missing files,
    name --data-dir and the files."""
    with pytest.raises(UserError, match="MNIST is not here; run: inferkit data fetch mnist.*--data-dir"):
        MNISTDataset()
    with pytest.raises(UserError, match="--data-dir.*not a folder.*train-images-idx3-ubyte"):
        MNISTDataset(str(tmp_path / "nowhere"))
    with pytest.raises(UserError) as err:
        MNISTDataset(str(tmp_path))
    msg = str(err.value)
    assert "--data-dir" in msg and "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    write_mnist(tmp_path, n_test=10)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="lacks t10k-labels-idx1-ubyte"):
        MNISTDataset(str(tmp_path))
    write_mnist(tmp_path, n_test=10)
    write_idx(tmp_path / "train-images-idx3-ubyte", known_images(3), gz=False)
    with pytest.raises(UserError, match="lacks train-labels-idx1-ubyte"):
        MNISTDataset(str(tmp_path))


def test_mnist_bad_options(tmp_path):
    """Negative sizes are user errors naming the option."""
    write_mnist(tmp_path, n_test=10)
    with pytest.raises(UserError, match="num_train"):
        MNISTDataset(str(tmp_path), num_train=-1)


def test_real_mnist_test_split(mnist_dir):
    """The real t10k files load as 8000 / 2000 disjoint images, deterministic by split_seed."""
    real = Path(mnist_dir)
    if not (real / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {real}")
    d = MNISTDataset(str(real))
    assert (len(d.train), len(d.test)) == (8000, 2000)
    assert d.data_shape == (1, 28, 28)
    assert d.train.x.min() == -1.0 and d.train.x.max() == 1.0
    assert set(d.train.labels.tolist()) == set(range(10))
    train_ids, test_ids = set(d.train.source_index.tolist()), set(d.test.source_index.tolist())
    assert not train_ids & test_ids and len(train_ids | test_ids) == 10000
    same = MNISTDataset(str(real))
    assert torch.equal(same.train.x, d.train.x)
    other = MNISTDataset(str(real), split_seed=1, num_train=100, num_test=50)
    assert (len(other.train), len(other.test)) == (100, 50)
    assert not torch.equal(other.train.source_index, d.train.source_index[:100])
    batch = d.train.batch(batch_indices(len(d.train), 64, seed=0, epoch=0)[0])
    assert batch["x"].shape == (64, 1, 28, 28) and batch["label"].shape == (64,)
