"""The speed options of the K-step loop (inferkit.acceleration): each agrees with the eager float32 path
on the CPU, runs without host synchronisation, and goes through the command line and --resume.

Compiled paths use the ``aot_eager`` backend on the ladder (inductor takes minutes to compile it on a
CPU) and inductor itself on the tiny linear-Gaussian model.
"""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
import torch._dynamo
from cli_helpers import one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

import inferkit
from inferkit.acceleration import (
    COMPILE_MODES,
    PRECISIONS,
    HostSyncError,
    autocast,
    check_compile,
    check_precision,
    forbid_host_sync,
)
from inferkit.errors import UserError
from inferkit.runs import PluginSpec, RunSpec, TrainConfig, build_objects
from inferkit.samplers import ShortRun

FLOAT32_RTOL = 1e-5
# bfloat16 keeps 8 significant bits: one rounding is off by up to 2^-9 ~ 2e-3 relative. Under autocast
# every convolution and linear layer of the generator rounds its inputs and output, so the gradient of
# each step is off by a few times that; z_K is the same z_0 plus K such steps, whose sum stays small next
# to |z|. Observed: ~1.5e-3 of max|z| on the ladder below; we allow 2e-2 (about ten roundings).
BF16_RTOL = 2e-2


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch and counts its own graphs and graph breaks."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def small_ladder():
    torch.manual_seed(0)
    model = inferkit.load_model("ladder", image_size=16, channels=1, num_layers=3, nf=8)
    x = model.sample(8, generator=torch.Generator().manual_seed(0)).detach()
    return model, x


SHARED_LADDER = small_ladder()  # read-only: for tests that never train it


def relative_error(a, b) -> float:
    """``max |a - b| / max |a|`` over all layers of two latent tuples."""
    return max(float((u - v).abs().max() / u.abs().max()) for u, v in zip(a, b))


def infer(sampler, model, x, seed=3):
    return sampler.infer(model, x, generator=torch.Generator().manual_seed(seed)).z


# -- compiled steps ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, mode", [("shortrun", "default"), ("langevin", "reduce-overhead")])
def test_compiled_step_agrees_with_eager_infer(name, mode):
    model, x = small_ladder()
    eager = inferkit.load_sampler(name, num_steps=4, step_size=0.02)
    compiled = inferkit.load_sampler(name, num_steps=4, step_size=0.02, compile=mode,
                                     compile_backend="aot_eager")
    z_eager, z_compiled = infer(eager, model, x), infer(compiled, model, x)
    assert all(t.dtype == torch.float32 and not t.requires_grad for t in z_compiled)
    assert relative_error(z_eager, z_compiled) < FLOAT32_RTOL
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the step really was compiled
    assert not torch._dynamo.utils.counters["graph_break"]  # ... as one whole graph


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), per=st.sampled_from(["shared", "layer", "step"]),
       scale=st.floats(0.005, 0.05))
def test_compiled_langevin_agrees_for_any_step_sizes_and_seed(seed, per, scale):
    model, x = SHARED_LADDER  # one model: the step compiles once, not once per example
    sizes = {"shared": scale, "layer": (scale, scale / 2, scale * 1.5),
             "step": (scale, scale / 3, scale * 2)}[per]
    eager = inferkit.load_sampler("langevin", num_steps=3, step_size=sizes, per=per)
    compiled = inferkit.load_sampler("langevin", num_steps=3, step_size=sizes, per=per, compile="default",
                                     compile_backend="aot_eager")
    assert relative_error(infer(eager, model, x, seed), infer(compiled, model, x, seed)) < FLOAT32_RTOL


def test_inductor_compiled_step_agrees_on_a_tiny_model():
    model = inferkit.load_model("linear-gaussian", latent_dim=4, data_dim=8)
    x = model.sample(8, generator=torch.Generator().manual_seed(0)).detach()
    eager = inferkit.load_sampler("langevin", num_steps=5, step_size=0.05)
    compiled = inferkit.load_sampler("langevin", num_steps=5, step_size=0.05, compile="default")
    assert relative_error(infer(eager, model, x), infer(compiled, model, x)) < FLOAT32_RTOL


def test_compiled_step_is_not_saved_with_the_sampler():
    model, x = small_ladder()
    sampler = inferkit.load_sampler("shortrun", num_steps=2, step_size=0.02, compile="default",
                                    compile_backend="aot_eager")
    before = infer(sampler, model, x)
    assert set(sampler.state_dict()) == set(ShortRun().state_dict())
    for clone in (pickle.loads(pickle.dumps(sampler)), copy.deepcopy(sampler)):
        assert "_compiled_step" not in clone.__dict__ and clone.compile == "default"
        assert relative_error(before, infer(clone, model, x)) < FLOAT32_RTOL


