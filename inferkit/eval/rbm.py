"""Log-likelihoods for models with an RBM prior: AIS for ``log Z``, RAISE for ``log p(z)``, and ``log p(x)``.

Annealing path (Salakhutdinov and Murray 2008) from a base of independent Bernoulli units with biases
``c`` (the base rates, zeros = uniform) to the RBM, ``0 = beta_0 < ... < beta_T = 1``:

    log f_beta(z) = (1 - beta) c'z + beta a'z + sum_j softplus(beta (b_j + (z'W)_j))

the marginal of an RBM with visible bias ``(1-beta) c + beta a``, hidden bias ``beta b``, weights
``beta W``, so block Gibbs on that RBM leaves ``f_beta`` invariant. ``f_0`` has
``Z_0 = prod_i (1 + e^{c_i}) 2^m`` and ``f_1 = exp(-F)``.

* AIS: ``z_0 ~ p_0``; ``log w = sum_k [log f_k(z_{k-1}) - log f_{k-1}(z_{k-1})]``, ``z_k`` one Gibbs sweep
  at ``beta_k``; ``log Z_hat = log Z_0 + log mean_c w_c``. ``E[Z_hat] = Z``, so ``E[log Z_hat] <= log Z``.
* RAISE (Burda, Grosse, Salakhutdinov 2015): from the point ``z_T = z`` itself run the chain backwards,
  ``z_{k-1}`` one Gibbs sweep at ``beta_k`` from ``z_k`` (block Gibbs is reversible), and
  ``log p_hat(z) = -F(z) - log Z_0 - sum_k [log f_k(z_{k-1}) - log f_{k-1}(z_{k-1})]``: an unbiased
  estimate of the annealing model's ``p(z)``, conservative (low) on average for ``log p(z)``, so the
  implied ``-F(z) - log p_hat(z)`` is on average *above* ``log Z``.
* ``log p(x)`` (the paper's eq. 6) with ``z_i ~ q(z | x)``, the sampler's Bernoulli encoder
  (:func:`rbm_log_likelihood`, what :func:`inferkit.evaluate` reports for an RBM prior):
  ``log p_hat(x) = log (1/K) sum_i exp(-F(z_i) + log p(x | z_i) - log q(z_i | x)) - log Z_hat`` (AIS), and
  ``log (1/K) sum_i exp(log p_hat_RAISE(z_i) + log p(x | z_i) - log q(z_i | x))`` (RAISE).

All weights are accumulated in float64.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import HasBernoulliEncoder, RBMPriorModel
from inferkit.models.rbm import MAX_ENUMERATED_UNITS, all_binary_vectors
from inferkit.samplers.bernoulli import bernoulli_log_prob, draw_bernoulli


@dataclass(frozen=True)
class AnnealingPath:
    """The RBM's parameters (float64) and the base biases ``c`` of the annealing path."""

    visible_bias: Tensor
    hidden_bias: Tensor
    weight: Tensor
    base_bias: Tensor

    @classmethod
    def of(cls, rbm, base_bias: Tensor | None = None) -> AnnealingPath:
        a = rbm.visible_bias.detach().double()
        c = torch.zeros_like(a) if base_bias is None else base_bias.detach().to(a)
        return cls(a, rbm.hidden_bias.detach().double(), rbm.weight.detach().double(), c)

    @property
    def log_base_partition(self) -> float:
        """``log Z_0 = sum_i softplus(c_i) + m log 2``."""
        return float(F.softplus(self.base_bias).sum()) + self.hidden_bias.numel() * math.log(2)

    def log_f(self, z: Tensor, beta: float) -> Tensor:
        """``log f_beta(z)`` per row of ``z``."""
        return (z @ ((1 - beta) * self.base_bias + beta * self.visible_bias)
                + F.softplus(beta * (z @ self.weight + self.hidden_bias)).sum(-1))

    def gibbs(self, z: Tensor, beta: float, generator: torch.Generator | None) -> Tensor:
        """One block-Gibbs sweep ``z -> h -> z'`` of the RBM at ``beta``."""
        h = torch.bernoulli(torch.sigmoid(beta * (z @ self.weight + self.hidden_bias)), generator=generator)
        visible = (1 - beta) * self.base_bias + beta * (h @ self.weight.T + self.visible_bias)
        return torch.bernoulli(torch.sigmoid(visible), generator=generator)

    def sample_base(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``z ~ p_0``: independent Bernoulli(sigmoid(c_i))."""
        return torch.bernoulli(torch.sigmoid(self.base_bias).expand(n, -1), generator=generator)


def base_rate_bias(codes: Tensor, eps: float = 1e-3) -> Tensor:
    """``c_i = logit(mean z_i)`` over binary ``codes`` ``[N, n]`` (clamped to ``[eps, 1 - eps]``): the
    base-rate model, a better start for AIS than the uniform one."""
    return torch.logit(codes.double().mean(0).clamp(eps, 1 - eps))


def linear_schedule(num_steps: int) -> list[float]:
    """``beta_k = k / T``, k = 0..T."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise UserError(f"annealing needs num_steps >= 1 intermediate distributions, got {num_steps!r}")
    return [k / num_steps for k in range(num_steps + 1)]


@dataclass(frozen=True)
class PartitionEstimate:
    """``log Z_hat = log Z_0 + log mean_c w_c`` and its delta-method standard error
    ``std(w) / (sqrt(C) mean(w))``, with every chain's ``log w``."""

    log_partition: float
    standard_error: float
    log_weights: Tensor


@torch.no_grad()
def ais_log_partition(rbm, *, num_chains: int = 100, num_steps: int = 1000, base_bias: Tensor | None = None,
                      generator: torch.Generator | None = None) -> PartitionEstimate:
    """AIS estimate of the RBM's ``log Z`` with ``num_chains`` chains and ``num_steps`` Gibbs sweeps."""
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise UserError(f"AIS needs num_chains >= 1, got {num_chains!r}")
    path = AnnealingPath.of(rbm, base_bias)
    betas = linear_schedule(num_steps)
    z = path.sample_base(num_chains, generator)
    log_w = torch.zeros(num_chains, dtype=torch.float64, device=z.device)
    for previous, beta in itertools.pairwise(betas):
        log_w += path.log_f(z, beta) - path.log_f(z, previous)
        if beta < 1:
            z = path.gibbs(z, beta, generator)
    log_mean = float(torch.logsumexp(log_w, 0)) - math.log(num_chains)
    w = torch.exp(log_w - log_w.max())
    se = float(w.std() / (math.sqrt(num_chains) * w.mean())) if num_chains > 1 else math.nan
    return PartitionEstimate(path.log_base_partition + log_mean, se, log_w.cpu())


@torch.no_grad()
def raise_log_prior(rbm, z: Tensor, *, num_steps: int = 1000, num_chains: int = 1, base_bias: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
    """RAISE estimate of ``log p(z)`` per row of binary ``z`` ``[N, n]`` (float64; ``num_chains`` reverse
    chains per row, combined as ``log mean exp``); see the module docstring."""
    path = AnnealingPath.of(rbm, base_bias)
    betas = linear_schedule(num_steps)
    start = z.detach().double().repeat_interleave(num_chains, 0)
    state = start
    log_ratio = torch.zeros(start.shape[0], dtype=torch.float64, device=start.device)
    for k in range(num_steps, 0, -1):
        state = path.gibbs(state, betas[k], generator)  # z_{k-1} from z_k
        log_ratio += path.log_f(state, betas[k]) - path.log_f(state, betas[k - 1])
    log_p = path.log_f(start, 1.0) - path.log_base_partition - log_ratio
    log_p = log_p.view(-1, num_chains)
    return torch.logsumexp(log_p, 1) - math.log(num_chains)


@torch.no_grad()
def exact_log_likelihood(model: RBMPriorModel, x: Tensor) -> Tensor:
    """``log p(x) = logsumexp_z [-F(z) + log p(x | z)] - log Z`` by enumerating every ``z`` (n <= 20)."""
    n = model.rbm.num_visible
    if n > MAX_ENUMERATED_UNITS:
        raise UserError(f"exact log p(x) enumerates 2^{n} latent states; use the AIS or RAISE estimates")
    states = all_binary_vectors(n, dtype=model.rbm.weight.dtype, device=model.rbm.weight.device)
    log_joint = -model.rbm.free_energy(states).double() + model.log_likelihood(
        x, states.expand(x.shape[0], -1, -1)).double()
    return torch.logsumexp(log_joint, -1) - model.rbm.log_partition_exact().double()


def _importance_terms(model: RBMPriorModel, x: Tensor, logits: Tensor, num_samples: int, batch: int,
                      generator: torch.Generator | None, log_prior):
    """``log p_hat(z_i) + log p(x | z_i) - log q(z_i | x)`` ``[B, K]`` in chunks of ``batch`` samples."""
    terms = []
    for start in range(0, num_samples, batch):
        k = min(batch, num_samples - start)
        z = draw_bernoulli(logits, k, generator)
        log_q = bernoulli_log_prob(z, logits.unsqueeze(1)).double()
        prior = log_prior(z.reshape(-1, z.shape[-1])).view(z.shape[0], k)
        terms.append(prior + model.log_likelihood(x, z).double() - log_q)
    return torch.cat(terms, 1)


@torch.no_grad()
def log_likelihood_ais(model: RBMPriorModel, x: Tensor, logits: Tensor, *, num_samples: int, log_partition: float,
                       batch: int = 100, generator: torch.Generator | None = None) -> Tensor:
    """Paper eq. 6: ``log (1/K) sum_i exp(-F(z_i) + log p(x|z_i) - log q(z_i|x)) - log Z_hat`` per row of
    ``x``, ``z_i ~ Bernoulli(sigmoid(logits))`` (``logits`` ``[B, n]``, e.g. a sampler's ``encoder_logits``)."""
    terms = _importance_terms(model, x, logits, num_samples, batch, generator,
                              lambda z: -model.rbm.free_energy(z).double())
    return torch.logsumexp(terms, 1) - math.log(num_samples) - log_partition


@torch.no_grad()
def log_likelihood_raise(model: RBMPriorModel, x: Tensor, logits: Tensor, *, num_samples: int, num_steps: int = 1000,
                         base_bias: Tensor | None = None, batch: int = 100,
                         generator: torch.Generator | None = None) -> Tensor:
    """``log (1/K) sum_i exp(log p_hat_RAISE(z_i) + log p(x|z_i) - log q(z_i|x))`` per row of ``x``: the
    conservative counterpart of :func:`log_likelihood_ais` (one reverse chain of ``num_steps`` per ``z_i``)."""
    terms = _importance_terms(model, x, logits, num_samples, batch, generator,
                              lambda z: raise_log_prior(model.rbm, z, num_steps=num_steps, base_bias=base_bias,
                                                        generator=generator))
    return torch.logsumexp(terms, 1) - math.log(num_samples)


BUDGETS = {
    "default": None,
    "paper": {"num_samples": 50_000, "partition_chains": 5_000, "num_steps": 100_000},
}
"""``rbm_log_likelihood`` budgets. ``paper``: the paper's evaluation (section 4.1), ``K = 5e4`` importance
samples and ``log Z`` from 5,000 AIS chains with 1e5 intermediate distributions (hours on a CPU).
``default``: the caller's ``num_samples``, ``25 * num_chains`` chains and ``num_steps`` sweeps; its ``log Z``
uncertainty is reported as ``log_partition_standard_error`` (the delta-method standard error over chains,
which understates the error when the chains have not mixed), and the RAISE estimate on the first rows
brackets the AIS one from the other side."""


def _summary(values: Tensor) -> dict:
    """Mean, standard error of the mean (``std / sqrt(n)``) and count of per-example estimates."""
    n = values.numel()
    return {"mean": float(values.mean()), "standard_error": float(values.std() / math.sqrt(n)) if n > 1 else math.nan,
            "examples": int(n)}


@torch.no_grad()
def rbm_log_likelihood(model: RBMPriorModel, encoder: HasBernoulliEncoder, x: Tensor, *, num_chains: int,
                       num_steps: int, num_samples: int, generator: torch.Generator | None = None,
                       budget: str = "default") -> dict:
    """``log p(x)`` per row of ``x`` by the paper's eq. 6 with ``log Z`` from AIS (``25 * num_chains``
    chains, ``num_steps`` Gibbs sweeps, a base-rate model fitted to the encoder's codes of ``x``), and
    RAISE's conservative counterpart on the first 8 rows, with ``q(z | x)`` the sampler's encoder.
    ``budget="paper"`` replaces the three sizes by the paper's (:data:`BUDGETS`)."""
    if budget not in BUDGETS:
        raise UserError(f"unknown RBM evaluation budget {budget!r}; use one of {', '.join(BUDGETS)}")
    sizes = BUDGETS[budget] or {"num_samples": num_samples, "partition_chains": num_chains * 25,
                                "num_steps": num_steps}
    num_samples, num_steps = sizes["num_samples"], sizes["num_steps"]
    logits = encoder.encoder_logits(model, x)
    codes = torch.bernoulli(torch.sigmoid(logits), generator=generator)
    base = base_rate_bias(codes)
    log_z = ais_log_partition(model.rbm, num_chains=sizes["partition_chains"], num_steps=num_steps, base_bias=base,
                              generator=generator)
    values = log_likelihood_ais(model, x, logits, num_samples=num_samples, log_partition=log_z.log_partition,
                                generator=generator).cpu()
    few = min(8, x.shape[0])
    raised = log_likelihood_raise(model, x[:few], logits[:few], num_samples=min(num_samples, 16),
                                  num_steps=num_steps, base_bias=base, generator=generator).cpu()
    return {**_summary(values), "per_example": values.tolist(), "method": "paper eq. 6 with AIS log Z",
            "log_partition": log_z.log_partition, "log_partition_standard_error": log_z.standard_error,
            "ais_chains": sizes["partition_chains"], "gibbs_steps": num_steps, "importance_samples": num_samples,
            "budget": budget,
            "raise": {**_summary(raised), "importance_samples": min(num_samples, 16)},
            "ais_same_examples_as_raise": _summary(values[:few])}
