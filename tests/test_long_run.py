"""``benchmarks/long_run.py``: segments that resume one run with the schedules of the planned total, a
test-MSE point per segment, and a second invocation that continues where the first stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import long_run

TINY = ["--model", "ladder", "--sampler", "shortrun", "--sampler-opt", "num_steps=2", "--tuner", "fixed",
        "--data", "mnist", "--data-opt", "num_train=32", "--data-opt", "num_test=16", "--batch-size", "8",
        "--train-opt", "checkpoint_every=2", "--train-opt", "log_every=1", "--train-opt", "lr_milestones=0.5", "--train-opt", "lr_gamma=0.1"]


def test_segments_follow_the_planned_schedule_and_a_second_call_continues(mnist_dir, tmp_path):
    out = tmp_path / "long"
    common = ["--out", str(out), "--data-dir", mnist_dir, "--planned", "8", "--segment", "2", "--test-examples", "8"]
    assert long_run.main([*common, "--until", "4", "--", *TINY]) == 0
    points = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [p["iteration"] for p in points] == [2, 4]
    config = json.loads((out / "run" / "config.json").read_text())["train"]
    assert config["schedule_iterations"] == 8 and config["iterations"] == 4
    assert long_run.main([*common, "--", *TINY]) == 0  # continues from 4 to the planned 8
    points = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [p["iteration"] for p in points] == [2, 4, 6, 8]
    assert all(0 < p["test_mse"] < 10 for p in points)
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = {m["iteration"]: m["learning_rate"] for m in metrics}
    assert rates[3] == 1e-3 and abs(rates[4] - 1e-4) < 1e-12  # the decay at half of 8, not of a segment
    assert "| 8 |" in (out / "curve.md").read_text()


def test_a_bad_run_option_is_the_childs_one_line_error_and_its_exit_code(mnist_dir, tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "long_run.py"), "--out", str(tmp_path / "long"),
               "--data-dir", mnist_dir, "--planned", "4", "--segment", "2", "--", *TINY,
               "--tuner-opt", "logdet=exact"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    expected = "error: tuner 'fixed' has no option 'logdet'; its options are: step_size"
    assert done.stderr.strip().splitlines() == [expected]
