"""The papers' Tables 1-3 on MNIST over several seeds, with paired per-image statistics.

Every cell trains one ladder generator with one sampler and evaluates it on the same seeded test
subset (:mod:`inferkit.evaluation`), so two cells of one seed are compared image by image with
:func:`inferkit.eval.paired.compare_records`: the mean paired difference, its standard error and a
paired t-test. The cells:

* Table 1: every sampler on the ladder at the main L (latent dims of the plugin's default);
* Table 2: L = 1, 3, 5 for ``shortrun`` twice: with the papers' latent dims (appendix Table 4 and
  the authors' code; they grow with L, so the ordering also measures capacity) and with the same
  total number of latent units at every L (:data:`MATCHED_DIMS`), which isolates depth;
* Table 3: K = 5, 10, 20, 40 for ``shortrun`` at the main L;
* equal wall time: ``vae`` trained for as many seconds as ``shortrun`` took on the same seed
  (its iteration count is the ``shortrun`` cell's training seconds over the ``vae`` cell's seconds
  per iteration, both measured in this process).

A claim of the papers is *reproduced* when its paired difference is significant in the papers'
direction on every seed (at least three), *contradicted* when it is significant the other way on
every seed, and *inconclusive* otherwise. Cells already evaluated (``OUT/runs/NAME/record.json``) are reused, so an
interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inferkit.eval.paired import compare_records, read_per_image

PAPER_DIMS = {1: (128,), 3: (128, 64, 32), 5: (128, 96, 64, 64, 64)}
"""Bottom-first latent dims at the papers' scale: L=3 from Table 4, L=5 from the authors' code
(``args.z_dims``, top first there), L=1 Table 4's bottom layer (the papers do not state it)."""
MATCHED_DIMS = {1: (28,), 3: (16, 8, 4), 5: (8, 6, 6, 4, 4)}
"""28 latent units at every L: L=3 is the plugin's default (16, 8, 4)."""
MEASURES = (("reconstruction_mse", "MSE (own)"), ("reconstruction_mse_reference", "MSE (reference K)"),
            ("ais_log_likelihood", "AIS log p(x)"))
"""Per-image measures: in the means tables and paired image by image."""
SET_MEASURES = (("iwae_bound", "IWAE"), ("classifier_frechet_distance", "classifier FD (not FID)"))
"""Measures of a whole run, in the means tables only (the Fréchet distance is of a sample set)."""


@dataclass(frozen=True)
class Cell:
    """One trained and evaluated run of a seed: sampler, generator shape, K and iteration count."""

    sampler: str
    num_layers: int
    latent_dims: tuple[int, ...]
    num_steps: int
    iterations: int = 0
    """0: the budget's."""
    label: str = ""
    """A name for the equal-time cell (``vae-equal-time``); empty: built from the fields."""

    def name(self, seed: int) -> str:
        dims = "-".join(map(str, self.latent_dims))
        base = self.label or f"{self.sampler}-L{self.num_layers}-z{dims}-K{self.num_steps}"
        return f"{base}-seed{seed}"


@dataclass(frozen=True)
class Claim:
    """The papers' ordering ``better`` below ``worse`` in ``measure`` (lower is better for MSE)."""

    text: str
    better: Cell
    worse: Cell
    measure: str = "reconstruction_mse"


TABLES = ("samplers", "layers-paper", "layers-matched", "steps")
"""Table 1 (samplers), Table 2 twice (layers at the papers' dims, at matched units), Table 3 (steps)."""


def table_cells(samplers: list[str], num_layers: int, num_steps: int, flow_samplers: tuple[str, ...],
                ) -> dict[str, list[Cell]]:
    """The cells of Tables 1-3, keyed by table; cells equal across tables are the same run."""
    main_dims = MATCHED_DIMS[num_layers]

    def cell(sampler: str, layers: int = num_layers, dims=main_dims, steps: int = num_steps) -> Cell:
        return Cell(sampler, layers, tuple(dims), steps if sampler in flow_samplers else 0)

    return {"samplers": [cell(s) for s in samplers],
            "layers-paper": [cell("shortrun", L, PAPER_DIMS[L]) for L in sorted(PAPER_DIMS)],
            "layers-matched": [cell("shortrun", L, MATCHED_DIMS[L]) for L in sorted(MATCHED_DIMS)],
            "steps": [cell("shortrun", steps=k) for k in (5, 10, 20, 40)]}


