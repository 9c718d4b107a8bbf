"""Data-parallel training: ``torchrun`` with 2 CPU processes on the gloo backend against one
process that trains the same 2 shards, ABP's chains across process counts, and the tuner's J
averaged over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from cli_helpers import run_cli

from inferkit import distributed
from inferkit.data.base import step_indices

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

TINY = ["--model", "ladder", "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2",
        "--model-opt", "nf=8", "--data-opt", "num_train=64", "--data-opt", "num_test=16",
        "--data-opt", "image_size=16", "--batch-size", "8", "--quiet", "--train-opt", "log_every=1",
        "--train-opt", "checkpoint_every=2", "--train-opt", "image_every=100", "--train-opt", "eval_examples=16"]
SHORTRUN = ["--sampler", "shortrun", "--sampler-opt", "num_steps=4", "--sampler-opt", "step_size=0.02"]
ABP = ["--sampler", "abp", "--sampler-opt", "num_steps=3", "--sampler-opt", "test_steps=3"]


def torchrun(args, processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node PROCESSES -m inferkit ARGS`` (one thread each)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "inferkit", *[str(a) for a in args]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def checkpoint(folder):
    return torch.load(folder / "checkpoint.pt", weights_only=True)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.allclose(value, b[key], rtol=1e-5, atol=1e-6), f"{what}: {key}"


@pytest.mark.distributed
def test_two_processes_train_as_one_process_with_two_shards(tmp_path, capsys):
    ddp, single, one_shard = tmp_path / "ddp", tmp_path / "single", tmp_path / "one"
    common = ["run", *TINY, *SHORTRUN, "--tuner", "fixed", "--iterations", "4", "--tune-every", "0"]
    done = torchrun([*common, "--out", ddp])
    assert done.stdout.count("run ") == 1  # only rank 0 reports
    assert run_cli([*common, "--train-opt", "shards=2", "--out", single], capsys)[0] == 0
    assert run_cli([*common, "--out", one_shard], capsys)[0] == 0
    a, b, c = checkpoint(ddp), checkpoint(single), checkpoint(one_shard)
    assert_same_tensors(a["model"], b["model"], "model")
    # The comparison can fail: one shard (another batch split, other random draws) trains otherwise.
    assert any(not torch.allclose(a["model"][k], c["model"][k], rtol=1e-5, atol=1e-6) for k in a["model"])
    assert json.loads((ddp / "config.json").read_text())["train"]["shards"] == 2
    # Rank 0 alone writes: one metrics line per iteration, equal (float tolerance) to the one-process run's.
    ddp_metrics = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    single_metrics = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in ddp_metrics] == [0, 1, 2, 3]
    for m, n in zip(ddp_metrics, single_metrics):
        assert m["loss"] == pytest.approx(n["loss"], rel=1e-5) and m["mse"] == pytest.approx(n["mse"], rel=1e-5)
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["shards"] == 2


@pytest.mark.distributed
def test_abp_chains_live_with_their_shard_and_resume_on_any_process_count(tmp_path, capsys):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    common = ["run", *TINY, *ABP, "--tuner", "fixed", "--tune-every", "0", "--iterations", "4"]
    torchrun([*common, "--out", ddp])
    assert run_cli([*common, "--train-opt", "shards=2", "--out", single], capsys)[0] == 0
    a, b = checkpoint(ddp), checkpoint(single)
    assert_same_tensors(a["model"], b["model"], "model")
    store_a, store_b = a["sampler"]["_extra_state"], b["sampler"]["_extra_state"]
    # The checkpoint unites both processes' chains: equal to the one-process store of both shards.
    owner = torch.arange(store_a["seen"].shape[0]) % 2
    assert bool(store_a["seen"][owner == 0].any()) and bool(store_a["seen"][owner == 1].any())
    assert torch.equal(store_a["seen"], store_b["seen"])
    for x, y in zip(store_a["chains"], store_b["chains"]):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6) and bool((x[~store_a["seen"]] == 0).all())
    # Resume each on the other process count (shards=2 kept): 2 processes -> 1, 1 process -> 2.
    code, _, err = run_cli(["run", "--resume", ddp, "--iterations", "6", "--quiet"], capsys)
    assert code == 0, err
    torchrun(["run", "--resume", single, "--iterations", "6", "--quiet"])
    a, b = checkpoint(ddp), checkpoint(single)
    assert a["iteration"] == b["iteration"] == 6
    assert_same_tensors(a["model"], b["model"], "model after resuming")
    for x, y in zip(a["sampler"]["_extra_state"]["chains"], b["sampler"]["_extra_state"]["chains"]):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.distributed
def test_kl_grid_averages_J_over_processes(tmp_path):
    from inferkit.runs import RunSpec, build_objects
    from inferkit.trainer import observation_sigma

    ddp = tmp_path / "ddp"
    torchrun(["run", *TINY, *SHORTRUN, "--tuner", "kl-grid", "--tuner-opt", "grid=0.01,0.02,0.04",
              "--tuner-opt", "batch_size=2", "--iterations", "1", "--tune-every", "1", "--out", ddp])
    recorded = [json.loads(line) for line in (ddp / "tuner.jsonl").read_text().splitlines()]
    assert len(recorded) == 1  # rank 0 alone wrote
    # J of each grid point on each shard's batch at iteration 0, in this process, then averaged.
    spec = RunSpec.load(ddp)
    per_shard = []
    for shard in (0, 1):
        data, model, sampler, tuner = build_objects(spec, resolve=False)  # the run's initial parameters
        model.set_observation_sigma(observation_sigma(spec.train, 0))
        index = distributed.shard_batch_indices(len(data.train), 8, shards=2, shard=shard, seed=0, step=0)
        history = tuner.tune(model, sampler, data.train.batch(index)["x"]).history
        per_shard.append([h["J"] for h in history])
    expected = [(j0 + j1) / 2 for j0, j1 in zip(*per_shard)]
    assert [h["J"] for h in recorded[0]["history"]] == pytest.approx(expected, rel=1e-6)
    assert per_shard[0] != pytest.approx(per_shard[1], rel=1e-3)  # the shards' J differ: averaging is seen


def test_shards_must_split_the_batch(tmp_path, capsys):
    from cli_helpers import one_line_error

    code, _, err = run_cli(["run", *TINY, *SHORTRUN, "--tuner", "fixed", "--iterations", "1",
                            "--train-opt", "shards=3", "--out", tmp_path / "run"], capsys)
    assert "shards" in one_line_error(code, err)
    assert not (tmp_path / "run").exists()


def test_shard_batches_partition_the_examples():
    n, batch, shards = 40, 8, 4
    mine = [distributed.shard_batch_indices(n, batch, shards=shards, shard=s, seed=3, step=5) for s in range(shards)]
    assert all(len(m) == batch // shards and bool((m % shards == s).all()) for s, m in enumerate(mine))
    single = distributed.shard_batch_indices(n, batch, shards=1, shard=0, seed=3, step=5)
    assert torch.equal(single, step_indices(n, batch, seed=3, step=5))  # one shard: the usual batches
    owned = distributed.owned_examples(n, shards, [1, 3])
    assert torch.equal(owned, torch.arange(n) % 2 == 1)


@pytest.mark.distributed
def test_a_sampler_with_training_phases_trains_data_parallel(tmp_path):
    # vimco's pre-training phases leave the RBM (then the encoder) without gradients: DDP must look
    # for unused parameters (Sampler.trains_in_phases, TrainConfig.find_unused_parameters=auto), or the second iteration fails.
    out = tmp_path / "vimco"
    torchrun(["run", "--model", "rbm-prior", "--model-opt", "binarize=threshold", "--sampler", "vimco",
              "--tuner", "fixed", "--data-opt", "num_train=64",
              "--data-opt", "num_test=16", "--batch-size", "8", "--iterations", "3", "--tune-every", "0", "--quiet",
              "--out", out])
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
