"""The papers' experiments as presets (configs/paper/*.toml): each parses, holds the paper's settings,
and trains for 2 iterations on tiny data with sizes overridden on the command line; the per-milestone
learning rates (``lr_values``) against the exact schedule, their validation and round trip; the
``svhn`` data set read from small ``.mat`` files written with ``scipy.io.savemat``."""

from __future__ import annotations

import json
import math
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import inferkit.registry
from inferkit.cli import _read_toml
from inferkit.errors import UserError
from inferkit.runs import CHECKPOINT_FILE, CONFIG_FILE, RunSpec, TrainConfig, load_checkpoint
from inferkit.trainer import learning_rate, observation_sigma

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "paper"
NAMES = ("mnist", "svhn", "celeba32", "celeba64", "k-ablation")
TINY = ["--iterations", "2", "--batch-size", "4", "--model-opt", "nf=4", "--model-opt", "latent_dims=4,3,3,2,2",
        "--sampler-opt", "num_steps=2", "--tune-every", "0", "--train-opt", "eval_examples=4", "--train-opt",
        "log_every=1", "--quiet"]
"""What a test overrides: the run's length and every size (the files keep the paper's)."""


@pytest.fixture
def svhn_registered(monkeypatch):
    """The ``svhn`` entry point of this checkout's pyproject.toml, visible to the registry even where the
    installed metadata predates it (as ``pip install -e .`` would make it)."""
    installed = inferkit.registry.entry_points
    if any(ep.name == "svhn" for ep in installed(group="inferkit.datasets")):
        return
    svhn = EntryPoint(name="svhn", value="inferkit.data.svhn:SVHNDataset", group="inferkit.datasets")

    def entry_points(**selection):
        found = list(installed(**selection))
        return [*found, svhn] if selection.get("group") == "inferkit.datasets" else found

    monkeypatch.setattr(inferkit.registry, "entry_points", entry_points)


def test_pyproject_registers_svhn():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["inferkit.datasets"]["svhn"] == "inferkit.data.svhn:SVHNDataset"
    assert any(dep.startswith("scipy") for dep in project["project"]["dependencies"])


# -- the files hold the papers' settings ------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_preset_parses_with_the_papers_settings(name):
    config = _read_toml(PRESETS / f"{name}.toml")
    train = TrainConfig.from_dict(config["train"])
    train.validate()
    assert train.iterations == 300_000 and train.batch_size == 100 and train.adam_betas == (0.5, 0.999)
    # eta: 1e-4, 5e-5 from update 1e5, 1e-5 from update 2e5 (section 6)
    for t, eta in ((0, 1e-4), (99_999, 1e-4), (100_000, 5e-5), (199_999, 5e-5), (200_000, 1e-5), (299_999, 1e-5)):
        assert learning_rate(train, t) == eta, t
    assert observation_sigma(train, 0) == 0.2 and observation_sigma(train, 299_999) == pytest.approx(0.05)
    assert observation_sigma(train, 40_000) == pytest.approx(0.05)  # 80 of 600 epochs of the code
    assert config["sampler"] == {"name": "shortrun", "options": {"num_steps": 20, "step_size": 0.05}}
    assert config["tuner"] == {"name": "kl-grid", "options": {"memory": 0.0}}  # each choice applied, as the papers do
    model = config["model"]
    assert model["name"] == "ladder"
    assert model["options"] == {"num_layers": 5, "latent_dims": [128, 96, 64, 64, 64], "nf": 64,
                                "parameterization": "whitened"}
    size = {"mnist": None, "svhn": None, "celeba32": 32, "celeba64": 64, "k-ablation": 32}[name]
    assert config["data"]["options"].get("image_size") == size


def test_table_4_override_of_the_layers():
    """The documented L=3 override, on top of the file's L=5, gives Table 4's dims."""
    import inferkit
    from inferkit.cli import RunRequest, _spec_from

    spec = _spec_from(RunRequest(config=PRESETS / "celeba64.toml",
                                 model_opt=["num_layers=3", "latent_dims=128,64,32"]))
    model = inferkit.load_model("ladder", **{**spec.model.options, "image_size": 16, "channels": 3})
    assert model.latent_shapes == ((128,), (64,), (32,)) and model.config.nf == 64


# -- each runs as it is, on tiny data -----------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def tiny_mnist(root: Path, n: int = 20) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 0x803)
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(n) % 10, 0x801)
    return root


def tiny_svhn(root: Path, n_train: int = 12, n_test: int = 6) -> tuple[np.ndarray, ...]:
    from scipy.io import savemat

    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    out = []
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10, 10 is the digit 0
        savemat(root / name, {"X": x, "y": y})
        out += [x, y]
    return tuple(out)


