"""``train(callbacks=...)`` and ``benchmarks/inference_gap.py``: a caller's callback sees each checkpoint as
it was written, measuring there leaves the training untouched, and each line of ``gap.jsonl`` is the own
and reference reconstruction error of the checkpoint's model on the first training and test images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_training_safety import tiny_spec

from inferkit.callbacks import Callback
from inferkit.eval.reconstruction import reconstruction_errors
from inferkit.eval.reference import reference_sampler
from inferkit.runs import CHECKPOINT_FILE, RunSpec, build_objects, load_checkpoint, restore_checkpoint
from inferkit.stopping import interrupted
from inferkit.trainer import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import inference_gap


class Recorder(Callback):
    def __init__(self, model, run_dir: Path) -> None:
        self.model, self.run_dir, self.seen = model, run_dir, []

    def on_checkpoint(self, done: int, *, more_to_come: bool) -> None:
        saved = load_checkpoint(self.run_dir / CHECKPOINT_FILE)
        same = all(torch.equal(saved["model"][name], value) for name, value in self.model.state_dict().items())
        self.seen.append((done, more_to_come, saved["iteration"], same))


def test_a_callers_callback_sees_every_checkpoint_as_written(tmp_path):
    spec = tiny_spec(iterations=4, checkpoint_every=2)
    data, model, sampler, tuner = build_objects(spec)
    recorder = Recorder(model, tmp_path / "run")
    train(model, sampler, tuner, data, spec, tmp_path / "run", progress=False, callbacks=[recorder])
    assert recorder.seen == [(2, True, 2, True), (4, False, 4, True)]


def _final_state(tmp_path: Path, name: str, with_gap: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The trained parameters, and the global random state after training."""
    torch.manual_seed(123)
    spec = tiny_spec(iterations=4, checkpoint_every=1)
    data, model, sampler, tuner = build_objects(spec)
    callbacks = ([inference_gap.InferenceGap(model, sampler, data.train.x[:4], data.test.x[:4],
                                             tmp_path / f"{name}.jsonl", reference_steps=2)] if with_gap else [])
    train(model, sampler, tuner, data, spec, tmp_path / name, progress=False, callbacks=callbacks)
    return [p.detach().clone() for p in model.parameters()], torch.random.get_rng_state()


def test_measuring_at_every_checkpoint_leaves_the_training_as_it_was(tmp_path):
    plain, plain_rng = _final_state(tmp_path, "plain", with_gap=False)
    measured, measured_rng = _final_state(tmp_path, "measured", with_gap=True)
    assert len((tmp_path / "measured.jsonl").read_text().splitlines()) == 4
    assert all(torch.equal(a, b) for a, b in zip(plain, measured))
    assert torch.equal(plain_rng, measured_rng)  # whatever a sampler draws while measuring, the caller's stream is kept


