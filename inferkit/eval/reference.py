"""One common reference inference for comparing generators trained with different samplers:
noise-free short-run gradient flow run long (K = 200 by default) from the prior,

    z_{k+1} = z_k + (s^2 / 2) grad_z log p(x, z_k),

so every generator is judged by how well *it* explains test images, not by its own sampler. The
step size ``s`` (the Langevin convention of :mod:`inferkit.samplers.units`) is given, or chosen from a
grid whose gradient coefficients ``s^2 / 2`` halve from 0.1 to 2e-4, as the one with the highest mean
``log p(x, z_K)`` on a selection batch (a too-large step diverges and scores low).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.interfaces import Model
from inferkit.samplers.shortrun import ShortRun

STEP_SIZE_GRID = tuple(math.sqrt(2 * 0.1 * 0.5 ** i) for i in range(10))  # s = 0.447 .. 0.0198


def choose_step_size(model: Model, x: Tensor, num_steps: int, *, seed: int = 0,
                     grid: tuple[float, ...] = STEP_SIZE_GRID) -> tuple[float, list[dict[str, float]]]:
    """The grid step size with the highest mean ``log p(x, z_K)`` after ``num_steps`` steps, and
    every point tried. Walks the grid from large to small and stops two points after the best."""
    history: list[dict[str, float]] = []
    best, best_value, since_best = grid[-1], -math.inf, 0
    for step_size in grid:
        sampler = ShortRun(num_steps=num_steps, step_size=step_size)
        z = sampler.infer(model, x, generator=torch.Generator(device=x.device).manual_seed(seed)).z
        with torch.no_grad():
            value = float(model.log_joint(x, z).double().mean())
        if not math.isfinite(value):
            value = -math.inf
        history.append({"step_size": step_size, "mean_log_joint": value})
        if value > best_value:
            best, best_value, since_best = step_size, value, 0
        elif math.isfinite(best_value):
            since_best += 1
            if since_best >= 2:
                break
    return best, history


def reference_sampler(model: Model, x_select: Tensor, *, num_steps: int = 200, step_size: float | None = None,
                      seed: int = 0) -> tuple[ShortRun, dict]:
    """The reference sampler and a record of how its step size was set."""
    record: dict = {"num_steps": num_steps}
    if step_size is None:
        step_size, history = choose_step_size(model, x_select, num_steps, seed=seed)
        record["step_size_search"] = history
    record["step_size"] = step_size
    return ShortRun(num_steps=num_steps, step_size=step_size).to(x_select.device), record