def equal_time_iterations(shortrun_seconds: float, vae_seconds_per_iteration: float) -> int:
    """VAE iterations that take as long as the short-run cell's training (at least one)."""
    if not (math.isfinite(shortrun_seconds) and vae_seconds_per_iteration > 0):
        raise ValueError("equal-time iterations need finite, positive timings")
    return max(1, round(shortrun_seconds / vae_seconds_per_iteration))


def claims(tables: dict[str, list[Cell]], equal_time: Cell | None) -> list[Claim]:
    """The papers' orderings that these cells can test."""
    by_sampler = {c.sampler: c for c in tables.get("samplers", [])}
    found = []
    for other in ("vae", "lvae"):
        if "shortrun" in by_sampler and other in by_sampler:
            for measure in ("reconstruction_mse", "reconstruction_mse_reference"):
                found.append(Claim(f"shortrun below {other} (equal iterations)", by_sampler["shortrun"],
                                   by_sampler[other], measure))
    if equal_time is not None and "shortrun" in by_sampler:
        found.append(Claim("shortrun below vae at equal wall time", by_sampler["shortrun"], equal_time))
    for key, what in (("layers-paper", "papers' dims"), ("layers-matched", "28 latent units")):
        cells = tables.get(key, [])
        found += [Claim(f"L={b.num_layers} below L={a.num_layers} ({what})", b, a) for a, b in itertools.pairwise(cells)]
    steps = tables.get("steps", [])
    found += [Claim(f"K={b.num_steps} below K={a.num_steps}", b, a) for a, b in itertools.pairwise(steps)]
    return found


MIN_SEEDS = 3
"""Seeds a verdict needs; with fewer the table says how the seeds there point."""


def verdict(differences: list[dict[str, Any] | None]) -> str:
    """``reproduced`` / ``contradicted`` / ``inconclusive`` from per-seed paired rows of
    ``better - worse`` (lower is better; ``None``: the seed lacks a cell); with fewer than
    :data:`MIN_SEEDS` seeds measured, ``too few seeds (k): ...`` and which way they point."""
    present = [d for d in differences if d is not None]
    below = all(d["significant"] and d["mean_difference"] < 0 for d in present)
    above = all(d["significant"] and d["mean_difference"] > 0 for d in present)
    if len(present) < MIN_SEEDS:
        way = ("significant in the papers' direction" if below else "significant against it" if above
               else "mixed or not significant")
        return f"too few seeds ({len(present)} of {MIN_SEEDS}): {way}" if present else "not measured"
    if len(present) < len(differences):
        return "inconclusive"
    return "reproduced" if below else "contradicted" if above else "inconclusive"


class CellRunner:
    """Trains and evaluates cells into ``OUT/runs/NAME``, reusing those already evaluated; with
    ``train_and_evaluate=None`` it only reads them (``None`` for a cell not evaluated yet)."""

    def __init__(self, out: Path, train_and_evaluate: Callable[[str, Any, Any, Path], dict[str, Any]] | None):
        self.out, self.train_and_evaluate = out, train_and_evaluate

    def run(self, cell: Cell, seed: int, spec, eval_config) -> dict[str, Any] | None:
        name = cell.name(seed)
        run_dir = self.out / "runs" / name
        done = run_dir / "record.json"
        if done.is_file():
            print(f"  {name}: evaluated before, reused", flush=True)
            return json.loads(done.read_text())
        if self.train_and_evaluate is None:
            return None
        if run_dir.exists():
            print(f"  {name}: an unfinished earlier attempt is replaced", flush=True)
            shutil.rmtree(run_dir)
        record = self.train_and_evaluate(name, spec, eval_config, self.out)
        record.update(cell=cell_dict(cell), seed=seed)
        done.write_text(json.dumps(record, allow_nan=True))
        return record


