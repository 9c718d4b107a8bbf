"""``binarized-mnist``: the static Bernoulli binarisation (right mean, independent pixels, fixed by the
seed, the same image for the same row however the data set is cut), the Larochelle-Murray ``.amat``
reader and its one-line errors, the split, and ``rbm-prior``'s refusal of grey levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferkit import UserError
from inferkit.data.binarized_mnist import AMAT_FILES, BinarizedMNISTDataset, read_amat, static_bernoulli
from inferkit.models.rbm_prior import RBMPrior

FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LEVELS = (0, 1, 37, 128, 200, 254, 255)


def write_idx(path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def idx_folder(folder, n_train: int = 12, n_test: int = 6, seed: int = 0):
    """Synthetic MNIST IDX files (random grey levels) in ``folder``; returns the train and test images."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    write_idx(folder / "train-images-idx3-ubyte", train, 0x803)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(n_train) % 10, 0x801)
    write_idx(folder / "t10k-images-idx3-ubyte", test, 0x803)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, 0x801)
    return train, test


def amat_line(bits) -> str:
    return " ".join(str(int(b)) for b in bits)


# -- the draw -------------------------------------------------------------------------------------------
@FAST
@given(seed=st.integers(0, 2**32 - 1))
def test_static_bernoulli_has_mean_u_over_255_and_independent_pixels(seed):
    n = 100_000
    grey = np.repeat(np.array(LEVELS, dtype=np.uint8)[None, :], n, 0)  # column j: n pixels of level LEVELS[j]
    bits = static_bernoulli(grey, seed, "train-images-idx3-ubyte")
    assert bits.dtype == np.uint8 and set(np.unique(bits)) <= {0, 1}
    for j, level in enumerate(LEVELS):
        p = level / 255
        mean = bits[:, j].mean()
        if level in (0, 255):
            assert mean == p  # exactly: v < 0 never, v < 255 always
        else:  # 6 standard errors: fails with probability about 2e-9 per level
            assert abs(mean - p) < 6 * math.sqrt(p * (1 - p) / n), (level, mean)
    p = LEVELS[3] * LEVELS[4] / 255**2  # two pixels of one image are independent: P(both) = p_3 p_4
    both = (bits[:, 3] & bits[:, 4]).mean()
    assert abs(both - p) < 6 * math.sqrt(p * (1 - p) / n)


def test_static_bernoulli_is_fixed_by_seed_and_source():
    grey = np.random.default_rng(1).integers(0, 256, (50, 784), dtype=np.uint8)
    first = static_bernoulli(grey, 7, "train-images-idx3-ubyte")
    assert np.array_equal(first, static_bernoulli(grey, 7, "train-images-idx3-ubyte"))
    assert not np.array_equal(first, static_bernoulli(grey, 8, "train-images-idx3-ubyte"))
    assert not np.array_equal(first, static_bernoulli(grey, 7, "t10k-images-idx3-ubyte"))


# -- the data set on IDX files ----------------------------------------------------------------------------
def test_idx_binarisation_is_static_and_split_50k_10k_10k_style(tmp_path):
    train_grey, test_grey = idx_folder(tmp_path, n_train=12, n_test=6)
    data = BinarizedMNISTDataset(str(tmp_path))
    assert data.source == "idx" and (len(data.train), len(data.valid), len(data.test)) == (10, 2, 6)
    assert set(data.train.x.unique().tolist()) == {-1.0, 1.0} and data.data_shape == (1, 28, 28)
    assert data.train.source_index.tolist() == list(range(10))
    assert data.valid.source_index.tolist() == [10, 11]
    assert data.num_classes == 10 and data.train.labels.tolist() == [i % 10 for i in range(10)]
    # what the draw is: row r of a file is 1[v_r < u_r] for that file's v
    whole = static_bernoulli(train_grey[:, None], 0, "train-images-idx3-ubyte")
    torch.testing.assert_close(data.train.x, torch.from_numpy(whole[:10]).float() * 2 - 1)
    expected_test = static_bernoulli(test_grey[:, None], 0, "t10k-images-idx3-ubyte")
    torch.testing.assert_close(data.test.x, torch.from_numpy(expected_test).float() * 2 - 1)
    # the same binary image for the same index: every build, any cut, every batch
    again = BinarizedMNISTDataset(str(tmp_path))
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.x, data.test.x)
    cut = BinarizedMNISTDataset(str(tmp_path), num_train=3, num_test=2)
    assert torch.equal(cut.train.x, data.train.x[:3]) and torch.equal(cut.test.x, data.test.x[:2])
    idx = torch.tensor([4, 1, 4])
    assert torch.equal(data.train.batch(idx)["x"], data.train.x[idx])
    other = BinarizedMNISTDataset(str(tmp_path), binarize_seed=1)
    assert not torch.equal(other.train.x, data.train.x)
    both = BinarizedMNISTDataset(str(tmp_path), train_on="train+valid")
    assert len(both.train) == 12 and both.valid is None
    assert torch.equal(both.train.x, torch.cat([data.train.x, data.valid.x]))


def test_threshold_is_u_over_255_above_one_half(tmp_path):
    train_grey, _ = idx_folder(tmp_path)
    data = BinarizedMNISTDataset(str(tmp_path), binarize="threshold")
    expected = torch.from_numpy((train_grey[:10] >= 128).astype(np.float32))[:, None] * 2 - 1
    assert torch.equal(data.train.x, expected)


