"""What the CLI tests share: run ``inferkit`` in-process and read a one-line error."""

from inferkit.cli import main

# a two-layer ladder trained 2 iterations on tiny `shapes` data, for tools that read a run folder
TINY_LADDER_RUN = ["run", "--model", "ladder", "--sampler", "shortrun", "--tuner", "fixed",
                   "--model-opt", "num_layers=2", "--model-opt", "latent_dims=4,2", "--model-opt", "nf=8",
                   "--sampler-opt", "num_steps=3", "--data-opt", "num_train=32", "--data-opt", "num_test=8",
                   "--data-opt", "image_size=16", "--batch-size", "8", "--iterations", "2", "--quiet"]


def run_cli(args, capsys):
    """``(exit code, stdout, stderr)`` of ``inferkit ARGS`` (paths and numbers are stringified)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    """The single ``error: ...`` line of a refused command (exit code 2), or an assertion error."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def train_until_crash(spec, out, iteration: int):
    """Train ``spec`` into ``out`` and crash right after the checkpoint of ``iteration`` is written
    (as a killed process would); returns the ``(data, model, sampler, tuner)`` it trained."""
    import pytest

    import inferkit.trainer as trainer_module
    from inferkit.runs import build_objects

    class Crash(Exception):
        pass

    data, model, sampler, tuner = build_objects(spec, resolve=False)
    original = trainer_module.save_atomic

    def save_then_crash(obj, path):
        original(obj, path)
        if obj["iteration"] == iteration:
            raise Crash

    trainer_module.save_atomic = save_then_crash
    try:
        with pytest.raises(Crash):
            trainer_module.train(model, sampler, tuner, data, spec, out, progress=False)
    finally:
        trainer_module.save_atomic = original
    return data, model, sampler, tuner


SLOW_CLI = """
import os, sys, time
import inferkit.trainer as trainer
get = trainer.BatchSource.get
seconds, hold, hold_from = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])

def slow_get(self, t):
    time.sleep(seconds)
    while hold and t >= hold_from and os.path.exists(hold):
        time.sleep(0.02)
    return get(self, t)

trainer.BatchSource.get = slow_get
from inferkit.cli import main
sys.exit(main(sys.argv[4:]))
"""


def start_cli(args, *, seconds_per_iteration: float = 0.0, hold=None, cwd=None):
    """``inferkit ARGS`` in a new process (``subprocess.Popen``, text pipes), each iteration slowed by
    ``seconds_per_iteration``; with ``hold=(path, t)`` iterations from ``t`` on wait while the file
    ``path`` exists (the numbers do not change), for tests that signal or race a run."""
    import os
    import subprocess
    import sys

    hold_path, hold_from = hold if hold is not None else ("", 0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", SLOW_CLI, str(seconds_per_iteration), str(hold_path), str(hold_from),
               *[str(a) for a in args]]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=cwd)


def wait_for_records(path, count: int, process, timeout: float = 120.0) -> None:
    """Wait until the JSON-lines file ``path`` holds ``count`` lines while ``process`` still runs."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended early ({process.returncode}): {process.stderr.read()[-3000:]}")
        if path.is_file() and path.read_text().count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {count} lines in {timeout} s")
