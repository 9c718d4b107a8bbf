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
