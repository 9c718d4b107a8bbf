"""The conditional standard deviations ``sigma_l`` of a trained ladder generator, layer by layer.

    python benchmarks/ladder_sigmas.py RUN [RUN ...] [--draws 16] [--seed 0]

For each run folder of a ``ladder`` model: the top-down pass of ``--draws`` seeded prior draws,
and for each layer ``l = 1..L-1`` (bottom first) the median and the largest ``sigma_l`` over all
units and draws and, with the code's head (``sigma_head="log-variance"``, ``sigma_l =
exp(0.5 clamp(softplus(v) + 1e-8, 0, 10))``), the fraction that sits at the clamp ``e^5``, where
the clamp passes no gradient back to the head. In the MNIST preset's collapsed runs most units of
the lowest layers sit there (benchmarks/RESULTS.md, "A long MNIST run with the papers' preset").
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from inferkit_ladder.model import LOG_VARIANCE_MAX, LadderModel

from inferkit.errors import UserError
from inferkit.runs import CHECKPOINT_FILE, RunSpec, build_objects, restore_checkpoint

CLAMP = math.exp(0.5 * LOG_VARIANCE_MAX)


def sigma_stats(model: LadderModel, draws: int = 16, seed: int = 0) -> list[dict]:
    """Per layer ``l = 1..L-1``: ``{"layer", "median", "max", "at_clamp"}`` of ``sigma_l`` over
    ``draws`` prior draws (``at_clamp`` None for the softplus head, which has no clamp)."""
    with torch.no_grad():
        eps = model.sample_prior(draws, generator=torch.Generator().manual_seed(seed))
        conditionals = model.conditionals(model.center(eps))[:-1]  # the top entry is the prior's N(0, I)
    clamped = model.config.sigma_head == "log-variance"
    return [{"layer": layer, "median": float(sigma.median()), "max": float(sigma.max()),
             "at_clamp": float((sigma >= CLAMP * (1 - 1e-6)).double().mean()) if clamped else None}
            for layer, (_, sigma) in enumerate(conditionals, start=1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for run in args.runs:
        _, model, sampler, _ = build_objects(RunSpec.load(run))
        if not isinstance(model, LadderModel):
            raise UserError(f"{run} is not a ladder run (its model is {type(model).__name__})")
        state = restore_checkpoint(run / CHECKPOINT_FILE, "cpu", model, sampler)
        model.eval()
        rows = sigma_stats(model, args.draws, args.seed)
        cells = [f"l{r['layer']}: median {r['median']:.1f}, max {r['max']:.1f}"
                 + (f", at clamp {r['at_clamp']:.2f}" if r["at_clamp"] is not None else "") for r in rows]
        print(f"{run} (iteration {state['iteration']}): " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:  # not a (ladder) run folder, or a checkpoint that does not load
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
