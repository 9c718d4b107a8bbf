"""A third-party plugin installed with pip registers its model and trains through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "toy-plugin"


@pytest.fixture(scope="module")
def installed_plugin():
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "-e", str(PLUGIN)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"pip could not install the example plugin: {done.stderr[-2000:]}")
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", "inferkit-toy"],
                   capture_output=True, text=True)


def test_example_plugin_is_listed_and_trains(installed_plugin, tmp_path):
    listed = subprocess.run([sys.executable, "-m", "inferkit", "list"], capture_output=True, text=True)
    assert listed.returncode == 0 and "toy-mlp" in listed.stdout and "inferkit-toy" in listed.stdout
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "inferkit", "run", "--model", "toy-mlp", "--sampler", "shortrun",
                           "--tuner", "kl-grid", "--tuner-opt", "grid=0.005,0.01", "--tuner-opt", "batch_size=2",
                           "--sampler-opt", "num_steps=5", "--data-opt", "num_train=64", "--data-opt", "num_test=16",
                           "--iterations", "4", "--batch-size", "8", "--tune-every", "2", "--train-opt",
                           "eval_examples=16", "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 4
    assert json.loads((out / "config.json").read_text())["model"]["name"] == "toy-mlp"
