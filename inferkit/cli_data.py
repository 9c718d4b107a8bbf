"""``inferkit data ...``: fetch data sets and weights on request, and show what is here.

``inferkit data fetch NAME`` is the only command that downloads anything; ``run`` and ``eval``
read what is on disk (:func:`inferkit.data.catalog.default_data_dir`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from inferkit.data.catalog import SOURCES, default_data_dir, source

data_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Fetch data sets and the FID Inception weights; show what is here.")
console = Console()
err_console = Console(stderr=True)

__all__ = ["data_app"]

_ROOT_HELP = ("folder holding one sub-folder per data set [default: $INFERKIT_DATA, else "
              "$XDG_CACHE_HOME/inferkit or ~/.cache/inferkit]")


@contextmanager
def _progress_bars(quiet: bool):
    """A ``progress(file, total)`` for :func:`inferkit.data.fetch.fetch` drawing rich download bars on
    stderr (``None`` when ``quiet``)."""
    if quiet:
        yield None
        return
    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=err_console, transient=False)

    def start(file: str, total: int | None) -> Callable[[int], None]:
        task = bars.add_task(file, total=total)
        return lambda n: bars.update(task, advance=n)

    with bars:
        yield start


@data_app.command("fetch")
def fetch_command(
    name: str = typer.Argument(..., help=f"what to fetch: {', '.join(SOURCES)}"),
    root: Path | None = typer.Option(None, help=_ROOT_HELP),
    mirror: str | None = typer.Option(None, help="base URL that replaces the publisher's (also "
                                      "$INFERKIT_MIRROR): URL/FILE is fetched for each file"),
    quiet: bool = typer.Option(False, help="no progress bar and no line per file"),
) -> None:
    """Download NAME's files into ROOT/NAME, each checked against its published checksum.

    A file already there and verified is not fetched again; a failed or interrupted download
    leaves nothing under the file's name."""
    from inferkit.data.fetch import fetch

    source(name)  # an unknown name fails before anything is created

    def say(line: str) -> None:
        if not quiet:
            err_console.print(line, markup=False, highlight=False, soft_wrap=True)

    with _progress_bars(quiet) as progress:
        folder = fetch(name, root=root, mirror=mirror, progress=progress, say=say)
    console.print(str(folder), markup=False, highlight=False, soft_wrap=True)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def _verified_cell(states) -> str:
    from inferkit.data.fetch import MISMATCH, MISSING, UNVERIFIED

    present = [s for s in states if s.verdict != MISSING]
    bad = [s.name for s in present if s.verdict == MISMATCH]
    if bad:
        return "CHECKSUM MISMATCH: " + ", ".join(bad)
    loose = [s.name for s in present if s.verdict == UNVERIFIED]
    if loose:
        return "unverified: " + ", ".join(loose)
    algorithms = sorted({s.algorithm for s in present if s.algorithm})
    return f"verified ({', '.join(algorithms)})" if present else "-"


@data_app.command("list")
def list_command(root: Path | None = typer.Option(None, help=_ROOT_HELP)) -> None:
    """Show each data set: whether it is here, its size, whether it is verified, and where.

    Each file present is hashed and compared with its published checksum. One line per data set,
    the folder last (never cut), so the output reads in a terminal and in a script."""
    from inferkit.data.fetch import MISSING, inspect

    rows = [("name", "fetched", "size", "checksum", "where")]
    for name, src in SOURCES.items():
        folder, states = inspect(name, root)
        present = [s for s in states if s.verdict != MISSING]
        fetched = "yes" if len(present) == len(states) else f"{len(present)} of {len(states)} files"
        size = _size(sum(s.size or 0 for s in present)) if present else f"({_size(sum(src.files.values()))} to fetch)"
        rows.append((name, fetched if present else "no", size, _verified_cell(states), str(folder)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4]
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@data_app.command("path")
def path_command(name: str = typer.Argument(..., help="a data set name (see `inferkit data list`)")) -> None:
    """Print the folder a data set is read from when no --data-dir is given.

    For scripts: --inception-weights "$(inferkit data path inception)/pt_inception-2015-12-05-6726825d.pth"."""
    source(name)
    console.print(default_data_dir(name), markup=False, highlight=False, soft_wrap=True)

