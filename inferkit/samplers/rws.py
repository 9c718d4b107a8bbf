"""``rws``: (contrastive) reweighted wake-sleep (Bornschein and Bengio 2015; the paper's Algorithm 1).

With K samples ``z_i ~ q(z | x)``, ``w_i = p*(x, z_i) / q(z_i | x)`` and ``w~_i = w_i / sum_j w_j``:

    wake p:  sum_i w~_i grad log p*(x, z_i)     (decoder; the RBM via eq. 5 with the negative phase)
    wake q:  sum_i w~_i grad log q(z_i | x)     (a self-normalised estimate of -grad KL(p(z|x) || q))
    sleep q: (1/M) sum_j grad log q(z^-_j | x^-_j),  z^- from the RBM's persistent chains, x^- ~ p(x | z^-)

The sleep phase draws ``z^-`` from the RBM's Markov chains rather than a factorised prior: the paper's
*contrastive* RWS. ``sleep=false`` keeps only the wake phases.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.interfaces import Inference, Model
from inferkit.samplers.multisample import MultiSampleBernoulli


def rws_wake_surrogates(log_p: Tensor, log_q: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum_i w~_i log p*(x, z_i), sum_i w~_i log q(z_i | x))`` per example with ``w~`` held fixed:
    their gradients are the wake-p and wake-q updates."""
    weights = torch.softmax((log_p - log_q).detach(), -1)
    return (weights * log_p).sum(-1), (weights * log_q).sum(-1)


class RWS(MultiSampleBernoulli):
    """Contrastive reweighted wake-sleep for ``rbm-prior``; options as
    :class:`~inferkit.samplers.multisample.MultiSampleBernoulli`, plus ``sleep`` (the sleep-phase q update
    from RBM Gibbs samples, default on)."""

    name = "rws"

    def __init__(self, num_samples: int = 50, hidden: tuple[int, ...] = (200, 200, 100, 100),
                 num_chains: int = 100, pcd_steps: int = 1, pretrain_iterations: int | None = None,
                 rbm_pretrain_iterations: int | None = None, pretrain_fraction: float = 0.3,
                 rbm_pretrain_fraction: float = 0.1, rbm_stages: tuple[str, ...] = ("cd1", "cd25", "pcd25"),
                 sleep: bool = True):
        super().__init__(num_samples=num_samples, hidden=hidden, num_chains=num_chains, pcd_steps=pcd_steps,
                         pretrain_iterations=pretrain_iterations, rbm_pretrain_iterations=rbm_pretrain_iterations,
                         pretrain_fraction=pretrain_fraction, rbm_pretrain_fraction=rbm_pretrain_fraction,
                         rbm_stages=rbm_stages)
        self.sleep = bool(sleep)

    def extra_negative(self, model: Model, info: dict, generator: torch.Generator | None) -> None:
        """Sleep-phase data ``x^- ~ p(x | z^-)`` (binary, flattened) for the chains' states ``z^-``."""
        if self.sleep and self.phase == "train":
            with torch.no_grad():
                probs = torch.sigmoid(model.decoder_logits(info["negative"]))
            info["sleep_x"] = torch.bernoulli(probs, generator=generator)

    def training_objective(self, model: Model, log_p: Tensor, log_q: Tensor, inference: Inference) -> Tensor:
        """Value ``L_K + log Z``; gradient the wake-p + wake-q (+ sleep-q, spread over the batch) updates."""
        wake_p, wake_q = rws_wake_surrogates(log_p, log_q)
        surrogate = wake_p + wake_q
        sleep_x = inference.info.get("sleep_x")
        if sleep_x is not None:
            z_negative = inference.info["negative"]
            sleep_q = self.log_q(z_negative, self.encoder(sleep_x)).mean()
            surrogate = surrogate + sleep_q
        bound = torch.logsumexp((log_p - log_q).detach(), -1) - math.log(log_p.shape[-1])
        return bound + surrogate - surrogate.detach()
