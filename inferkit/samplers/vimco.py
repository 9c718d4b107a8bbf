"""``vimco``: variational inference for Monte Carlo objectives (Mnih and Rezende 2016) on an RBM prior.

With K samples ``z_i ~ q(z | x)`` and ``log w_i = log p*(x, z_i) - log q(z_i | x)``:

    L_K    = log (1/K) sum_i w_i                                   (the multi-sample bound, + log Z)
    L_{-i} = log (1/K) (w_{-i} + sum_{j != i} w_j),   w_{-i} = (prod_{j != i} w_j)^(1/(K-1))
    grad_phi L_K ~= sum_i (L_K - L_{-i}) grad log q(z_i | x) - sum_i w~_i grad log q(z_i | x)

(the paper's Algorithm 2, line 14): each sample's learning signal ``L_K`` gets the leave-one-out baseline
``L_{-i}``, which does not depend on ``z_i``, so the estimator stays unbiased and its variance drops.
The decoder and the RBM follow ``grad L_K`` (see :mod:`inferkit.samplers.multisample`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Inference, Model
from inferkit.samplers.multisample import MultiSampleBernoulli

BASELINES = ("leave-one-out", "none")


def leave_one_out_bounds(log_w: Tensor) -> Tensor:
    """``L_{-i} = log (1/K) (w_{-i} + sum_{j != i} w_j)`` for every i, from ``log w`` ``[..., K]``, where
    ``log w_{-i} = mean_{j != i} log w_j`` (the geometric mean of the others)."""
    k = log_w.shape[-1]
    others_mean = (log_w.sum(-1, keepdim=True) - log_w) / (k - 1)
    eye = torch.eye(k, dtype=torch.bool, device=log_w.device)
    replaced = torch.where(eye, others_mean.unsqueeze(-1), log_w.unsqueeze(-2))  # row i: w_i -> w_{-i}
    return torch.logsumexp(replaced, -1) - math.log(k)


def vimco_surrogate(log_p: Tensor, log_q: Tensor, baseline: str = "leave-one-out") -> Tensor:
    """Per-example surrogate, ``[..., K]`` inputs -> ``[...]``: its value is ``L_K`` and its gradient is
    VIMCO's estimator, ``sum_i w~_i grad log p*(x, z_i)`` for the model and
    ``sum_i (L_K - b_i - w~_i) grad log q(z_i | x)`` for the encoder, with ``b_i = L_{-i}``
    (``baseline="leave-one-out"``) or ``b_i = 0`` (``"none"``: the plain score-function estimator)."""
    if baseline not in BASELINES:
        raise UserError(f"vimco: baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    k = log_p.shape[-1]
    log_w = log_p - log_q
    bound = torch.logsumexp(log_w, -1) - math.log(k)
    signal = bound.detach().unsqueeze(-1).expand_as(log_w)
    if baseline == "leave-one-out":
        signal = signal - leave_one_out_bounds(log_w.detach())
    score = (signal * log_q).sum(-1)
    return bound + score - score.detach()


class VIMCO(MultiSampleBernoulli):
    """VIMCO with K samples (``num_samples``, at least 2) for ``rbm-prior``; options as
    :class:`~inferkit.samplers.multisample.MultiSampleBernoulli`, plus ``baseline``
    (``leave-one-out``, the default, or ``none``)."""

    name = "vimco"
    min_samples = 2

    def __init__(self, num_samples: int = 50, hidden: tuple[int, ...] = (200, 200, 100, 100),
                 num_chains: int = 100, pcd_steps: int = 1, pretrain_iterations: int | None = None,
                 rbm_pretrain_iterations: int | None = None, pretrain_fraction: float = 0.3,
                 rbm_pretrain_fraction: float = 0.1, rbm_stages: tuple[str, ...] = ("cd1", "cd25", "pcd25"),
                 baseline: str = "leave-one-out"):
        super().__init__(num_samples=num_samples, hidden=hidden, num_chains=num_chains, pcd_steps=pcd_steps,
                         pretrain_iterations=pretrain_iterations, rbm_pretrain_iterations=rbm_pretrain_iterations,
                         pretrain_fraction=pretrain_fraction, rbm_pretrain_fraction=rbm_pretrain_fraction,
                         rbm_stages=rbm_stages)
        if baseline not in BASELINES:
            raise UserError(f"vimco: baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        self.baseline = baseline

    def training_objective(self, model: Model, log_p: Tensor, log_q: Tensor, inference: Inference) -> Tensor:
        """:func:`vimco_surrogate` (value ``L_K + log Z``)."""
        return vimco_surrogate(log_p, log_q, self.baseline)
