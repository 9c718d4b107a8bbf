"""The run's optimiser: Adam for every trained parameter except those a model hands to SGD
(:class:`~inferkit.interfaces.HasSGDGroups`), stepped, scheduled and checkpointed as one.

At iteration ``t`` with the run's rate ``eta_t`` (first rate ``eta_0``), Adam's groups use ``eta_t`` and
an SGD group with rate ``eta'`` uses ``eta' * eta_t / eta_0``: both follow the run's step-wise decay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from inferkit.interfaces import HasSGDGroups, SGDGroup

BASE_RATE = "base_lr"
"""The key of an SGD parameter group holding its own rate ``eta'`` (saved in the state dict with it)."""


def model_sgd_groups(model: torch.nn.Module) -> list[SGDGroup]:
    """The model's SGD groups (none unless it is a :class:`HasSGDGroups`)."""
    return list(model.sgd_groups()) if isinstance(model, HasSGDGroups) else []


class RunOptimizer:
    """Adam (``learning_rate``, ``betas``) over ``parameters`` less those in ``sgd_groups``, and one
    ``torch.optim.SGD`` over the groups. With no SGD group its state dict is Adam's own."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], sgd_groups: Sequence[SGDGroup], *,
                 learning_rate: float, betas: tuple[float, float]) -> None:
        parameters = list(parameters)
        trained = {id(p) for p in parameters}
        groups = [[p for p in group.parameters if id(p) in trained] for group in sgd_groups]
        claimed = {id(p) for params in groups for p in params}
        adam_parameters = [p for p in parameters if id(p) not in claimed]
        self.base_rate = float(learning_rate)
        keep_adam = bool(adam_parameters) or not claimed  # no parameter at all: Adam refuses, as it should
        self.adam = torch.optim.Adam(adam_parameters, lr=learning_rate, betas=betas) if keep_adam else None
        sgd_param_groups = [{"params": params, "lr": group.learning_rate, "momentum": group.momentum,
                             BASE_RATE: group.learning_rate} for group, params in zip(sgd_groups, groups) if params]
        self.sgd = torch.optim.SGD(sgd_param_groups) if sgd_param_groups else None

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.adam, self.sgd) if o is not None]

    def set_learning_rate(self, rate: float) -> None:
        """The run's rate ``eta_t`` for Adam; ``eta' * eta_t / eta_0`` for each SGD group."""
        if self.adam is not None:
            for group in self.adam.param_groups:
                group["lr"] = rate
        if self.sgd is not None:
            for group in self.sgd.param_groups:
                group["lr"] = group[BASE_RATE] * rate / self.base_rate

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        if self.sgd is None and self.adam is not None:
            return self.adam.state_dict()
        return {"adam": None if self.adam is None else self.adam.state_dict(), "sgd": self.sgd.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` wrote; a state of another layout raises ``ValueError``."""
        if self.sgd is None and self.adam is not None:
            if set(state) != {"state", "param_groups"}:
                raise ValueError("the checkpoint's optimiser has SGD groups this run does not")
            self.adam.load_state_dict(state)
            return
        if set(state) != {"adam", "sgd"} or (state["adam"] is None) != (self.adam is None):
            raise ValueError("the checkpoint's optimiser does not have this run's Adam and SGD groups")
        if self.adam is not None:
            self.adam.load_state_dict(state["adam"])
        self.sgd.load_state_dict(state["sgd"])
