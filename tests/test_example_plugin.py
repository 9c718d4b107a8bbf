"""The example third-party plugin (examples/toy-plugin): its model and its sampler are found through
the entry points its pyproject declares, and train through the CLI.

Nothing is installed: the plugin's folder goes on ``sys.path`` and a distribution built from its
pyproject's entry points is added to what the registry's ``entry_points`` returns, as pip would.
"""

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error, run_cli

import inferkit
import inferkit.registry

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "toy-plugin"


@pytest.fixture
def toy_plugin(monkeypatch, tmp_path):
    """The example plugin as if ``pip install examples/toy-plugin`` had run: its distribution."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    dist_info = tmp_path / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                        f"Version: {project['version']}\n")
    (dist_info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in project["entry-points"].items()))
    dist = importlib.metadata.Distribution.at(dist_info)
    installed = inferkit.registry.entry_points

    def entry_points(**selection):
        return [*installed(**selection), *dist.entry_points.select(**selection)]

    monkeypatch.setattr(inferkit.registry, "entry_points", entry_points)
    monkeypatch.syspath_prepend(str(PLUGIN))
    yield dist
    for name in [m for m in sys.modules if m == "inferkit_toy" or m.startswith("inferkit_toy.")]:
        del sys.modules[name]


TRAIN = ["--data-opt", "num_train=64", "--data-opt", "num_test=16", "--iterations", "4", "--batch-size", "8",
         "--tune-every", "2", "--train-opt", "eval_examples=16", "--quiet"]


def test_example_plugin_is_listed_and_trains(toy_plugin, tmp_path, capsys):
    code, listed, err = run_cli(["list"], capsys)
    assert code == 0 and "toy-mlp" in listed and "toy-metropolis" in listed and "inferkit-toy" in listed, err
    out = tmp_path / "run"
    code, _, err = run_cli(["run", "--model", "toy-mlp", "--sampler", "shortrun", "--tuner", "kl-grid",
                            "--tuner-opt", "grid=0.005,0.01", "--tuner-opt", "batch_size=2",
                            "--sampler-opt", "num_steps=5", *TRAIN, "--out", out], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 4
    assert json.loads((out / "config.json").read_text())["model"]["name"] == "toy-mlp"


def test_toy_sampler_trains_evaluates_and_refuses_kl_tuners_through_the_cli(toy_plugin, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["run", "--model", "toy-mlp", "--sampler", "toy-metropolis", "--tuner", "fixed",
                            "--tuner-opt", "step_size=0.2", "--sampler-opt", "num_steps=5", *TRAIN, "--out", out],
                           capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["sampler"] == {"name": "toy-metropolis", "options": {"num_steps": 5, "step_size": 0.1}}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 4 and summary["final_step_size"] == pytest.approx(0.2)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert float(state["sampler"]["step_size"]) == pytest.approx(0.2)
    # The run folder loads the sampler back by name, with its tuned step size, to evaluate.
    code, _, err = run_cli(["eval", out, "--num-examples", "8", "--reference-steps", "0", "--inpaint-examples", "0",
                            "--ais-examples", "0", "--fd-samples", "0", "--no-figures"], capsys)
    assert code == 0, err
    assert json.loads((out / "eval.json").read_text())["test_reconstruction_mse"] > 0
    code, _, err = run_cli(["run", "--model", "toy-mlp", "--sampler", "toy-metropolis", "--tuner", "kl-grid",
                            *TRAIN, "--out", tmp_path / "refused"], capsys)
    refusal = one_line_error(code, err)
    assert "kl-grid" in refusal and "ToyMetropolis" in refusal
    assert "not a short-run gradient flow" in refusal and "--tuner fixed" in refusal


def test_toy_sampler_approaches_the_exact_posterior_mean(toy_plugin):
    model = inferkit.load_model("linear-gaussian", latent_dim=2, data_dim=4, sigma=0.5, dtype="float64")
    x = model.decode(model.sample_prior(1, generator=torch.Generator().manual_seed(1))).detach()
    mean, cov = (t.detach() for t in model.posterior(x))
    num_chains = 2000

    def error_in_standard_errors(num_steps):
        sampler = inferkit.load_sampler("toy-metropolis", num_steps=num_steps, step_size=0.3)
        inference = sampler.infer(model, x.expand(num_chains, -1), generator=torch.Generator().manual_seed(0))
        (z,) = inference.z
        assert not z.requires_grad and 0.2 < inference.info["acceptance_rate"] < 0.9
        return ((z.mean(0) - mean[0]).abs() / (cov.diagonal() / num_chains).sqrt()).max()

    assert error_in_standard_errors(60) < 5.0  # the chains have forgotten the prior
    assert error_in_standard_errors(1) > 10.0  # one step from the prior has not


def test_toy_sampler_is_seeded_honours_the_mask_and_checks_its_options(toy_plugin):
    from inferkit_toy import ToyMetropolis

    model = inferkit.load_model("linear-gaussian", latent_dim=2, data_dim=3, dtype="float64")
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sampler = ToyMetropolis(num_steps=4)
    first, again = (sampler.infer(model, x, generator=torch.Generator().manual_seed(3)).z[0] for _ in range(2))
    assert torch.equal(first, again)
    # The chains do not see what the mask hides.
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    small = inferkit.load_model("linear-gaussian", latent_dim=2, data_dim=3, dtype="float64")
    with torch.no_grad():
        small.weight[2].fill_(123.0)  # what the mask hides
    masked = sampler.infer(small, x, mask=mask, generator=torch.Generator().manual_seed(3)).z[0]
    with torch.no_grad():
        small.weight[2].copy_(model.weight[2])
    assert torch.allclose(masked, sampler.infer(small, x, mask=mask, generator=torch.Generator().manual_seed(3)).z[0])
    assert set(sampler.hyperparameters()) == {"step_size"}
    for options in ({"num_steps": 0}, {"num_steps": 2.5}, {"step_size": 0.0}, {"step_size": float("nan")}):
        with pytest.raises(inferkit.UserError, match="toy-metropolis"):
            ToyMetropolis(**options)
