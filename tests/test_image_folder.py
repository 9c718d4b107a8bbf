"""Tests for the streaming ``image-folder`` data set: listing, splits, decoding, workers, errors, CLI."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inferkit.cli import main
from inferkit.data.image_folder import ImageFolderDataset, _Decoder, load_image
from inferkit.errors import UserError

# (relative path, width, height): PNG and JPEG, several sizes and aspect ratios, nested folders.
TREE = [
    ("a/wide.png", 48, 20), ("a/tall.png", 18, 40), ("a/square.png", 32, 32), ("a/b/tiny.png", 5, 9),
    ("a/b/big.jpg", 90, 60), ("c/one.jpeg", 25, 31), ("c/TWO.JPG", 64, 24), ("c/d/e/three.jpg", 40, 41),
    ("root.png", 33, 17), ("root2.jpg", 20, 50), ("zz.PNG", 12, 12), ("c/four.png", 70, 35),
]
IGNORED = ["notes.txt", ".hidden.png", "a/image.gif", ".cache/x.png"]


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=90)
    else:
        image.save(path, format="PNG")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for rel, w, h in TREE:
        _write(root / rel, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    for rel in IGNORED:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not an image we list")
    return root


def _data(folder: Path, **options) -> ImageFolderDataset:
    defaults = {"image_size": 8, "num_test": 3, "num_workers": 0}
    return ImageFolderDataset(str(folder), **{**defaults, **options})


# ----------------------------------------------------------------------------- listing and splits


def test_registered_as_a_dataset():
    names = {ep.name: ep.value for ep in entry_points(group="inferkit.datasets")}
    assert names.get("image-folder") == "inferkit.data.image_folder:ImageFolderDataset"


def test_lists_images_recursively_sorted_and_splits_them(folder):
    data = _data(folder)
    expected = sorted(rel for rel, _, _ in TREE)
    assert [Path(f).relative_to(folder).as_posix() for f in data.files] == expected
    assert len(data.train) + len(data.test) == len(TREE) and len(data.test) == 3
    assert set(data.train.files).isdisjoint(data.test.files)
    assert sorted(data.train.files + data.test.files) == sorted(data.files)
    assert data.data_shape == (3, 8, 8) and data.train.data_shape == data.test.data_shape
    assert data.train.labels is None and data.test.factors is None


def test_split_is_deterministic_in_the_seed(folder):
    a, b = _data(folder, seed=5), _data(folder, seed=5)
    assert a.train.files == b.train.files and a.test.files == b.test.files
    others = {_data(folder, seed=s).test.files for s in range(6)}
    assert len(others) > 1  # the seed moves files between the splits


def test_max_images_and_auto_num_test(folder):
    data = _data(folder, max_images=6, num_test=0)
    assert len(data.files) == 6 and data.files == _data(folder).files[:6]
    assert len(data.test) == 1 and len(data.train) == 5  # 10 % of 6, at least one


# ----------------------------------------------------------------------------- decoding


def test_batch_shapes_range_and_index(folder):
    data = _data(folder, image_size=12)
    batch = data.train.batch(torch.tensor([4, 0, 2]))
    assert batch["x"].shape == (3, 3, 12, 12) and batch["x"].dtype == torch.float32
    assert batch["x"].min() >= -1 and batch["x"].max() <= 1
    assert batch["index"].tolist() == [4, 0, 2] and batch["index"].dtype == torch.int64
    assert torch.equal(batch["x"][1], data.train[0]["x"])
    with pytest.raises(IndexError):
        data.train.batch([len(data.train)])


def test_batches_are_deterministic(folder):
    a, b = _data(folder, seed=1), _data(folder, seed=1)
    for (x, y) in zip(a.train.batches(3, seed=2, epoch=1), b.train.batches(3, seed=2, epoch=1)):
        assert torch.equal(x["x"], y["x"]) and torch.equal(x["index"], y["index"])
    assert torch.equal(a.train.batch([1, 2])["x"], a.train.batch([1, 2])["x"])


def test_exact_pixel_mapping_rgb_and_grayscale(tmp_path):
    colour = (10, 128, 255)
    _write(tmp_path / "u1.png", np.full((21, 37, 3), colour, dtype=np.uint8))
    _write(tmp_path / "u2.png", np.full((9, 5, 3), colour, dtype=np.uint8))
    rgb = ImageFolderDataset(str(tmp_path), image_size=6, num_test=1, num_workers=0)
    x = torch.cat([rgb.train.x[:], rgb.test.x[:]])
    expected = torch.tensor(colour, dtype=torch.float32).mul(2 / 255).sub(1)
    assert torch.equal(x, expected.view(1, 3, 1, 1).expand(2, 3, 6, 6))
    gray = ImageFolderDataset(str(tmp_path), image_size=6, channels=1, num_test=1, num_workers=0)
    assert gray.data_shape == (1, 6, 6)
    luma = (10 * 299 + 128 * 587 + 255 * 114) // 1000  # Pillow's RGB -> L (ITU-R 601-2)
    level = np.asarray(Image.new("RGB", (1, 1), colour).convert("L"))[0, 0]
    assert abs(int(level) - luma) <= 1
    assert torch.equal(gray.train.x[:], torch.full((1, 1, 6, 6), float(level)).mul(2 / 255).sub(1))


def test_resize_and_centre_crop_on_known_content(tmp_path):
    """A 80x20 image of four colour bands red | green | blue | white: the centre square is the
    green | blue middle, so the left half of the result is green and the right half blue (a squash
    without cropping would show red and white at the edges). Same for a tall image."""
    bands = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    wide = np.concatenate([np.full((20, 20, 3), c, dtype=np.uint8) for c in bands], axis=1)
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    _write(tmp_path / "wide.png", wide)
    _write(tmp_path / "x" / "tall.png", tall)
    for name, array in (("wide", wide), ("tall", tall)):
        out = load_image(str(tmp_path / ("x/tall.png" if name == "tall" else "wide.png")), 8, 3).astype(int)
        if name == "tall":
            out = out.transpose(1, 0, 2)
        left, right = out[:, :3], out[:, 5:]
        assert (left[..., 1] > 200).all() and (left[..., [0, 2]] < 40).all(), (name, left)
        assert (right[..., 2] > 200).all() and (right[..., [0, 1]] < 40).all(), (name, right)
        assert (np.abs(out[:, :3] - out[:, :3].mean((0, 1))) < 30).all()
    data = ImageFolderDataset(str(tmp_path), image_size=8, num_test=1, num_workers=0)
    x = torch.cat([data.train.x[:], data.test.x[:]])
    assert x.shape == (2, 3, 8, 8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 60), height=st.integers(1, 60), size=st.integers(1, 16),
       channels=st.sampled_from([1, 3]), grey=st.integers(0, 255), suffix=st.sampled_from([".png", ".jpg"]))
def test_any_size_gives_a_square_of_image_size(tmp_path, width, height, size, channels, grey, suffix):
    path = tmp_path / f"img{suffix}"
    _write(path, np.full((height, width, 3), grey, dtype=np.uint8))
    out = load_image(str(path), size, channels)
    assert out.shape == (size, size, channels) and out.dtype == np.uint8
    tolerance = 0 if suffix == ".png" else 3  # a flat grey survives Lanczos exactly; JPEG nearly
    assert np.abs(out.astype(int) - grey).max() <= tolerance


# ----------------------------------------------------------------------------- workers and streaming


def test_worker_pool_and_in_process_give_identical_tensors(folder):
    serial, pooled = _data(folder, num_workers=0), _data(folder, num_workers=2)
    try:
        idx = torch.tensor([5, 1, 7, 0, 3, 8, 2])
        a, b = serial.train.batch(idx), pooled.train.batch(idx)
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["index"], b["index"])
        assert torch.equal(serial.test.x[:], pooled.test.x[:])
        assert pooled._decoder._pool is not None  # the pool really ran
        loaded = list(pooled.train.loader(3, seed=4, epoch=0, num_workers=2))
        direct = list(serial.train.batches(3, seed=4, epoch=0))
        assert len(loaded) == len(direct) == len(serial.train) // 3
        for x, y in zip(loaded, direct):
            assert torch.equal(x["x"], y["x"]) and torch.equal(x["index"], y["index"])
    finally:
        pooled.close()


def test_x_is_lazy_and_decodes_only_the_first_n(folder, monkeypatch):
    data = _data(folder, num_test=5)
    decoded: list[int] = []
    original = _Decoder.decode

    def counting(self, paths):
        decoded.append(len(paths))
        return original(self, paths)

    monkeypatch.setattr(_Decoder, "decode", counting)
    view = data.test.to("cpu").x
    assert view.shape == (5, 3, 8, 8) and len(view) == 5 and decoded == []
    first = view[:2]
    assert decoded == [2] and torch.equal(first, data.test.batch([0, 1])["x"])
    assert torch.equal(view[3], data.test.batch([3])["x"][0])
    assert view[:2, 0].shape == (2, 8, 8)
    assert data.train.x.to("cpu")[:1].shape == (1, 3, 8, 8)


# ----------------------------------------------------------------------------- errors


def test_missing_empty_and_non_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "nope"))
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(UserError, match="not a folder"):
        ImageFolderDataset(str(tmp_path / "file.png"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "a.bmp").write_bytes(b"x")
    with pytest.raises(UserError, match=r"no images found .*\.jpg, \.jpeg, \.png"):
        ImageFolderDataset(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="--data-dir"):
        ImageFolderDataset("")


@pytest.mark.parametrize("options, fragment", [
    ({"channels": 2}, "channels"), ({"image_size": 0}, "image_size"), ({"num_workers": -1}, "num_workers"),
    ({"num_test": 12}, "num_test"), ({"max_images": -1}, "max_images"), ({"image_size": "big"}, "image_size"),
    ({"max_images": 1}, "too few"),
])
def test_bad_options(folder, options, fragment):
    with pytest.raises(UserError, match=fragment):
        _data(folder, **options)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_names_the_file(tmp_path, workers):
    for i in range(3):
        _write(tmp_path / f"ok{i}.png", np.zeros((10, 10, 3), dtype=np.uint8))
    good = (tmp_path / "ok0.png").read_bytes()
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage, not a JPEG")
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    data = ImageFolderDataset(str(tmp_path), image_size=4, num_test=1, num_workers=workers, max_images=5)
    try:
        for bad in ("broken.jpg", "cut.png"):
            split = data.train if str(tmp_path / bad) in data.train.files else data.test
            i = split.files.index(str(tmp_path / bad))
            with pytest.raises(UserError, match=rf"cannot read image .*{bad}"):
                split.batch([i, (i + 1) % len(split)] if len(split) > 1 else [i])
    finally:
        data.close()


# ----------------------------------------------------------------------------- command line


def _cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def test_cli_run_and_eval_on_an_image_folder(folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(["run", "--data", "image-folder", "--data-opt", f"data_dir={folder}",
                      "--data-opt", "image_size=16", "--data-opt", "num_test=4", "--data-opt", "num_workers=2",
                      "--model", "ladder", "--sampler", "shortrun", "--tuner", "fixed",
                      "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8",
                      "--sampler-opt", "num_steps=2", "--batch-size", "4", "--iterations", "2", "--quiet",
                      "--train-opt", "eval_examples=4", "--out", out], capsys)
    assert code == 0, err
    assert (out / "checkpoint.pt").is_file() and (out / "summary.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["name"] == "image-folder" and config["data"]["options"]["image_size"] == 16
    assert config["model"]["options"]["image_size"] == 16
    code, err = _cli(["eval", out, "--reference-steps", "0", "--inpaint-examples", "0", "--ais-examples", "0",
                      "--fd-samples", "0", "--no-figures"], capsys)
    assert code == 0, err
    assert json.loads((out / "eval.json").read_text())["test_examples"] == 4


def test_cli_missing_folder_is_a_one_line_error(tmp_path, capsys):
    code, err = _cli(["run", "--model", "ladder", "--data", "image-folder", "--data-dir", tmp_path / "missing", "--iterations", "1",
                      "--out", tmp_path / "run"], capsys)
    assert code == 2 and err.startswith("error: ") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_trainer_reads_the_next_batch_while_one_computes(folder, tmp_path, monkeypatch):
    # streaming splits are read one iteration ahead on a background thread; the numbers are those of
    # reading each batch when it is needed (streaming switched off).
    import threading

    import inferkit.data.image_folder as image_folder_module
    from inferkit.runs import PluginSpec, RunSpec, TrainConfig, build_objects
    from inferkit.trainer import train

    spec = RunSpec(model=PluginSpec("ladder", {"num_layers": 2, "latent_dims": (4, 2), "nf": 8}),
                   sampler=PluginSpec("shortrun", {"num_steps": 2}), tuner=PluginSpec("fixed", {}),
                   data=PluginSpec("image-folder", {"data_dir": str(folder), "image_size": 16, "num_test": 4,
                                                    "num_workers": 0}),
                   train=TrainConfig(iterations=4, batch_size=4, tune_every=0, eval_examples=4, image_every=100))
    threads: list[str] = []
    original = image_folder_module.ImageFolderSplit.batch

    def recording(self, indices):
        threads.append(threading.current_thread().name)
        return original(self, indices)

    def trained(out):
        data, model, sampler, tuner = build_objects(spec)
        return train(model, sampler, tuner, data, spec, out, progress=False).model.state_dict()

    monkeypatch.setattr(image_folder_module.ImageFolderSplit, "batch", recording)
    prefetched = trained(tmp_path / "prefetched")
    assert threads[0] == threading.main_thread().name  # iteration 0 is read when needed ...
    assert len(threads) == 4 and all(name.startswith("inferkit-prefetch") for name in threads[1:])  # ... 1-3 ahead
    monkeypatch.setattr(image_folder_module.ImageFolderSplit, "streaming", False)
    threads.clear()
    plain = trained(tmp_path / "plain")
    assert threads == [threading.main_thread().name] * 4
    assert all(torch.equal(prefetched[key], plain[key]) for key in plain)
