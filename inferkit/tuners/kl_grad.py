"""The ``kl-grad`` tuner: gradient descent on ``J(s)`` through the flow and its log-determinant.

    J(s) = E_{z_0 ~ p_0}[ log p_0(z_0) - log|det dF_s/dz_0| - log p(x, F_s(z_0)) ]
    u <- Adam(u, grad_u J(exp(u))),   s = exp(u)   (so every step size stays positive)

Works for whatever shape the sampler's ``step_size`` has: one shared s, one per latent layer
(``per="layer"``) or one per step (``per="step"``, s_1..s_K). The ``z_0`` draws (and noise, probes)
are fixed by ``seed`` for the whole descent, so J is one deterministic function of s (a sample
average) and the stopping tolerance means what it says.

An iterate where some ``I + S_k H_k`` has a non-positive eigenvalue (F not invertible, J not a KL) is
rejected: the descent returns to the last invertible iterate and halves its learning rate. The
tuner keeps the invertible iterate with the lowest J. ``objective="energy"`` minimises
``E[-log p(x, F_s(z_0))]`` alone (no entropy term): the mode-seeking objective that drives s too
large; it is here to show why the entropy term matters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Model, Sampler, Tuner, TuneResult
from inferkit.tuners.kl_common import KLObjectiveOptions, require_step_size

OBJECTIVES = ("kl", "energy")


@contextmanager
def differentiable_step_size(sampler: Sampler, step_size: Tensor) -> Iterator[None]:
    """Let the sampler read ``step_size`` (a tensor in an autograd graph) in place of its buffer for
    the duration of the block; the buffer object is put back afterwards, whatever happens."""
    buffer = sampler.step_size
    sampler.step_size = step_size
    try:
        yield
    finally:
        sampler.step_size = buffer


class KLGrad(Tuner):
    """Adam on ``log s`` minimising ``J(s)``.

    Args:
        learning_rate: Adam's learning rate on ``log s``.
        max_iterations: gradient steps at most (the budget).
        tolerance, patience: stop once ``max |Delta log s| < tolerance`` for ``patience`` steps running.
        objective: ``"kl"`` (J) or ``"energy"`` (``E[-log p(x, F(z_0))]``, no entropy).
        max_shrinks: halvings of the initial s allowed when the flow is not invertible there.
        num_samples, batch_size, logdet, seed, num_probes, lanczos_steps: the estimate of J
            (:class:`~inferkit.tuners.kl_common.KLObjectiveOptions`).
    """

    def __init__(self, learning_rate: float = 0.05, max_iterations: int = 100, tolerance: float = 1e-3,
                 patience: int = 3, objective: str = "kl", max_shrinks: int = 8, num_samples: int = 1,
                 batch_size: int = 4, logdet: str = "stepwise", seed: int = 0, num_probes: int = 4,
                 lanczos_steps: int = 12):
        if not (learning_rate > 0 and math.isfinite(learning_rate)):
            raise UserError(f"kl-grad: learning_rate must be a positive number, got {learning_rate}")
        if max_iterations < 1 or patience < 1 or max_shrinks < 0:
            raise UserError("kl-grad: max_iterations and patience must be >= 1 and max_shrinks >= 0")
        if not tolerance > 0:
            raise UserError(f"kl-grad: tolerance must be positive, got {tolerance}")
        if objective not in OBJECTIVES:
            raise UserError(f"kl-grad: objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.objective = KLObjectiveOptions(num_samples=num_samples, batch_size=batch_size, logdet=logdet,
                                            seed=seed, num_probes=num_probes, lanczos_steps=lanczos_steps)
        self.objective.validate("kl-grad")
        self.learning_rate = learning_rate
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        self.patience = patience
        self.target = objective
        self.max_shrinks = max_shrinks

    def check(self, model: Model, sampler: Sampler) -> None:
        """Refuse, before training starts, a sampler the KL objective does not apply to."""
        require_step_size("kl-grad", sampler)

    def tune(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None = None) -> TuneResult:
        step_size = require_step_size("kl-grad", sampler)
        x, mask = self.objective.select(x, mask)
        previous = step_size.detach().clone()
        log_step = previous.log().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([log_step], lr=self.learning_rate)
        history: list[dict] = []
        best: dict | None = None
        last_good: Tensor | None = None
        shrinks, calm, stop = 0, 0, "budget"
        try:
            for iteration in range(self.max_iterations):
                with differentiable_step_size(sampler, log_step.exp()):
                    per_example, info = self.objective.evaluate(model, sampler, x, mask, differentiable=True,
                                                                entropy=self.target == "kl")
                objective = per_example.mean()
                value = float(objective.detach())
                point = {"iteration": iteration, "step_size": _as_number(log_step.detach().exp()), "J": value,
                         "invertible": info.invertible, "min_eigenvalue": info.min_eigenvalue,
                         "learning_rate": optimizer.param_groups[0]["lr"]}
                history.append(point)
                if not (info.invertible and math.isfinite(value)):
                    with torch.no_grad():
                        if last_good is None:  # not even the start is usable: halve s and retry
                            shrinks += 1
                            if shrinks > self.max_shrinks:
                                stop = "not invertible"
                                break
                            log_step.sub_(math.log(2.0))
                        else:  # overshot: back to the last invertible iterate, smaller steps
                            log_step.copy_(last_good)
                            optimizer = torch.optim.Adam([log_step], lr=optimizer.param_groups[0]["lr"] * 0.5)
                    continue
                if best is None or value < best["J"]:
                    best = {"J": value, "log_step": log_step.detach().clone()}
                (gradient,) = torch.autograd.grad(objective, log_step)
                last_good = log_step.detach().clone()
                log_step.grad = gradient
                optimizer.step()
                point["gradient_norm"] = float(gradient.norm())
                moved = float((log_step.detach() - last_good).abs().max())
                calm = calm + 1 if moved < self.tolerance else 0
                if calm >= self.patience:
                    stop = "converged"
                    break
        except BaseException:  # leave the sampler as it was found
            with torch.no_grad():
                step_size.copy_(previous)
            raise
        if best is None:
            with torch.no_grad():
                step_size.copy_(previous)
            raise UserError(f"kl-grad: the flow is not invertible at the sampler's step size, even halved "
                            f"{self.max_shrinks} times; start from a smaller step size (--sampler-opt "
                            "step_size=...) or raise max_shrinks")
        with torch.no_grad():
            step_size.copy_(best["log_step"].exp())
        if history:
            history[-1]["stop"] = stop
        return TuneResult(hyperparameters={"step_size": step_size.detach().clone()}, objective=best["J"],
                          history=history)


def _as_number(value: Tensor) -> float | list[float]:
    """A 0-dim step size as a float, a vector as a list (JSON-friendly history)."""
    return float(value) if value.dim() == 0 else [float(v) for v in value]
