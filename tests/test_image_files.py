"""Image files that are not what they seem: bit depths and modes, FIFOs named ``*.png``, decoding
workers outliving a killed run, and a run folder that must work from another directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from PIL import Image

from inferkit.data.image_folder import ImageFolderDataset, find_images, load_image

MODEL = ["--model", "ladder", "--model-opt", "num_layers=1", "--model-opt", "latent_dims=2", "--model-opt", "nf=4",
         "--sampler-opt", "num_steps=2", "--tuner", "fixed", "--data", "image-folder",
         "--data-opt", "image_size=8", "--batch-size", "4", "--quiet", "--train-opt", "eval_examples=2"]


def mid_gray(mode: str) -> Image.Image:
    """A 4x4 image of ``mode`` whose colour is a mid gray (or the same gray behind an alpha channel)."""
    if mode == "I;16":  # Pillow opens it as I;16 (older versions: I)
        return Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))
    if mode == "CMYK":
        return Image.new("CMYK", (4, 4), (0, 0, 0, 127))
    if mode == "P":
        image = Image.new("P", (4, 4), 1)
        image.putpalette([0, 0, 0, 128, 128, 128])
        return image
    if mode == "RGBA":
        return Image.new("RGBA", (4, 4), (128, 128, 128, 255))
    if mode == "LA":
        return Image.new("LA", (4, 4), (128, 255))
    return Image.new(mode, (4, 4), 128)


MODES = [("I;16", "png"), ("P", "png"), ("RGBA", "png"), ("LA", "png"), ("L", "png"), ("CMYK", "jpg")]


@pytest.mark.parametrize("channels", [3, 1])
def test_every_mode_is_scaled_by_its_bit_depth(channels, tmp_path):
    for mode, extension in MODES:
        path = tmp_path / f"gray-{mode.replace(';', '')}.{extension}"
        mid_gray(mode).save(path)
        values = load_image(str(path), 4, channels)
        assert values.shape == (4, 4, channels)
        assert np.abs(values.astype(int) - 128).max() <= 2, (mode, Image.open(path).mode, values[0, 0])


def test_sixteen_bit_gradient_keeps_its_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    values = load_image(str(path), 16, 1)[..., 0].astype(int)
    assert values.min() <= 2 and values.max() >= 253
    assert (values == 255).mean() < 0.2  # clipped 16-bit values would all be white


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(path)
    assert (load_image(str(path), 4, 3) == 255).all()


def test_a_fifo_named_png_is_not_listed(tmp_path):
    for i in range(3):
        Image.new("RGB", (4, 4), (i, i, i)).save(tmp_path / f"{i}.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "0.png")
    names = [Path(p).name for p in find_images(tmp_path)]
    assert names == ["0.png", "1.png", "2.png", "link.png"]
    data = ImageFolderDataset(data_dir=str(tmp_path), image_size=4, num_test=1, num_workers=0)
    assert len(data.train) + len(data.test) == 4


def _images(folder: Path, n: int = 12) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaps counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker processes from /proc")
def test_decoding_workers_die_with_a_killed_run(tmp_path):
    data = _images(tmp_path / "images", 24)
    command = [sys.executable, "-m", "inferkit", "run", *MODEL, "--data-dir", str(data), "--data-opt", "num_workers=2",
               "--iterations", "100000", "--train-opt", "log_every=1000", "--out", str(tmp_path / "run")]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = _children(parent.pid)
        assert len(workers) >= 2, "the run never started its decoding workers"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # do not leave them behind on failure
        os.kill(pid, signal.SIGKILL)
    assert not left, f"decoding workers {left} outlived their killed parent"


def test_relative_data_dir_is_stored_absolute(tmp_path, capsys, monkeypatch):
    _images(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["run", *MODEL, "--data-dir", "images", "--data-opt", "num_workers=0",
                            "--iterations", "1", "--out", "run"], capsys)
    assert code == 0, err
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["data"]["options"]["data_dir"]
    assert stored == str(tmp_path.resolve() / "images")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(["sample", tmp_path / "run", "--num", "4"], capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "samples.png").is_file()


def test_relative_data_dir_of_a_config_file_is_stored_absolute(tmp_path, capsys, monkeypatch):
    _images(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text('[data]\nname = "image-folder"\n[data.options]\ndata_dir = "images"\n'
                                     'num_workers = 0\n')
    args = [a for a in MODEL if a not in ("--data", "image-folder")]
    code, _, err = run_cli(["run", *args, "--config", "c.toml", "--iterations", "1", "--out", "run"], capsys)
    assert code == 0, err
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["data"]["options"]["data_dir"]
    assert stored == str(tmp_path.resolve() / "images")
