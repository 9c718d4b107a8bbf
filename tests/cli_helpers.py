"""What the CLI tests share: run ``inferkit`` in-process and read a one-line error."""

from inferkit.cli import main


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
