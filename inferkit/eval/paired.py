"""Paired comparison of two evaluations on the same test images.

``inferkit eval`` writes ``RUN/eval_per_image.json``: the test indices it used (a fixed permutation of
the test split drawn from ``subset_seed``) and, per measure, one value per image in that order. For two
runs A and B and a measure with values ``a_i``, ``b_i`` on the images both evaluated,

    d_i = b_i - a_i,   d_bar = (1/n) sum_i d_i,   se = s_d / sqrt(n),   t = d_bar / se,

with ``s_d`` the sample standard deviation of the ``d_i``. The difference is called significant when
the paired t-test's two-sided p-value (:func:`scipy.stats.ttest_rel`, ``n - 1`` degrees of freedom) is
below 0.05 and ``|d_bar| > 2 se``. Pairing removes the spread between images, which is shared by both
runs; what remains is the runs' disagreement plus each estimate's Monte Carlo noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from inferkit.errors import UserError

PER_IMAGE_FILE = "eval_per_image.json"
HIGHER_IS_BETTER = {"ais_log_likelihood": True, "ais_bits_per_dim": False, "iwae_bound": True,
                    "reconstruction_mse": False}

NOT_MEASURES = ("ais_monte_carlo_error",)
"""Per-image values saved beside the measures that describe an estimate, not a model: not compared."""


def paired_difference(a, b) -> dict[str, Any]:
    """Mean paired difference ``b - a``, its standard error, the t statistic, the two-sided p-value,
    ``n`` and whether it is significant (module docstring)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    d = (b - a)[keep]
    n = int(d.size)
    mean = float(d.mean()) if n else math.nan
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if n > 1 and se > 0:
        t = mean / se
        p = float(scipy.stats.ttest_rel(b[keep], a[keep]).pvalue)
    else:
        t, p = (math.nan, math.nan) if n < 2 or mean == 0 else (math.copysign(math.inf, mean), 0.0)
    significant = bool(p < 0.05 and abs(mean) > 2 * se) if math.isfinite(p) else False
    return {"mean_difference": mean, "standard_error": se, "t": t, "p_value": p, "examples": n,
            "significant": significant}


def read_per_image(run: str | Path) -> dict[str, Any]:
    """``RUN/eval_per_image.json`` (or the file itself), as written by ``inferkit eval``."""
    path = Path(run)
    path = path / PER_IMAGE_FILE if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"compare: {path} not found; run `inferkit eval {path.parent}` first")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"compare: {path} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(record, dict) or "indices" not in record or "measures" not in record:
        raise UserError(f"compare: {path} is not an {PER_IMAGE_FILE} (no indices / measures)")
    return record


def _flatten(measures: dict[str, Any]) -> dict[str, list]:
    """``{name: values}`` with nested measures (inpainting per mask) as ``name/pattern``."""
    flat = {}
    for name, values in measures.items():
        if isinstance(values, dict):
            flat.update({f"{name}/{key}": v for key, v in values.items()})
        else:
            flat[name] = values
    return flat


def compare_records(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Paired differences (B - A) of every measure the two per-image records share, on the test indices
    both evaluated; a :class:`UserError` when the records used different test subsets."""
    if a.get("subset_seed") != b.get("subset_seed"):
        raise UserError(f"compare: the runs used different test subsets (subset_seed {a.get('subset_seed')} vs "
                        f"{b.get('subset_seed')}); evaluate both with the same --subset-seed")
    index_a, index_b = list(a["indices"]), list(b["indices"])
    out = {}
    flat_a, flat_b = _flatten(a["measures"]), _flatten(b["measures"])
    for name in sorted((set(flat_a) & set(flat_b)) - set(NOT_MEASURES)):
        va, vb = flat_a[name], flat_b[name]
        pos_a = {index: i for i, index in enumerate(index_a[:len(va)])}
        shared = [(pos_a[index], j) for j, index in enumerate(index_b[:len(vb)]) if index in pos_a]
        if not shared:
            continue
        result = paired_difference([va[i] for i, _ in shared], [vb[j] for _, j in shared])
        result["higher_is_better"] = HIGHER_IS_BETTER.get(name.split("/")[0], False)
        out[name] = result
    return out


def format_table(name_a: str, name_b: str, rows: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of :func:`compare_records`' rows."""
    lines = [f"B = {name_b}  vs  A = {name_a}  (paired over the same test images; difference B - A)",
             f"{'measure':<34} {'n':>5} {'mean diff':>12} {'s.e.':>10} {'p':>9}  verdict"]
    for name, r in rows.items():
        if r["significant"]:
            better = (r["mean_difference"] > 0) == r["higher_is_better"]
            verdict = f"significant: {'B' if better else 'A'} better"
        else:
            verdict = "not significant"
        lines.append(f"{name:<34} {r['examples']:>5} {r['mean_difference']:>12.5g} {r['standard_error']:>10.3g} "
                     f"{r['p_value']:>9.3g}  {verdict}")
    return "\n".join(lines)