def test_each_line_is_the_checkpoints_own_and_reference_error(mnist_dir, tmp_path):
    out = tmp_path / "gap"
    code = inference_gap.main(["--out", str(out), "--data-dir", mnist_dir, "--iterations", "4", "--every", "2",
                               "--num-train", "64", "--examples", "8", "--reference-steps", "3",
                               "--sampler-opt", "num_steps=3", "--tuner-opt", "grid=[0.05, 0.1]",
                               "--tuner-opt", "search=grid", "--tuner-opt", "batch_size=2",
                               "--train-opt", "tune_every=2", "--train-opt", "batch_size=8"])
    assert code == 0
    lines = [json.loads(line) for line in (out / "gap.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [2, 4]
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["data"]["options"]["num_train"] == 64 and config["tuner"]["options"]["search"] == "grid"
    data, model, sampler, _ = build_objects(RunSpec.load(out / "run"))
    restore_checkpoint(out / "run" / CHECKPOINT_FILE, "cpu", model, sampler)  # the last: iteration 4
    x_train, x_test = data.train.x[:8], data.test.x[:8]
    reference, _ = reference_sampler(model, x_train, num_steps=3)
    last = lines[-1]
    assert last["own_test"] == pytest.approx(reconstruction_errors(model, sampler, x_test).mean().item(), rel=1e-5)
    assert last["own_train"] == pytest.approx(reconstruction_errors(model, sampler, x_train).mean().item(), rel=1e-5)
    assert last["ref_test"] == pytest.approx(reconstruction_errors(model, reference, x_test).mean().item(), rel=1e-5)
    assert last["own_train"] != last["own_test"]
    assert last["own_test"] == pytest.approx(sum(last["per_image"]["own_test"]) / 8, rel=1e-12)


def test_a_saved_checkpoint_measures_as_it_did_in_training_and_changes_are_paired(mnist_dir, tmp_path, capsys):
    out = tmp_path / "gap"
    common = ["--out", str(out), "--data-dir", mnist_dir, "--examples", "6", "--reference-steps", "3"]
    assert inference_gap.main([*common, "--iterations", "4", "--every", "2", "--num-train", "64",
                               "--sampler-opt", "num_steps=3", "--train-opt", "tune_every=0"]) == 0
    during = [json.loads(line) for line in (out / "gap.jsonl").read_text().splitlines()]
    kept = sorted((out / "checkpoints").glob("*.pt"))
    assert [path.name for path in kept] == ["2.pt", "4.pt"]
    capsys.readouterr()
    assert inference_gap.main([*common, "--measure", *map(str, reversed(kept))]) == 0
    after = [json.loads(line) for line in (out / "measured.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in after] == [2, 4]  # in order of iteration, whatever order given
    for a, b in zip(during, after):
        assert a["per_image"] == b["per_image"]
    diffs = [b - a for a, b in zip(after[0]["per_image"]["own_test"], after[1]["per_image"]["own_test"])]
    mean = sum(diffs) / 6
    se = (sum((d - mean) ** 2 for d in diffs) / 5 / 6) ** 0.5
    table = (out / "measured.md").read_text()
    assert "| 2 -> 4 | " in table and f"{mean:+.4f} ± {se:.4f}" in table
    assert table in capsys.readouterr().out
    assert inference_gap.main([*common, "--measure", str(out / "checkpoints" / "9.pt")]) == 2


def test_an_existing_output_and_a_bad_option_are_one_line_errors(mnist_dir, tmp_path, capsys):
    (tmp_path / "used" / "run").mkdir(parents=True)
    assert inference_gap.main(["--out", str(tmp_path / "used"), "--data-dir", mnist_dir]) == 2
    assert inference_gap.main(["--out", str(tmp_path / "new"), "--data-dir", mnist_dir,
                               "--train-opt", "no-equals-sign"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)


def test_measure_at_measures_only_there_and_keeps_every_checkpoint(tmp_path):
    spec = tiny_spec(iterations=4, checkpoint_every=1)
    data, model, sampler, tuner = build_objects(spec)
    run_dir = tmp_path / "run"
    gap = inference_gap.InferenceGap(model, sampler, data.train.x[:4], data.test.x[:4], tmp_path / "gap.jsonl",
                                     reference_steps=2, keep=(run_dir / CHECKPOINT_FILE, tmp_path / "checkpoints"),
                                     measure_at=frozenset({1, 4}))
    train(model, sampler, tuner, data, spec, run_dir, progress=False, callbacks=[gap])
    lines = [json.loads(line) for line in (tmp_path / "gap.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 4]
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["1.pt", "2.pt", "3.pt", "4.pt"]


@pytest.mark.parametrize("measure_at", ["300,x", "0", "150", ""])
def test_a_bad_measure_at_is_a_one_line_error(mnist_dir, tmp_path, capsys, measure_at):
    code = inference_gap.main(["--out", str(tmp_path / "new"), "--data-dir", mnist_dir, "--every", "300",
                               "--measure-at", measure_at])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--measure-at" in err[0]
    assert not (tmp_path / "new" / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_a_thread_count_below_one_is_a_one_line_error(mnist_dir, tmp_path, capsys, threads):
    code = inference_gap.main(["--out", str(tmp_path / "new"), "--data-dir", mnist_dir, "--threads", threads])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--threads" in err[0]
    assert not (tmp_path / "new").exists()


def test_report_writes_the_table_of_the_lines_a_stopped_run_left(tmp_path, capsys):
    out = tmp_path / "gap"
    assert inference_gap.main(["--out", str(out), "--data-dir", str(tmp_path), "--report"]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not out.exists()
    out.mkdir()
    per_image = [{name: [0.1 * i + 0.01 * k * i for k in range(4)] for name in inference_gap.MEASURES} for i in (1, 2)]
    lines = [{"iteration": 300 * (i + 1), "step_size": 0.07, **{name: sum(per_image[i][name]) / 4
                                                               for name in inference_gap.MEASURES},
              "per_image": per_image[i]} for i in (0, 1)]
    (out / "gap.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert inference_gap.main(["--out", str(out), "--data-dir", str(tmp_path), "--report"]) == 0
    table = (out / "gap.md").read_text()
    assert table == inference_gap.paired_table(lines) and table in capsys.readouterr().out
    assert "| 300 -> 600 | +0.1150 ± 0.0065 |" in table  # differences 0.10, 0.11, 0.12, 0.13
    assert sorted(path.name for path in out.iterdir()) == ["gap.jsonl", "gap.md"]


def test_an_interrupted_run_says_how_to_continue_it_in_one_line(mnist_dir, tmp_path, capsys, monkeypatch):
    def stopped(model, sampler, tuner, data, spec, run_dir, **options):
        raise interrupted(3, run_dir)

    monkeypatch.setattr(inference_gap, "train", stopped)
    out = tmp_path / "gap"
    code = inference_gap.main(["--out", str(out), "--data-dir", mnist_dir, "--iterations", "6", "--every", "3",
                               "--measure-at", "6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and err[0].startswith("error: interrupted")
    assert f"inference_gap.py --out {out} --data-dir {mnist_dir} --resume --iterations 6 --measure-at 6" in err[0]
