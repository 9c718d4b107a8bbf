"""The ``kl-grad`` tuner: gradient descent on ``J(s)`` through the flow and its log-determinant.

    J(s) = E_{z_0 ~ p_0}[ log p_0(z_0) - log|det dF_s/dz_0| - log p(x, F_s(z_0)) ]
    u <- Adam(u, grad_u J(exp(u))),   s = exp(u)   (so every step size stays positive)

With ``parameters="step_size,momentum"`` a momentum sampler's coefficient is tuned as well, as
``mu = sigmoid(u_mu)`` (so it stays in (0, 1)).

Works for whatever shape the sampler's ``step_size`` has: one shared s, one per latent layer
(``per="layer"``) or one per step (``per="step"``, s_1..s_K). The ``z_0`` draws (and noise, probes)
are fixed by ``seed`` for the whole descent, so J is one deterministic function of s (a sample
average) and the stopping tolerance means what it says.

Here ``s`` is the sampler's step size in its own units (the authors' ``s`` by default, with
gradient coefficient ``s^2 / 2``: :mod:`inferkit.samplers.units`), so the descent is on ``log s``.

An iterate where J is not finite (the flow diverged) is rejected: the descent returns to the last
usable iterate and halves its learning rate. With ``require_invertible``, so is an iterate where some
``I + S_k H_k`` has a non-positive eigenvalue (F not invertible, J then a lower bound on the KL rather
than the KL; see :mod:`inferkit.tuners.kl_grid` for why that rule holds s far below the argmin of J
on a sharp generator). The tuner keeps the usable iterate with the lowest J. ``objective="energy"`` minimises
``E[-log p(x, F_s(z_0))]`` alone (no entropy term): the mode-seeking objective that drives s too
large; it is here to show why the entropy term matters. The sampler is never changed: the tuner
returns the best iterate as a :class:`~inferkit.interfaces.TuneResult`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Model, Reduce, Sampler, Tuner, TuneResult, require_real_latents
from inferkit.tuners.kl_common import (
    KLObjectiveOptions,
    count_processes,
    mean_over_processes,
    require_step_size,
)

OBJECTIVES = ("kl", "energy")


# Unconstrained coordinates u of each tunable hyperparameter: s = exp(u) > 0, mu = sigmoid(u) in (0, 1).
TRANSFORMS = {
    "step_size": (torch.log, torch.exp),
    "momentum": (torch.logit, torch.sigmoid),
}


class KLGrad(Tuner):
    """Adam on ``log s`` minimising ``J(s)``.

    Args:
        learning_rate: Adam's learning rate on ``log s``.
        max_iterations: gradient steps at most (the budget).
        tolerance, patience: stop once ``max |Delta log s| < tolerance`` for ``patience`` steps running.
        objective: ``"kl"`` (J) or ``"energy"`` (``E[-log p(x, F(z_0))]``, no entropy).
        max_shrinks: halvings of the initial s allowed when J is not usable there.
        require_invertible: accept only iterates where the flow is invertible (default: any finite J).
        parameters: the hyperparameters to tune: ``step_size`` and optionally ``momentum``.
        num_samples, batch_size, logdet, seed, num_probes, lanczos_steps: the estimate of J
            (:class:`~inferkit.tuners.kl_common.KLObjectiveOptions`).
    """

    def __init__(self, learning_rate: float = 0.025, max_iterations: int = 100, tolerance: float = 5e-4,
                 patience: int = 3, objective: str = "kl", max_shrinks: int = 8,
                 parameters: tuple[str, ...] = ("step_size",), num_samples: int = 1, batch_size: int = 4,
                 logdet: str = "stepwise", seed: int = 0, num_probes: int = 4, lanczos_steps: int = 4,
                 require_invertible: bool = False):
        if not (learning_rate > 0 and math.isfinite(learning_rate)):
            raise UserError(f"kl-grad: learning_rate must be a positive number, got {learning_rate}")
        if max_iterations < 1 or patience < 1 or max_shrinks < 0:
            raise UserError("kl-grad: max_iterations and patience must be >= 1 and max_shrinks >= 0")
        if not tolerance > 0:
            raise UserError(f"kl-grad: tolerance must be positive, got {tolerance}")
        if objective not in OBJECTIVES:
            raise UserError(f"kl-grad: objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        parameters = (parameters,) if isinstance(parameters, str) else tuple(parameters)
        unknown = [name for name in parameters if name not in TRANSFORMS]
        if not parameters or "step_size" not in parameters or unknown:
            raise UserError(f"kl-grad: parameters must include step_size and be among {', '.join(TRANSFORMS)}, "
                            f"got {','.join(parameters) or 'nothing'}")
        self.objective = KLObjectiveOptions(num_samples=num_samples, batch_size=batch_size, logdet=logdet,
                                            seed=seed, num_probes=num_probes, lanczos_steps=lanczos_steps)
        self.objective.validate("kl-grad")
        self.learning_rate = learning_rate
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        self.patience = patience
        self.target = objective
        self.max_shrinks = max_shrinks
        self.parameters = parameters
        self.require_invertible = bool(require_invertible)

    def check(self, model: Model, sampler: Sampler) -> None:
        """Refuse, before training starts, a model or sampler the KL objective does not apply to."""
        require_real_latents("kl-grad", model)
        self._tunable(sampler)

    def _tunable(self, sampler: Sampler) -> dict[str, Tensor]:
        """The current values of the hyperparameters to tune (a UserError if the sampler lacks one)."""
        require_step_size("kl-grad", sampler)
        current = sampler.hyperparameters()
        missing = [name for name in self.parameters if name not in current]
        if missing:
            raise UserError(f"kl-grad: sampler {type(sampler).__name__} has no {', '.join(missing)} to tune; "
                            f"it has {', '.join(current)}")
        return {name: current[name] for name in self.parameters}

    def tune(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None = None, *,
             reduce: Reduce | None = None) -> TuneResult:
        start = self._tunable(sampler)
        x, mask = self.objective.select(x, mask)
        history, best = self._descend(model, sampler, x, mask, start, reduce)
        if best is None:
            why = "the flow is not invertible" if self.require_invertible else "J is not finite (the flow diverges)"
            raise UserError(f"kl-grad: {why} at the sampler's step size, even halved {self.max_shrinks} times; "
                            "start from a smaller step size (--sampler-opt step_size=...) or raise max_shrinks")
        return TuneResult(hyperparameters=best["values"], objective=best["J"], history=history, per=sampler.per)

    def _descend(self, model: Model, sampler: Sampler, x: Tensor, mask: Tensor | None,
                 start: dict[str, Tensor], reduce: Reduce | None) -> tuple[list[dict], dict | None]:
        """Adam on the unconstrained ``u`` from ``start``: the history of every iterate and the best
        usable one (``{"J", "values"}``, or None when not even a halved start was usable)."""
        free = {name: TRANSFORMS[name][0](value.detach().clone()).clone().requires_grad_(True)
                for name, value in start.items()}
        leaves = list(free.values())
        optimizer = torch.optim.Adam(leaves, lr=self.learning_rate)
        processes = count_processes(reduce, x.device)
        history: list[dict] = []
        best: dict | None = None
        last_good: dict[str, Tensor] | None = None
        shrinks, calm, stop = 0, 0, "budget"
        for iteration in range(self.max_iterations):
            values = {name: TRANSFORMS[name][1](u) for name, u in free.items()}
            result = self.objective.evaluate(model, sampler, x, mask, values, differentiable=True,
                                             entropy=self.target == "kl")
            objective = result.objective.mean()
            value, invertible = mean_over_processes(objective, result.info.invertible, reduce)  # same everywhere
            point = {"iteration": iteration, **{name: _as_number(v.detach()) for name, v in values.items()},
                     "J": value, "invertible": invertible, "min_eigenvalue": result.info.min_eigenvalue,
                     "learning_rate": optimizer.param_groups[0]["lr"]}
            history.append(point)
            if not (math.isfinite(value) and (invertible or not self.require_invertible)):
                with torch.no_grad():
                    if last_good is None:  # not even the start is usable: halve s and retry
                        shrinks += 1
                        if shrinks > self.max_shrinks:
                            stop = "not invertible" if self.require_invertible else "not finite"
                            break
                        free["step_size"].sub_(math.log(2.0))
                    else:  # overshot: back to the last invertible iterate, smaller steps
                        for name, u in free.items():
                            u.copy_(last_good[name])
                        optimizer = torch.optim.Adam(leaves, lr=optimizer.param_groups[0]["lr"] * 0.5)
                continue
            if best is None or value < best["J"]:
                best = {"J": value, "values": {name: v.detach().clone() for name, v in values.items()}}
            gradients = list(torch.autograd.grad(objective, leaves))
            if reduce is not None:  # the mean over processes
                gradients = [reduce(g) / processes for g in gradients]
            last_good = {name: u.detach().clone() for name, u in free.items()}
            for leaf, gradient in zip(leaves, gradients):
                leaf.grad = gradient
            optimizer.step()
            point["gradient_norm"] = float(torch.cat([g.reshape(-1) for g in gradients]).norm())
            moved = max(float((free[name].detach() - last_good[name]).abs().max()) for name in free)
            calm = calm + 1 if moved < self.tolerance else 0
            if calm >= self.patience:
                stop = "converged"
                break
        if history:
            history[-1]["stop"] = stop
        return history, best


def _as_number(value: Tensor) -> float | list[float]:
    """A 0-dim hyperparameter as a float, a vector as a list (JSON-friendly history)."""
    return float(value) if value.dim() == 0 else [float(v) for v in value]