def test_only_the_t10k_files_binarise_the_file_in_row_order(tmp_path):
    _, test_grey = idx_folder(tmp_path, n_train=12, n_test=20)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    data = BinarizedMNISTDataset(str(tmp_path))
    assert data.valid is None and len(data.train) + len(data.test) == 20
    bits = static_bernoulli(test_grey[:, None], 0, "t10k-images-idx3-ubyte")
    whole = torch.from_numpy(bits).float() * 2 - 1
    assert torch.equal(data.train.x, whole[data.train.source_index])
    assert torch.equal(data.test.x, whole[data.test.source_index])


# -- the Larochelle-Murray files ------------------------------------------------------------------------
def test_amat_files_are_read_row_major_with_their_split(tmp_path):
    rng = np.random.default_rng(3)
    sizes = {"train": 5, "valid": 2, "test": 3}
    bits = {key: rng.integers(0, 2, (n, 784)) for key, n in sizes.items()}
    for key, name in AMAT_FILES.items():
        (tmp_path / name).write_text("\n".join(amat_line(row) for row in bits[key]) + "\n\n")
    data = BinarizedMNISTDataset(str(tmp_path))
    assert data.source == "amat" and data.num_classes is None and data.train.labels is None
    assert (len(data.train), len(data.valid), len(data.test)) == (5, 2, 3)
    expected = torch.from_numpy(bits["train"].reshape(5, 1, 28, 28)).float() * 2 - 1
    assert torch.equal(data.train.x, expected)  # pixel d of a line is (row d // 28, column d % 28)
    assert torch.equal(BinarizedMNISTDataset(str(tmp_path), train_on="train+valid").train.x[5:], data.valid.x)
    np.testing.assert_array_equal(read_amat(tmp_path / AMAT_FILES["test"]), bits["test"])


@pytest.mark.parametrize("line, fragment", [
    ("0 1 " * 391 + "0", "783 values"),
    ("0 1 " * 392 + "1", "785 values"),
    ("0 1 " * 391 + "0 2", "value '2' is not 0 or 1"),
    ("0.0 " + "1 " * 783, "value '0.0' is not 0 or 1"),
    ("", "0 values")])
def test_a_malformed_amat_line_is_a_one_line_error_naming_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "binarized_mnist_valid.amat"
    path.write_text(amat_line([0] * 784) + "\n" + line + "\n" + amat_line([1] * 784) + "\n")
    with pytest.raises(UserError) as info:
        read_amat(path)
    message = str(info.value)
    assert "\n" not in message and f"{path}, line 2:" in message and fragment in message, message


@pytest.mark.parametrize("case, fragment", [
    ("some-amat", "lacks binarized_mnist_test.amat"),
    ("threshold-without-idx", "neither"),
    ("empty-dir-name", "run: inferkit data fetch mnist"),
    ("not-a-folder", "is not a folder")])
def test_data_set_mistakes_are_one_line_errors(tmp_path, no_fetched_data, case, fragment):
    for key in ("train", "valid"):
        (tmp_path / AMAT_FILES[key]).write_text(amat_line([0] * 784) + "\n")
    options = {"data_dir": str(tmp_path)}
    if case == "threshold-without-idx":
        (tmp_path / AMAT_FILES["test"]).write_text(amat_line([0] * 784) + "\n")
        options["binarize"] = "threshold"
    elif case == "empty-dir-name":
        options["data_dir"] = " "
    elif case == "not-a-folder":
        options["data_dir"] = str(tmp_path / "nowhere")
    with pytest.raises(UserError) as info:
        BinarizedMNISTDataset(**options)
    assert "\n" not in str(info.value) and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("options, fragment", [({"binarize": "dynamic"}, "binarize"),
                                               ({"train_on": "all"}, "train_on")])
def test_bad_data_options_are_user_errors(tmp_path, options, fragment):
    with pytest.raises(UserError, match=fragment):
        BinarizedMNISTDataset(str(tmp_path), **options)


def test_real_mnist_binarises_with_the_grey_levels_mean(mnist_dir):
    from inferkit.data.mnist import MNISTDataset

    grey = MNISTDataset(mnist_dir)
    data = BinarizedMNISTDataset(mnist_dir)
    assert data.source in ("idx", "amat")
    if data.source == "idx":  # mean over all pixels of all training images: 6e6 draws, 6 standard errors
        p, b = (grey.train.x.double() + 1) / 2, (data.train.x.double() + 1) / 2
        assert torch.equal(data.train.labels, grey.train.labels)
        assert abs(float(b.mean() - p.mean())) < 6 * math.sqrt(0.25 / b.numel())


# -- the model reads binary data ------------------------------------------------------------------------
def test_rbm_prior_refuses_grey_levels_unless_told_to_threshold():
    model = RBMPrior(num_latents=4, num_hidden=3, decoder_hidden=(8,), data_shape=(4,))
    z = torch.zeros(2, 4)
    grey = torch.tensor([[-1.0, 0.3, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]])
    with pytest.raises(UserError, match="binarized-mnist") as info:
        model.log_likelihood(grey, z)
    assert "\n" not in str(info.value)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])  # the grey pixel is hidden
    assert model.log_likelihood(grey, z, mask).shape == (2,)
    binary = torch.where(grey > 0, 1.0, -1.0)
    threshold = RBMPrior(num_latents=4, num_hidden=3, decoder_hidden=(8,), data_shape=(4,),
                         binarize="threshold")
    threshold.load_state_dict(model.state_dict())
    torch.testing.assert_close(threshold.log_likelihood(grey, z), model.log_likelihood(binary, z))
    with pytest.raises(UserError, match="binarize must be one of"):
        RBMPrior(binarize="dynamic")