# -- bf16 autocast -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shortrun", "langevin"])
def test_bf16_infer_keeps_float32_latents_and_agrees(name):
    model, x = small_ladder()
    eager = inferkit.load_sampler(name, num_steps=4, step_size=0.02)
    compiled = inferkit.load_sampler(name, num_steps=4, step_size=0.02, compile="default",
                                     compile_backend="aot_eager")
    reference = infer(eager, model, x)
    with autocast("cpu", "bf16"):
        z_bf16 = infer(eager, model, x)
        z_compiled_bf16 = infer(compiled, model, x)
    assert all(t.dtype == torch.float32 for t in z_bf16 + z_compiled_bf16)
    assert 0 < relative_error(reference, z_bf16) < BF16_RTOL  # bf16 did change the numbers, a little
    assert relative_error(z_bf16, z_compiled_bf16) < FLOAT32_RTOL  # the compiled step honours autocast


def test_one_training_step_under_bf16_agrees():
    """Inference, loss, backward and one SGD step, as the trainer runs them, in both precisions."""
    results = {}
    for precision in PRECISIONS:
        model, x = small_ladder()
        sampler = inferkit.load_sampler("shortrun", num_steps=4, step_size=0.02)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        with autocast("cpu", precision):
            inference = sampler.infer(model, x, generator=torch.Generator().manual_seed(3))
            loss = sampler.loss(model, x, inference)
        assert loss.dtype == torch.float32
        loss.backward()
        optimizer.step()
        update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
        results[precision] = (float(loss.detach()), update)
    (loss32, update32), (loss16, update16) = results["float32"], results["bf16"]
    assert abs(loss16 - loss32) <= BF16_RTOL * abs(loss32)
    assert float((update16 - update32).norm() / update32.norm()) < 5e-2  # the parameter update


def tiny_spec(precision: str, tune_every: int) -> RunSpec:
    return RunSpec(model=PluginSpec("ladder", {"num_layers": 2, "latent_dims": (4, 2), "nf": 8}),
                   sampler=PluginSpec("shortrun", {"num_steps": 3}),
                   tuner=PluginSpec("kl-grid", {"grid": (0.01, 0.02), "batch_size": 2}),
                   data=PluginSpec("shapes", {"num_train": 16, "num_test": 8, "image_size": 16}),
                   train=TrainConfig(iterations=1, batch_size=8, tune_every=tune_every, eval_examples=8,
                                     precision=precision))


def test_trainer_bf16_leaves_the_tuner_alone_and_agrees(tmp_path):
    """The tuner's J is the same number under precision=bf16 (it runs outside autocast); the loss of
    the iteration agrees within the bf16 tolerance."""
    records = {}
    for precision in PRECISIONS:
        spec = tiny_spec(precision, tune_every=1)
        data, model, sampler, tuner = build_objects(spec)
        inferkit.train(model, sampler, tuner, data, spec, tmp_path / precision, progress=False)
        tuned = json.loads((tmp_path / precision / "tuner.jsonl").read_text().splitlines()[0])
        metrics = json.loads((tmp_path / precision / "metrics.jsonl").read_text().splitlines()[-1])
        records[precision] = (tuned["history"], metrics["loss"])
    assert records["bf16"][0] == records["float32"][0]  # every grid point's J, exactly
    loss32, loss16 = records["float32"][1], records["bf16"][1]
    assert loss16 != loss32 and abs(loss16 - loss32) <= BF16_RTOL * abs(loss32)


# -- no host synchronisation inside the K steps ---------------------------------------------------
@pytest.mark.parametrize("name, compile_mode", [("shortrun", "none"), ("langevin", "none"),
                                                ("langevin", "default")])
def test_infer_makes_no_host_sync(name, compile_mode):
    model, x = small_ladder()
    sampler = inferkit.load_sampler(name, num_steps=3, step_size=0.02, compile=compile_mode,
                                    compile_backend="aot_eager")
    infer(sampler, model, x)  # compile outside the check
    with forbid_host_sync():
        infer(sampler, model, x)