def tiny_celeba(root: Path, n: int = 12) -> Path:
    root.mkdir()
    rng = np.random.default_rng(2)
    for i in range(n):  # 178 x 218 as img_align_celeba, smaller: 36 x 44 (width x height)
        Image.fromarray(rng.integers(0, 256, (44, 36, 3), dtype=np.uint8)).save(root / f"{i + 1:06d}.png")
    return root


def run_preset(name, data_dir, out, capsys, *extra):
    code, _, err = run_cli(["run", "--config", PRESETS / f"{name}.toml", "--data-dir", data_dir, "--out", out,
                            *TINY, *extra], capsys)
    assert code == 0, err
    spec = json.loads((out / CONFIG_FILE).read_text())
    assert spec["train"]["lr_values"] == [5e-5, 1e-5] and spec["train"]["adam_betas"] == [0.5, 0.999]
    assert spec["model"]["options"]["nf"] == 4 and spec["train"]["iterations"] == 2
    return spec


@pytest.mark.parametrize("name", ["celeba32", "celeba64", "k-ablation"])
def test_celeba_presets_run(name, tmp_path, capsys):
    steps = ["--sampler-opt", "num_steps=3"] if name == "k-ablation" else []
    spec = run_preset(name, tiny_celeba(tmp_path / "img_align_celeba"), tmp_path / "run", capsys,
                      "--data-opt", "num_test=4", *steps)
    size = 64 if name == "celeba64" else 32
    assert spec["model"]["options"]["image_size"] == size and spec["data"]["name"] == "image-folder"
    assert spec["sampler"]["options"]["num_steps"] == (3 if name == "k-ablation" else 2)


def test_svhn_preset_runs(tmp_path, capsys, svhn_registered):
    tiny_svhn(tmp_path / "svhn")
    spec = run_preset("svhn", tmp_path / "svhn", tmp_path / "run", capsys)
    assert spec["model"]["options"]["image_size"] == 32 and spec["model"]["options"]["channels"] == 3


def test_mnist_preset_runs_and_resumes_with_its_schedule(tmp_path, capsys):
    out = tmp_path / "run"
    spec = run_preset("mnist", tiny_mnist(tmp_path / "mnist"), out, capsys)
    assert spec["model"]["options"]["image_size"] == 28
    state = load_checkpoint(out / CHECKPOINT_FILE)
    assert tuple(state["optimizer"]["param_groups"][0]["betas"]) == (0.5, 0.999)
    code, _, err = run_cli(["run", "--resume", out, "--iterations", "3", "--quiet"], capsys)
    assert code == 0, err
    train = RunSpec.load(out).train
    assert train.lr_values == (5e-5, 1e-5) and train.adam_betas == (0.5, 0.999) and train.schedule_total == 2
    rates = [json.loads(line)["learning_rate"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    # milestones round(2/3) = round(4/3) = 1: eta(0) = 1e-4, then 1e-5 (both passed), kept past the plan
    assert rates == [learning_rate(train, t) for t in range(3)] == [1e-4, 1e-5, 1e-5]


def test_mnist_preset_on_the_real_files_with_tuning(mnist_dir, tmp_path, capsys):
    run_preset("mnist", mnist_dir, tmp_path / "run", capsys, "--tune-every", "1", "--tuner-opt", "grid=0.01,0.02",
               "--tuner-opt", "max_extensions=0", "--tuner-opt", "max_shrinks=0", "--tuner-opt",
               "require_invertible=false", "--tuner-opt", "batch_size=1", "--data-opt", "num_train=64")
    assert (tmp_path / "run" / "tuner.jsonl").read_text().strip()


# -- per-milestone learning rates -------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(total=st.integers(1, 10_000), cuts=st.lists(st.floats(0, 1), min_size=1, max_size=4, unique=True),
       base=st.floats(1e-6, 1e-2), data=st.data())
def test_lr_values_give_the_rate_after_each_milestone(total, cuts, base, data):
    milestones = tuple(sorted(cuts))
    values = tuple(data.draw(st.lists(st.floats(1e-7, 1.0), min_size=len(cuts), max_size=len(cuts))))
    config = TrainConfig(iterations=total, learning_rate=base, lr_milestones=milestones, lr_values=values)
    config.validate()
    steps = [round(m * total) for m in milestones]
    for t in sorted({0, total - 1, *steps, *(s - 1 for s in steps if s > 0)}):
        passed = sum(1 for s in steps if s <= t)
        assert learning_rate(config, t) == (base if passed == 0 else values[passed - 1])


def test_lr_values_exact_on_the_papers_schedule():
    config = TrainConfig(iterations=300_000, learning_rate=1e-4, lr_milestones=(1 / 3, 2 / 3), lr_values=(5e-5, 1e-5))
    rates = [learning_rate(config, t) for t in range(0, 300_000, 500)]
    assert rates == [1e-4] * 200 + [5e-5] * 200 + [1e-5] * 200
    plain = TrainConfig(iterations=100, learning_rate=1.0, lr_milestones=(0.5,), lr_gamma=0.25)
    assert [learning_rate(plain, t) for t in (49, 50)] == [1.0, 0.25]  # without lr_values: gamma^k


@pytest.mark.parametrize("options,words", [
    ({"lr_milestones": (0.5,), "lr_values": (1e-4, 1e-5)}, "one rate per milestone"),
    ({"lr_milestones": (0.6, 0.3), "lr_values": (1e-4, 1e-5)}, "must increase"),
    ({"lr_milestones": (0.5,), "lr_values": (0.0,)}, "learning rates in (0, 1]"),
    ({"lr_milestones": (0.5,), "lr_values": (math.nan,)}, "learning rates in (0, 1]"),
    ({"adam_betas": (1.0, 0.999)}, "adam-betas"),
    ({"adam_betas": (0.5, -0.1)}, "adam-betas"),
])
def test_bad_lr_values_and_betas_are_user_errors(options, words):
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TrainConfig(**options).validate()


def test_bad_lr_values_on_the_command_line_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["run", "--model", "linear-gaussian", "--train-opt", "lr_values=1e-4", "--out",
                            tmp_path / "run", "--quiet"], capsys)
    assert "one rate per milestone" in one_line_error(code, err)
    code, _, err = run_cli(["run", "--model", "linear-gaussian", "--train-opt", "adam_betas=0.5", "--out",
                            tmp_path / "run", "--quiet"], capsys)
    assert "adam_betas" in one_line_error(code, err)


