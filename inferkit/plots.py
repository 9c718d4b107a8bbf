"""PNG figures of a tuner's history (the papers' Figures 6 and 7, for any tuner).

A tuning record (one line of ``RUN/tuner.jsonl``, or ``RUN/tune.json``) holds the training
``iteration`` t, the chosen ``hyperparameters`` (``step_size``: a number, or a list with one entry
per latent layer or per step), the chosen ``objective`` J(s*), the sampler's layout ``per``, and the
``history`` of points the tuner tried, each with its ``step_size``, ``J`` and ``invertible``.

- :func:`plot_objective_curves`: ``J(s) = E[log q_s(z) - log p(x, z)]`` against s, one curve per
  tuning, coloured by t (Figure 7), one line through every finite point; points where the flow is
  not invertible (J a lower bound on the KL there) are crosses, the others dots. A scalar s gives the curve J(s) (points sorted by s: the tuners fix
  their ``z_0`` draws, so J is one function of s within a tuning); a vector s (a ``kl-grad`` path)
  gives one panel per entry, J along the path in the order it was taken, against that entry.
- :func:`plot_chosen_step_size`: the chosen s against t (Figure 6), one line per entry.
- :func:`plot_run_tuning`: both, from ``RUN/tuner.jsonl``, into ``RUN/tuner_objective.png`` and
  ``RUN/tuner_step_size.png``.

The pure helpers :func:`objective_curves` and :func:`chosen_step_sizes` turn records into the
arrays that are drawn; the plot functions return them. Figures are drawn with matplotlib's Agg
canvas (no pyplot state, no display) and written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TUNER_FILE = "tuner.jsonl"
OBJECTIVE_PNG = "tuner_objective.png"
STEP_SIZE_PNG = "tuner_step_size.png"
MAX_LEGEND_CURVES = 8  # more curves than this get a colourbar instead of a legend


@dataclass
class ObjectiveCurve:
    """The points of one tuning: ``step_sizes`` ``[N, E]`` (E = 1 for a shared s), ``J`` ``[N]``,
    ``invertible`` ``[N]``, in drawing order; ``chosen_step_size`` ``[E]`` and ``chosen_J``."""

    iteration: int
    step_sizes: np.ndarray
    J: np.ndarray
    invertible: np.ndarray
    chosen_step_size: np.ndarray | None
    chosen_J: float


@dataclass
class StepSizeSeries:
    """Chosen step sizes: ``iterations`` ``[T]``, ``step_sizes`` ``[T, E]``, one label per entry."""

    iterations: np.ndarray
    step_sizes: np.ndarray
    labels: list[str]


# -- records -> arrays ------------------------------------------------------------------------------
def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``tuner.jsonl`` file (``[]`` when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _vector(value: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)


def entry_labels(size: int, per: str | None) -> list[str]:
    """``"s"`` for one shared step size, ``"layer l"`` / ``"step k"`` (1-based) for a vector."""
    if size == 1:
        return ["s"]
    word = {"layer": "layer", "step": "step"}.get(per or "", "entry")
    return [f"{word} {i + 1}" for i in range(size)]


def objective_curves(records: Sequence[dict[str, Any]]) -> list[ObjectiveCurve]:
    """One curve per record with a history. A scalar s is sorted by s (J is a function of s within a
    tuning); a vector s keeps the order of the path. Points with a non-finite J (not evaluated) are dropped."""
    curves = []
    for record in records:
        points = [p for p in record.get("history") or [] if p.get("step_size") is not None]
        points = [p for p in points if p.get("J") is not None and math.isfinite(float(p["J"]))]
        if not points:
            continue
        step_sizes = np.stack([_vector(p["step_size"]) for p in points])
        J = np.array([float(p["J"]) for p in points])
        invertible = np.array([bool(p.get("invertible", True)) for p in points])
        if step_sizes.shape[1] == 1:
            order = np.argsort(step_sizes[:, 0], kind="stable")
            step_sizes, J, invertible = step_sizes[order], J[order], invertible[order]
        # the point the tuner chose (kl-grid marks it; the step size it applied can lie between points)
        chosen = next((p["step_size"] for p in points if p.get("chosen")), None)
        if chosen is None:
            chosen = (record.get("hyperparameters") or {}).get("step_size")
        objective = record.get("objective")
        curves.append(ObjectiveCurve(
            iteration=int(record.get("iteration", len(curves))), step_sizes=step_sizes, J=J,
            invertible=invertible, chosen_step_size=None if chosen is None else _vector(chosen),
            chosen_J=math.nan if objective is None else float(objective)))
    return curves


def chosen_step_sizes(records: Sequence[dict[str, Any]], *, tuned_only: bool = True) -> StepSizeSeries:
    """The chosen ``step_size`` of every record against its training iteration. With ``tuned_only``
    records with an empty history (a tuner that evaluated nothing, e.g. ``fixed``) are left out."""
    kept = [r for r in records if (r.get("hyperparameters") or {}).get("step_size") is not None
            and (r.get("history") or not tuned_only)]
    if not kept:
        return StepSizeSeries(np.zeros(0, dtype=np.int64), np.zeros((0, 1)), ["s"])
    vectors = [_vector(r["hyperparameters"]["step_size"]) for r in kept]
    size = max(v.size for v in vectors)
    step_sizes = np.full((len(kept), size), np.nan)
    for row, v in zip(step_sizes, vectors):
        row[: v.size] = v
    per = next((r.get("per") for r in reversed(kept) if r.get("per")), None)
    iterations = np.array([int(r["iteration"]) for r in kept], dtype=np.int64)
    return StepSizeSeries(iterations, step_sizes, entry_labels(size, per))


# -- drawing ----------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png")
    os.replace(temporary, path)
    return path


def _log_scale_wanted(values: np.ndarray) -> bool:
    values = values[np.isfinite(values) & (values > 0)]
    return values.size > 1 and values.max() / values.min() > 20


def _colours(iterations: Sequence[int]):
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    low, high = min(iterations), max(iterations)
    norm = Normalize(vmin=low, vmax=high if high > low else low + 1)
    cmap = colormaps["viridis"]
    return norm, cmap, [cmap(norm(t)) for t in iterations]


def plot_objective_curves(records: Sequence[dict[str, Any]], path: str | Path, *, title: str | None = None,
                          relative: bool | None = None) -> list[ObjectiveCurve]:
    """Write ``J`` against ``s`` for every tuning in ``records`` to ``path`` (PNG); return the curves
    drawn. Nothing is written when no record has a history.

    With ``relative`` (the default when there are several curves) each curve is drawn as
    ``J(s) - J(s*)``, s* the chosen point: on one batch and one model that is
    ``KL(q_s || p(z|x)) - KL(q_s* || p(z|x))``, free of the ``log p(x)`` offset that moves J from one
    training iteration to the next."""
    curves = objective_curves(records)
    if not curves:
        return curves
    relative = len(curves) > 1 if relative is None else relative
    per = next((r.get("per") for r in reversed(records) if r.get("per")), None)
    size = max(c.step_sizes.shape[1] for c in curves)
    labels = entry_labels(size, per)
    columns = min(size, 4)
    rows = math.ceil(size / columns)
    figure = _figure(7.0, 4.8) if size == 1 else _figure(1.0 + 3.6 * columns, 1.0 + 3.0 * rows)
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True).reshape(-1)
    for unused in axes[size:]:
        unused.set_visible(False)
    norm, cmap, colours = _colours([c.iteration for c in curves])
    for entry, axis in enumerate(axes[:size]):
        for curve, colour in zip(curves, colours):
            if entry >= curve.step_sizes.shape[1]:
                continue
            s = curve.step_sizes[:, entry]
            good = curve.invertible
            offset = _reference_J(curve) if relative else 0.0
            # One line through every finite point (J decides the choice); dots where the flow is
            # invertible, crosses where it is not.
            axis.plot(s, curve.J - offset, "-", color=colour, linewidth=1.2, label=f"t = {curve.iteration}")
            axis.plot(s[good], curve.J[good] - offset, "o", color=colour, markersize=3, linestyle="none")
            if (~good).any():
                axis.plot(s[~good], curve.J[~good] - offset, "x", color=colour, markersize=6, linestyle="none")
            if curve.chosen_step_size is not None and entry < curve.chosen_step_size.size \
                    and math.isfinite(curve.chosen_J):
                axis.plot([curve.chosen_step_size[entry]], [curve.chosen_J - offset], "*", color=colour, markersize=11,
                          markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
        all_s = np.concatenate([c.step_sizes[:, entry] for c in curves if entry < c.step_sizes.shape[1]])
        if _log_scale_wanted(all_s):
            _log_axis(axis.xaxis, axis.set_xscale)
        axis.set_xlabel("step size s" if size == 1 else f"step size s ({labels[entry]})")
        axis.grid(alpha=0.3)
    for axis in axes[::columns][:rows]:
        axis.set_ylabel("J(s) - J(s*)" if relative else "J(s) = E[log q_s(z) - log p(x, z)]")
    _mark_legend(figure, axes[0], curves, norm, cmap, axes[:size])
    path_note = " (J along the tuner's path)" if size > 1 else ""
    note = "; J(s) - J(s*) = KL(q_s) - KL(q_s*)" if relative else ""
    figure.suptitle((title or "KL objective of the step size") + path_note
                    + "\n\u25cf invertible   \u00d7 not invertible   \u2605 chosen s*" + note, fontsize=10)
    _save(figure, path)
    return curves


def _reference_J(curve: ObjectiveCurve) -> float:
    """J at the chosen point (the record's objective), else the lowest invertible J of the curve."""
    if math.isfinite(curve.chosen_J):
        return curve.chosen_J
    usable = curve.J[curve.invertible]
    return float(usable.min()) if usable.size else 0.0


def _log_axis(axis, set_scale) -> None:
    """A log axis labelled 1, 2, 5 x 10^k in plain numbers (no crowded minor labels)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def _mark_legend(figure, axis, curves, norm, cmap, axes) -> None:
    if len(curves) <= MAX_LEGEND_CURVES:
        axis.legend(fontsize=8, title="training iteration", title_fontsize=8)
        return
    from matplotlib.cm import ScalarMappable

    mappable = ScalarMappable(norm=norm, cmap=cmap)
    figure.colorbar(mappable, ax=list(axes), label="training iteration t", shrink=0.9)


def plot_chosen_step_size(records: Sequence[dict[str, Any]], path: str | Path, *,
                          title: str | None = None) -> StepSizeSeries:
    """Write the chosen step size against the training iteration to ``path`` (PNG), one line per entry
    of s; return the series drawn. Nothing is written when no record was tuned."""
    series = chosen_step_sizes(records)
    if series.iterations.size == 0:
        return series
    size = series.step_sizes.shape[1]
    figure = _figure(7.5 if size <= 8 else 9.5, 4.5)
    axis = figure.subplots()
    from matplotlib import colormaps

    cmap = colormaps["tab10" if size <= 10 else "viridis"]
    for entry, label in enumerate(series.labels):
        colour = cmap(entry % 10) if size <= 10 else cmap(entry / max(size - 1, 1))
        axis.plot(series.iterations, series.step_sizes[:, entry], "-o", markersize=3, color=colour, label=label)
    if _log_scale_wanted(series.step_sizes.reshape(-1)):
        _log_axis(axis.yaxis, axis.set_yscale)
    axis.set_xlabel("training iteration t")
    axis.set_ylabel("chosen step size s")
    axis.grid(alpha=0.3)
    if size > 1:
        axis.legend(fontsize=8, ncol=1 if size <= 8 else 2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axis.set_title(title or "Step size chosen by the tuner", fontsize=10)
    _save(figure, path)
    return series


def plot_run_tuning(run_dir: str | Path) -> list[Path]:
    """Write ``tuner_objective.png`` and ``tuner_step_size.png`` in ``run_dir`` from its ``tuner.jsonl``;
    return the files written (none when there is no tuning history, e.g. ``--tuner fixed``)."""
    run_dir = Path(run_dir)
    records = read_records(run_dir / TUNER_FILE)
    if not any(r.get("history") for r in records):
        return []
    name = _tuner_name(run_dir)
    label = f"tuner {name}" if name else "tuner"
    written = []
    if plot_objective_curves(records, run_dir / OBJECTIVE_PNG, title=f"{label}: J(s) over training"):
        written.append(run_dir / OBJECTIVE_PNG)
    if plot_chosen_step_size(records, run_dir / STEP_SIZE_PNG,
                             title=f"{label}: chosen step size over training").iterations.size:
        written.append(run_dir / STEP_SIZE_PNG)
    return written


def _tuner_name(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "config.json").read_text())["tuner"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