class SyncingShortRun(ShortRun):
    """A deliberately bad sampler: reads the gradient norm back to the host at every step."""

    def infer(self, model, x, *, index=None, mask=None, generator=None):
        z = tuple(t.detach().requires_grad_() for t in model.sample_prior(x.shape[0], generator=generator))
        for _ in range(self.num_steps):
            grads = torch.autograd.grad(model.log_joint(x, z).sum(), z)
            self.last_norm = sum(g.norm() for g in grads).item()
            z = tuple((t + 0.01 * g).detach().requires_grad_() for t, g in zip(z, grads))
        return inferkit.Inference(z=tuple(t.detach() for t in z))


def test_host_sync_detector_catches_a_syncing_sampler():
    model, x = small_ladder()
    SyncingShortRun(num_steps=2).infer(model, x)  # runs outside the check
    with pytest.raises(HostSyncError, match="item"), forbid_host_sync():
        SyncingShortRun(num_steps=2).infer(model, x)


@pytest.mark.parametrize("syncing", [
    lambda t: t.sum().item(), lambda t: t.tolist(), lambda t: bool(t.any()), lambda t: float(t.sum()),
    lambda t: int(t.sum()), lambda t: t.cpu(), lambda t: t.numpy(), lambda t: t[t > 0], lambda t: t.nonzero(),
    lambda t: print(t),
])
def test_host_sync_detector_catches_each_kind(syncing):
    t = torch.randn(4)
    with pytest.raises(HostSyncError), forbid_host_sync():
        syncing(t)
    with forbid_host_sync():  # device-side work passes
        (t * 2 + t.exp()).sum()


# -- options: command line, config.json, --resume, mistakes ----------------------------------------
TINY = ["--model", "ladder", "--sampler", "langevin", "--tuner", "fixed", "--model-opt", "num_layers=2",
        "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8", "--sampler-opt", "num_steps=3",
        "--data-opt", "num_train=16", "--data-opt", "num_test=8", "--data-opt", "image_size=16",
        "--batch-size", "8", "--quiet", "--tune-every", "0", "--train-opt", "log_every=1",
        "--train-opt", "checkpoint_every=1", "--train-opt", "image_every=100",
        "--train-opt", "eval_examples=8"]


def test_cli_precision_and_compile_round_trip_through_resume(tmp_path, capsys, monkeypatch):
    import inferkit.trainer as trainer_module

    out = tmp_path / "run"
    code, _, err = run_cli(["run", *TINY, "--iterations", "2", "--precision", "bf16",
                            "--sampler-opt", "compile=default", "--sampler-opt", "compile_backend=aot_eager",
                            "--out", out], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["precision"] == "bf16"
    assert config["sampler"]["options"]["compile"] == "default"
    assert config["sampler"]["options"]["compile_backend"] == "aot_eager"

    seen = []
    original_autocast, original_train = trainer_module.autocast, trainer_module.train

    def recording_autocast(device, precision):
        seen.append(precision)
        return original_autocast(device, precision)

    def recording_train(model, sampler, *args, **kwargs):
        seen.append((sampler.compile, sampler.compile_backend))
        return original_train(model, sampler, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "autocast", recording_autocast)
    monkeypatch.setattr(trainer_module, "train", recording_train)
    code, _, err = run_cli(["run", "--resume", out, "--iterations", "3", "--quiet"], capsys)
    assert code == 0, err
    assert seen == [("default", "aot_eager"), "bf16"]  # one iteration resumed, bf16 and compiled
    assert json.loads((out / "summary.json").read_text())["iterations"] == 3


@pytest.mark.parametrize("args, fragment", [
    (["--precision", "fp16"], "precision must be one of float32, bf16"),
    (["--train-opt", "precision=half"], "precision must be one of"),
    (["--sampler-opt", "compile=fast"], "compile must be one of none, default"),
    (["--sampler-opt", "compile=default", "--sampler-opt", "compile_backend=nope"],
     "not a torch.compile backend"),
])
def test_bad_values_are_one_line_errors(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["run", *TINY, "--iterations", "1", *args], capsys)
    assert fragment in one_line_error(code, err)
    assert not (tmp_path / "runs").exists()  # nothing written


@given(st.text(max_size=12))
def test_only_the_named_options_are_accepted(text):
    for valid, check in ((PRECISIONS, check_precision), (COMPILE_MODES, lambda v: check_compile(v, "x"))):
        if text in valid:
            continue
        with pytest.raises(UserError) as raised:
            check(text)
        assert "\n" not in str(raised.value) and "give" in str(raised.value)
