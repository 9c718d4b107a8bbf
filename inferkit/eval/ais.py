"""Annealed importance sampling (AIS) estimate of ``log p(x)`` for decoder-based models
(Neal 2001; Wu, Burda, Salakhutdinov, Grosse 2017, "On the quantitative analysis of decoder-based
generative models").

Intermediate densities between the prior and the posterior, ``0 = beta_0 < ... < beta_T = 1``:

    f_t(z) = p(z) p(x | z)^{beta_t},        log p(x | z) = log p(x, z) - log p(z).

Each chain starts at ``z_0 ~ p(z)``; at step t its log weight grows by
``(beta_t - beta_{t-1}) log p(x | z_{t-1})`` and ``z_t`` is one HMC transition that leaves
``f_t`` invariant (leapfrog from :mod:`pyro.ops.integrator`, Metropolis correction, per-chain step
sizes adapted towards an acceptance rate of 0.65 as in Wu et al.). With C chains per example

    log p_hat(x) = logsumexp_c log w_c - log C,

an estimate whose expectation is a lower bound on ``log p(x)`` (Jensen); the gap shrinks as T
grows. The weights are accumulated in float64. The schedule is sigmoidal (Wu et al.).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro.ops.integrator import velocity_verlet
from torch import Tensor

from inferkit.interfaces import Model
from inferkit.latents import flatten_latents, unflatten_latents


@dataclass(frozen=True)
class AISResult:
    """Per-example ``log p_hat(x)`` (float64), and the HMC diagnostics."""

    log_likelihood: Tensor
    acceptance_rate: float
    final_step_size: float

    @property
    def mean(self) -> float:
        return float(self.log_likelihood.mean())

    @property
    def standard_error(self) -> float:
        """Standard error of the mean over examples: ``std / sqrt(n)``."""
        n = self.log_likelihood.numel()
        return float(self.log_likelihood.std() / math.sqrt(n)) if n > 1 else math.nan


def sigmoid_schedule(num_steps: int, sharpness: float = 4.0) -> Tensor:
    """``beta_t = (s(t) - s(0)) / (s(T) - s(0))`` with ``s(t) = sigmoid(sharpness (2t/T - 1))``,
    t = 0..T (float64): dense near both ends, where ``log p(x | z)`` changes fastest."""
    if num_steps < 1:
        raise ValueError(f"AIS needs at least one intermediate step, got {num_steps}")
    t = torch.linspace(-sharpness, sharpness, num_steps + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    return (s - s[0]) / (s[-1] - s[0])


def ais_log_likelihood(model: Model, x: Tensor, *, num_chains: int = 16, num_steps: int = 500,
                       leapfrog_steps: int = 10, step_size: float = 0.05, target_acceptance: float = 0.65,
                       generator: torch.Generator | None = None) -> AISResult:
    """AIS estimate of ``log p(x)`` per row of ``x`` with ``num_chains`` chains each and
    ``num_steps`` intermediate distributions (see module docstring)."""
    if num_chains < 1 or leapfrog_steps < 1 or not step_size > 0:
        raise ValueError("num_chains and leapfrog_steps must be positive, step_size > 0")
    batch = x.shape[0]
    xr = x.repeat_interleave(num_chains, dim=0)
    shapes = tuple(tuple(s) for s in model.latent_shapes)
    n = xr.shape[0]
    betas = sigmoid_schedule(num_steps)
    z = flatten_latents(model.sample_prior(n, generator=generator)).detach()
    device, dtype = z.device, z.dtype
    step = torch.full((n, 1), float(step_size), device=device, dtype=dtype)
    # Multiplicative step-size adaptation whose fixed point is the target acceptance rate.
    grow, shrink = math.exp(0.1 * (1 - target_acceptance)), math.exp(-0.1 * target_acceptance)
    log_weight = torch.zeros(n, dtype=torch.float64, device=device)
    accepted_total = torch.zeros((), dtype=torch.float64, device=device)
    last: dict[str, Tensor] = {}

    def parts(flat: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p(z), log p(x | z))`` per chain."""
        latents = unflatten_latents(flat, shapes)
        log_prior = model.log_prior(latents)
        return log_prior, model.log_joint(xr, latents) - log_prior

    with torch.enable_grad():
        with torch.no_grad():
            log_prior, log_lik = parts(z)
        for t in range(1, num_steps + 1):
            beta_prev, beta = float(betas[t - 1]), float(betas[t])
            log_weight += (beta - beta_prev) * log_lik.double()

            def potential(site: dict[str, Tensor], beta: float = beta) -> Tensor:
                log_prior, log_likelihood = parts(site["z"])
                last["log_prior"], last["log_lik"] = log_prior.detach(), log_likelihood.detach()
                return -(log_prior + beta * log_likelihood).sum()

            energy0 = -(log_prior.double() + beta * log_lik.double())
            momentum = torch.randn(z.shape, generator=generator, device=device, dtype=dtype)
            z_new, r_new, _, _ = velocity_verlet({"z": z}, {"z": momentum}, potential, lambda r: r,
                                                  step, num_steps=leapfrog_steps)
            energy1 = -(last["log_prior"].double() + beta * last["log_lik"].double())
            hamiltonian0 = energy0 + 0.5 * momentum.double().pow(2).sum(1)
            hamiltonian1 = energy1 + 0.5 * r_new["z"].double().pow(2).sum(1)
            log_uniform = torch.rand(n, generator=generator, device=device, dtype=torch.float64).log()
            accept = log_uniform < (hamiltonian0 - hamiltonian1)  # NaN (divergence) rejects
            z = torch.where(accept[:, None], z_new["z"].detach(), z)
            log_prior = torch.where(accept, last["log_prior"], log_prior)
            log_lik = torch.where(accept, last["log_lik"], log_lik)
            step = step * torch.where(accept[:, None], grow, shrink).to(dtype)
            step = step.clamp(1e-4, 1.0)
            accepted_total += accept.double().mean()
    estimate = torch.logsumexp(log_weight.view(batch, num_chains), dim=1) - math.log(num_chains)
    return AISResult(log_likelihood=estimate.cpu(), acceptance_rate=float(accepted_total) / num_steps,
                     final_step_size=float(step.double().mean()))