def test_train_config_round_trips_lr_values_and_betas():
    config = TrainConfig(lr_milestones=(0.25, 0.5), lr_values=(3e-4, 2e-5), adam_betas=(0.5, 0.9))
    again = TrainConfig.from_dict(json.loads(json.dumps(config.__dict__)))
    assert again == config and again.lr_values == (3e-4, 2e-5) and again.adam_betas == (0.5, 0.9)
    assert TrainConfig.from_dict({"lr_values": "5e-5,1e-5"}).lr_values == (5e-5, 1e-5)


# -- the svhn data set ---------------------------------------------------------------------------------
def test_svhn_reads_the_mat_files(tmp_path):
    from inferkit.data.svhn import SVHNDataset

    train_x, train_y, _, _ = tiny_svhn(tmp_path)
    data = SVHNDataset(str(tmp_path))
    assert data.data_shape == (3, 32, 32) and data.name == "svhn" and data.num_classes == 10
    assert len(data.train) == 12 and len(data.test) == 6
    # pixel (row i, column j, channel c) of image n is X[i, j, c, n], mapped to 2 v / 255 - 1
    expected = torch.from_numpy(train_x.transpose(3, 2, 0, 1).astype(np.float32)) * (2 / 255) - 1
    torch.testing.assert_close(data.train.x, expected, rtol=0, atol=1e-6)
    assert data.train.labels.tolist() == [int(v) % 10 for v in train_y[:, 0]]
    assert data.test.labels.tolist() == [1, 2, 3, 4, 5, 6] and 0 in data.train.labels.tolist()
    few = SVHNDataset(str(tmp_path), num_train=5, num_test=2)
    assert len(few.train) == 5 and len(few.test) == 2
    torch.testing.assert_close(few.train.x, data.train.x[:5])
    assert few.train.source_index.tolist() == [0, 1, 2, 3, 4]


def test_svhn_errors_are_one_line(tmp_path, no_fetched_data):
    from scipy.io import savemat

    from inferkit.data.svhn import SVHNDataset

    def message(**kw):
        with pytest.raises(UserError) as info:
            SVHNDataset(str(tmp_path), **kw)
        text = str(info.value)
        assert "\n" not in text
        return text

    assert "lacks train_32x32.mat and test_32x32.mat" in message()
    with pytest.raises(UserError, match="run: inferkit data fetch svhn"):
        SVHNDataset("")  # no folder given: $INFERKIT_DATA/svhn, then the cache (both empty here)
    tiny_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, not really" + bytes(200))
    assert "test_32x32.mat is damaged" in message()
    (tmp_path / "test_32x32.mat").write_bytes(b"")
    assert "damaged" in message()
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 1, 3), np.uint8), "y": np.ones((3, 1))})
    assert "expected uint8 [32, 32, 3, N]" in message()
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 3), np.uint8), "y": np.array([[1], [11], [2]])})
    assert "label 11 at row 1" in message()
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 3), np.uint8), "y": np.ones((2, 1))})
    assert "y has shape [2, 1] for 3 images" in message()
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 3), np.uint8)})
    assert "no variable y" in message()


def test_svhn_missing_files_on_the_command_line(tmp_path, capsys, svhn_registered):
    code, _, err = run_cli(["run", "--config", PRESETS / "svhn.toml", "--data-dir", tmp_path, "--out",
                            tmp_path / "run", "--quiet"], capsys)
    assert "lacks train_32x32.mat and test_32x32.mat" in one_line_error(code, err)