def cell_dict(cell: Cell) -> dict[str, Any]:
    return {"sampler": cell.sampler, "num_layers": cell.num_layers, "latent_dims": list(cell.latent_dims),
            "num_steps": cell.num_steps, "iterations": cell.iterations, "label": cell.label}


def cell_from_dict(record: dict[str, Any]) -> Cell:
    """The inverse of :func:`cell_dict` (as read back from JSON)."""
    return Cell(**{**record, "latent_dims": tuple(record["latent_dims"])})


def paired_row(out: Path, better: Cell, worse: Cell, seed: int, measure: str) -> dict[str, Any] | None:
    """The paired difference ``better - worse`` of ``measure`` on seed ``seed`` (``None``: not both run)."""
    paths = [out / "runs" / c.name(seed) for c in (worse, better)]
    if not all((p / "record.json").is_file() for p in paths):
        return None
    rows = compare_records(read_per_image(paths[0]), read_per_image(paths[1]))
    return rows.get(measure)


def _mean_se(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g} (1)"
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.fmean(values):.4g} ± {se:.2g} ({len(values)})"


def _value(record: dict[str, Any], measure: str) -> float | None:
    e = record["eval"]
    if measure in ("reconstruction_mse", "reconstruction_mse_reference"):
        return e.get(f"test_{measure}")
    block = e.get(measure)
    return block.get("mean") if isinstance(block, dict) else block


def means_table(records: dict[str, dict[str, Any]], cells: list[Cell], seeds: list[int], label) -> list[str]:
    """Mean over seeds ± standard error over seeds (number of seeds) of each measure, one row per cell."""
    measures = MEASURES + SET_MEASURES
    lines = ["| cell | " + " | ".join(title for _, title in measures) + " | s / iteration |",
             "|---|" + "---:|" * (len(measures) + 1)]
    for cell in cells:
        runs = [records[cell.name(s)] for s in seeds if cell.name(s) in records]
        values = [_mean_se([_value(r, m) for r in runs]) for m, _ in measures]
        speed = _mean_se([r["seconds_per_iteration"] for r in runs])
        lines.append(f"| {label(cell)} | " + " | ".join(values) + f" | {speed} |")
    return lines


def paired_table(out: Path, pairs: list[tuple[str, Cell, Cell, str]], seeds: list[int], with_verdict: bool) -> list[str]:
    """Rows ``text | measure | per-seed d ± s.e. (n) | verdict``, d = first cell - second cell."""
    header = "| comparison | measure | " + " | ".join(f"seed {s}" for s in seeds) + (" | verdict |" if with_verdict else " |")
    lines = [header, "|---|---|" + "---:|" * len(seeds) + ("---|" if with_verdict else "")]
    titles = dict(MEASURES)
    for text, first, second, measure in pairs:
        rows = [paired_row(out, first, second, s, measure) for s in seeds]
        cells = ["-" if r is None else (f"{r['mean_difference']:+.4g} ± {r['standard_error']:.2g} ({r['examples']})"
                                        + ("*" if r["significant"] else "")) for r in rows]
        tail = f" | {verdict(rows)} |" if with_verdict else " |"
        lines.append(f"| {text} | {titles.get(measure, measure)} | " + " | ".join(cells) + tail)
    return lines


def sampler_pairs(tables: dict[str, list[Cell]], equal_time: Cell | None) -> list[tuple[str, Cell, Cell, str]]:
    """Every Table-1 sampler (and the equal-time VAE) against ``shortrun``, for each measure."""
    samplers = tables.get("samplers", [])
    base = next((c for c in samplers if c.sampler == "shortrun"), None)
    if base is None:
        return []
    others = [c for c in samplers if c != base] + ([equal_time] if equal_time else [])
    return [(f"{c.label or c.sampler} - shortrun", c, base, m) for c in others for m, _ in MEASURES]


def with_iterations(cell: Cell, iterations: int) -> Cell:
    return replace(cell, iterations=iterations, label="vae-equal-time")
