"""Annealed importance sampling (AIS) estimate of ``log p(x)`` for decoder-based models
(Neal 2001; Wu, Burda, Salakhutdinov, Grosse 2017, "On the quantitative analysis of decoder-based
generative models"), and its reverse run for bidirectional Monte Carlo (BDMC; Grosse, Ghahramani,
Adams 2015).

Base and path. A normalised base density ``q(z)`` and intermediate densities
``0 = beta_0 < ... < beta_T = 1`` (sigmoidal schedule, Wu et al.):

    f_t(z) = q(z)^{1 - beta_t} p(x, z)^{beta_t},        r(z) = log p(x, z) - log q(z).

The default base (``base="laplace"``) is a Gaussian fitted to the posterior of each example:
``q(z) = N(z; m, H^{-1})`` with ``m = argmax_z log p(x, z)`` (L-BFGS from the best of a few prior
draws) and ``H = -hess_z log p(x, z)`` at ``m`` (the full Hessian by ``d`` Hessian-vector products,
eigenvalues made positive, ``|lambda|`` floored at ``1e-3 max |lambda|``; only its diagonal when
``d`` exceeds ``full_hessian_max``). ``base="prior"`` is ``q = p(z)``, for which ``f_t`` is
``p(z) p(x | z)^{beta_t}``. For any normalised ``q`` the estimate below is unbiased for ``p(x)``.

Sampler. HMC runs in whitened coordinates ``u`` with ``z = m + A u`` (``A A^T = H^{-1}``), where the
base is ``N(0, I)``: the Laplace covariance is the HMC mass matrix. The leapfrog step size is fixed
for the whole annealing run, one per example, set beforehand by a pilot run of separate chains at
``beta = 1`` whose step size is adapted towards ``target_acceptance``; the AIS chains' transitions
therefore do not depend on their own history and each leaves its ``f_t`` invariant.
(``base="prior"`` adapts each chain's step size during the run, multiplicatively, as Wu et al. do.)

Weights. Each chain starts at ``z_0 ~ q``; at step t its log weight grows by
``(beta_t - beta_{t-1}) r(z_{t-1})`` and ``z_t`` is one HMC transition that leaves ``f_t``
invariant. With C chains per example

    log p_hat(x) = logsumexp_c log w_c - log C,

whose expectation is a lower bound on ``log p(x)`` (Jensen), and whose run-to-run (Monte Carlo)
standard error is, by the delta method, ``std_c(w_c) / (sqrt(C) mean_c(w_c))``.

Reverse AIS (BDMC). Given an exact posterior sample ``z ~ p(z | x)`` (on data simulated from the
model, the ``z`` that generated ``x``), run the same chain backwards from ``beta = 1`` to 0: the
log weight grows by ``(beta_{t-1} - beta_t) r(z_t)`` and estimates ``log (1 / p(x))`` without bias in
``1 / p(x)``, so ``log p_rev(x) = -(logsumexp_c log w_c - log C)`` is a stochastic *upper* bound. The
gap between the reverse and forward estimates bounds the forward estimate's error on such data.
All weights are accumulated in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Model
from inferkit.latents import flatten_latents, unflatten_latents

_LOG_2PI = math.log(2 * math.pi)
BASES = ("laplace", "prior")


@dataclass(frozen=True)
class AISResult:
    """Per-example ``log p_hat(x)`` (float64), its per-example Monte Carlo standard error, every chain's
    ``log w`` ``[B, C]``, and the HMC diagnostics."""

    log_likelihood: Tensor
    monte_carlo_error: Tensor
    """Per example: the run-to-run standard error of ``log p_hat(x)``, ``std(w) / (sqrt(C) mean(w))``."""
    log_weights: Tensor
    acceptance_rate: float
    step_size: float
    """Mean leapfrog step size (in the whitened coordinates of the base)."""

    @property
    def mean(self) -> float:
        return float(self.log_likelihood.mean())

    @property
    def standard_error(self) -> float:
        """Monte Carlo standard error of :attr:`mean`: ``sqrt(sum_i se_i^2) / n`` (the estimate's run-to-run
        spread on these examples; what ranks two models on the same examples)."""
        return float(self.monte_carlo_error.pow(2).sum().sqrt() / self.log_likelihood.numel())

    @property
    def between_image_std(self) -> float:
        """Spread of ``log p_hat(x)`` between examples (a property of the data, not of the estimate)."""
        n = self.log_likelihood.numel()
        return float(self.log_likelihood.std()) if n > 1 else math.nan


def sigmoid_schedule(num_steps: int, sharpness: float = 4.0) -> Tensor:
    """``beta_t = (s(t) - s(0)) / (s(T) - s(0))`` with ``s(t) = sigmoid(sharpness (2t/T - 1))``,
    t = 0..T (float64): dense near both ends, where ``log p(x | z)`` changes fastest."""
    if num_steps < 1:
        raise UserError(f"AIS needs at least one intermediate distribution, got {num_steps}")
    t = torch.linspace(-sharpness, sharpness, num_steps + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    return (s - s[0]) / (s[-1] - s[0])


def log_mean_exp_with_error(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """``log mean_c exp(log_w[:, c])`` per row and its delta-method standard error
    ``std_c(w) / (sqrt(C) mean_c(w))`` (NaN for C = 1)."""
    count = log_w.shape[1]
    estimate = torch.logsumexp(log_w, dim=1) - math.log(count)
    w = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values)
    error = w.std(dim=1) / (math.sqrt(count) * w.mean(dim=1)) if count > 1 else torch.full_like(estimate, math.nan)
    return estimate, error


# -------------------------------------------------------------------------------------------- bases
@dataclass(frozen=True)
class GaussianBase:
    """``q(z) = N(z; mean, A A^T)`` per example, in whitened coordinates ``z = mean + A u``, ``u ~ N(0, I)``.
    ``transform`` is ``[B, d, d]`` (full) or ``[B, d]`` (diagonal); ``log_det`` is ``log |det A|`` ``[B]``.
    ``mean=None`` is the identity map (``z = u``), for ``base="prior"``."""

    mean: Tensor | None
    transform: Tensor | None
    log_det: Tensor | None

    def select(self, index: Tensor) -> GaussianBase:
        """The base of the examples ``index`` (one row per chain)."""
        if self.mean is None:
            return self
        return GaussianBase(self.mean[index], self.transform[index], self.log_det[index])

    def to_z(self, u: Tensor) -> Tensor:
        """``z = mean + A u`` row by row."""
        if self.mean is None:
            return u
        if self.transform.dim() == 2:
            return self.mean + self.transform * u
        return self.mean + torch.einsum("nij,nj->ni", self.transform, u)

    def from_z(self, z: Tensor) -> Tensor:
        """``u = A^{-1} (z - mean)`` row by row."""
        if self.mean is None:
            return z
        diff = z - self.mean
        if self.transform.dim() == 2:
            return diff / self.transform
        return torch.linalg.solve(self.transform, diff.unsqueeze(-1)).squeeze(-1)


def find_modes(model: Model, x: Tensor, *, iterations: int = 100, candidates: int = 16,
               generator: torch.Generator | None = None) -> Tensor:
    """Flattened ``argmax_z log p(x, z)`` ``[B, d]``: L-BFGS (strong Wolfe line search) on
    ``-sum_i log p(x_i, z_i)`` from the best of ``candidates`` prior draws per example."""
    shapes = tuple(tuple(s) for s in model.latent_shapes)
    batch = x.shape[0]
    with torch.no_grad():
        draws = flatten_latents(model.sample_prior(batch * candidates, generator=generator))
        scores = model.log_joint(x.repeat_interleave(candidates, 0), unflatten_latents(draws, shapes))
        best = scores.view(batch, candidates).nan_to_num(-math.inf).argmax(1)
        z = draws.view(batch, candidates, -1)[torch.arange(batch, device=x.device), best].clone()
    z.requires_grad_(True)
    optimiser = torch.optim.LBFGS([z], lr=1.0, max_iter=iterations, history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = -model.log_joint(x, unflatten_latents(z, shapes)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return z.detach()


def negative_hessian(model: Model, x: Tensor, z: Tensor, *, diagonal: bool = False) -> Tensor:
    """``H = -hess_z log p(x, z)`` per example at flattened ``z`` ``[B, d]``: ``[B, d, d]``, or its diagonal
    ``[B, d]``, from ``d`` Hessian-vector products of ``sum_i log p(x_i, z_i)`` (examples are independent)."""
    shapes = tuple(tuple(s) for s in model.latent_shapes)
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        grad = torch.autograd.grad(model.log_joint(x, unflatten_latents(z, shapes)).sum(), z, create_graph=True)[0]
        rows = []
        for i in range(z.shape[1]):
            row = torch.autograd.grad(grad[:, i].sum(), z, retain_graph=True)[0].detach()
            rows.append(-row[:, i] if diagonal else -row)
    return torch.stack(rows, 1)


def laplace_base(model: Model, x: Tensor, *, full_hessian_max: int = 1024, mode_iterations: int = 100,
                 generator: torch.Generator | None = None) -> GaussianBase:
    """``q(z) = N(m, H^{-1})`` per row of ``x`` (module docstring), in float64 then the model's dtype."""
    mode = find_modes(model, x, iterations=mode_iterations, generator=generator)
    dtype = mode.dtype
    diagonal = mode.shape[1] > full_hessian_max
    hessian = negative_hessian(model, x, mode, diagonal=diagonal).double()
    if diagonal:
        values = hessian.abs()
        values = torch.maximum(values, 1e-3 * values.max(1, keepdim=True).values).clamp_min(1e-12)
        transform = values.rsqrt()
    else:
        values, vectors = torch.linalg.eigh(0.5 * (hessian + hessian.transpose(1, 2)))
        values = values.abs()
        values = torch.maximum(values, 1e-3 * values.max(1, keepdim=True).values).clamp_min(1e-12)
        transform = vectors * values.rsqrt().unsqueeze(1)
    log_det = -0.5 * values.log().sum(1)
    return GaussianBase(mode, transform.to(dtype), log_det)


# -------------------------------------------------------------------------------------------- target
class _Path:
    """The annealing path of one batch of chains (``index`` maps chains to examples): ``log q(u)`` and
    ``log p~(u) = log p(x, z(u)) + log |det A|`` in the base's whitened coordinates."""

    def __init__(self, model: Model, x: Tensor, base: GaussianBase, index: Tensor) -> None:
        self.model, self.base, self.index = model, base.select(index), index
        self.x = x[index]
        self.shapes = tuple(tuple(s) for s in model.latent_shapes)
        self.log_det = 0.0 if base.log_det is None else self.base.log_det.to(x.dtype)

    def parts(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(log q(u), log p~(u))`` per chain."""
        latents = unflatten_latents(self.base.to_z(u), self.shapes)
        log_joint = self.model.log_joint(self.x, latents)
        if self.base.mean is None:
            return self.model.log_prior(latents), log_joint
        return -0.5 * (u.pow(2).sum(1) + u.shape[1] * _LOG_2PI), log_joint + self.log_det

    def evaluate(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(log q, log p~, grad log q, grad log p~)`` per chain at ``u`` (detached; the log densities in
        float64)."""
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            log_q, log_p = self.parts(u)
            grad_p = torch.autograd.grad(log_p.sum(), u, retain_graph=self.base.mean is None)[0]
            grad_q = -u.detach() if self.base.mean is not None else torch.autograd.grad(log_q.sum(), u)[0]
        return log_q.detach().double(), log_p.detach().double(), grad_q.detach(), grad_p.detach()


def _at(state: tuple[Tensor, Tensor, Tensor, Tensor], beta: float) -> tuple[Tensor, Tensor]:
    """``(U, grad U)`` with ``U = -[(1 - beta) log q + beta log p~]``."""
    log_q, log_p, grad_q, grad_p = state
    return -((1 - beta) * log_q + beta * log_p), -((1 - beta) * grad_q + beta * grad_p)


def _hmc(path: _Path, u: Tensor, beta: float, step: Tensor, leapfrog: int,
         state: tuple[Tensor, Tensor, Tensor, Tensor], generator: torch.Generator | None):
    """One HMC transition (identity mass, ``leapfrog`` steps of size ``step`` ``[n, 1]``) that leaves
    ``exp(-U_beta)`` invariant; ``state`` is :meth:`_Path.evaluate` at ``u``. Returns the new ``u`` and
    state, the acceptance probability and the accept decision per chain."""
    energy, grad = _at(state, beta)
    momentum = torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
    new_u, p, new_state = u, momentum - 0.5 * step * grad, state
    for k in range(leapfrog):
        new_u = new_u + step * p
        new_state = path.evaluate(new_u)
        new_energy, new_grad = _at(new_state, beta)
        p = p - (step if k < leapfrog - 1 else 0.5 * step) * new_grad
    h0 = energy + 0.5 * momentum.double().pow(2).sum(1)
    h1 = new_energy + 0.5 * p.double().pow(2).sum(1)
    log_accept = (h0 - h1).nan_to_num(-math.inf).clamp(max=0.0)
    log_uniform = torch.rand(u.shape[0], generator=generator, device=u.device, dtype=torch.float64).log()
    accept = log_uniform < log_accept
    u = torch.where(accept[:, None], new_u, u)
    state = tuple(torch.where(accept if a.dim() == 1 else accept[:, None], b, a) for a, b in zip(state, new_state))
    return u, state, log_accept.exp(), accept


def pilot_step_size(path: _Path, u: Tensor, batch: int, chains: int, *, leapfrog: int, iterations: int,
                    initial: float, target: float, generator: torch.Generator | None) -> Tensor:
    """Per-example step size ``[B]`` from ``iterations`` HMC transitions at ``beta = 1`` of pilot chains ``u``
    (not the AIS chains): Robbins-Monro on ``log step`` towards the mean acceptance probability ``target``;
    the last half's mean of ``log step`` is returned."""
    log_step = torch.full((batch,), math.log(initial), dtype=torch.float64, device=u.device)
    state = path.evaluate(u)
    history = []
    for k in range(iterations):
        step = log_step.exp().repeat_interleave(chains)[:, None].to(u.dtype)
        u, state, accept_prob, _ = _hmc(path, u, 1.0, step, leapfrog, state, generator)
        mean_accept = accept_prob.view(batch, chains).mean(1)
        log_step = log_step + (mean_accept - target) * 2.0 / math.sqrt(k + 1)
        if k >= iterations // 2:
            history.append(log_step)
    return torch.stack(history).mean(0).exp() if history else log_step.exp()


def _check(num_chains: int, num_steps: int, leapfrog_steps: int, base: str) -> None:
    if num_chains < 1 or leapfrog_steps < 1 or num_steps < 1:
        raise UserError(f"AIS needs positive chains, intermediate distributions and leapfrog steps, got "
                        f"{num_chains}, {num_steps}, {leapfrog_steps}")
    if base not in BASES:
        raise UserError(f"unknown AIS base {base!r}; use one of {', '.join(BASES)}")


@dataclass(frozen=True)
class AISSettings:
    """The settings of one AIS run (see :func:`ais_log_likelihood`)."""

    num_chains: int = 16
    num_steps: int = 200
    leapfrog_steps: int = 10
    base: str = "laplace"
    target_acceptance: float = 0.8
    pilot_iterations: int = 40
    step_size: float = 0.05
    """Initial step size (``base="prior"``: the per-chain start; Laplace: the pilot's start is 0.5)."""
    full_hessian_max: int = 1024
    mode_iterations: int = 100


def _prepare(model: Model, x: Tensor, settings: AISSettings, generator: torch.Generator | None):
    """The base, the chains' path and the per-chain step size ``[n, 1]`` (Laplace: from the pilot run)."""
    batch, chains = x.shape[0], settings.num_chains
    index = torch.arange(batch, device=x.device).repeat_interleave(chains)
    if settings.base == "prior":
        base = GaussianBase(None, None, None)
        path = _Path(model, x, base, index)
        probe = flatten_latents(model.sample_prior(1, generator=generator))
        return base, path, torch.full((index.numel(), 1), settings.step_size, dtype=probe.dtype, device=x.device)
    base = laplace_base(model, x, full_hessian_max=settings.full_hessian_max,
                        mode_iterations=settings.mode_iterations, generator=generator)
    path = _Path(model, x, base, index)
    pilot = torch.randn(path.base.mean.shape, generator=generator, device=x.device, dtype=base.mean.dtype)
    step = pilot_step_size(path, pilot, batch, chains, leapfrog=settings.leapfrog_steps,
                           iterations=settings.pilot_iterations, initial=0.5, target=settings.target_acceptance,
                           generator=generator)
    return base, path, step.repeat_interleave(chains)[:, None].to(base.mean.dtype)


def _anneal(path: _Path, u: Tensor, betas: Tensor, step: Tensor, settings: AISSettings, adapt: bool,
            generator: torch.Generator | None) -> tuple[Tensor, float, Tensor]:
    """Run the chains ``u`` along ``betas`` (increasing: forward AIS; decreasing: reverse); returns every
    chain's ``log w`` (float64), the mean acceptance rate and the final step sizes."""
    target = settings.target_acceptance
    grow, shrink = math.exp(0.1 * (1 - target)), math.exp(-0.1 * target)
    log_weight = torch.zeros(u.shape[0], dtype=torch.float64, device=u.device)
    accepted = 0.0
    state = path.evaluate(u)
    num = betas.numel() - 1
    for t in range(1, num + 1):
        beta_prev, beta = float(betas[t - 1]), float(betas[t])
        log_weight += (beta - beta_prev) * (state[1] - state[0])
        if t == num:
            break  # the last transition would not change the weights
        u, state, _, accept = _hmc(path, u, beta, step, settings.leapfrog_steps, state, generator)
        if adapt:
            step = (step * torch.where(accept[:, None], grow, shrink).to(step.dtype)).clamp(1e-4, 1.0)
        accepted += float(accept.double().mean())
    return log_weight, accepted / max(num - 1, 1), step


def ais_log_likelihood(model: Model, x: Tensor, *, num_chains: int = 16, num_steps: int = 200,
                       leapfrog_steps: int = 10, base: str = "laplace", target_acceptance: float = 0.8,
                       pilot_iterations: int = 40, step_size: float = 0.05, full_hessian_max: int = 1024,
                       generator: torch.Generator | None = None) -> AISResult:
    """AIS estimate of ``log p(x)`` per row of ``x`` with ``num_chains`` chains each, ``num_steps``
    intermediate distributions and HMC of ``leapfrog_steps`` (module docstring)."""
    _check(num_chains, num_steps, leapfrog_steps, base)
    settings = AISSettings(num_chains, num_steps, leapfrog_steps, base, target_acceptance, pilot_iterations,
                           step_size, full_hessian_max)
    x = x.detach()
    base_q, path, step = _prepare(model, x, settings, generator)
    if base == "prior":
        u = flatten_latents(model.sample_prior(path.index.numel(), generator=generator)).detach()
    else:
        u = torch.randn(step.shape[0], base_q.mean.shape[1], generator=generator, device=x.device,
                        dtype=base_q.mean.dtype)
    log_w, acceptance, step = _anneal(path, u, sigmoid_schedule(num_steps), step, settings, base == "prior",
                                      generator)
    log_w = log_w.view(x.shape[0], num_chains)
    estimate, error = log_mean_exp_with_error(log_w)
    return AISResult(estimate.cpu(), error.cpu(), log_w.cpu(), acceptance, float(step.double().mean()))


def reverse_ais_log_likelihood(model: Model, x: Tensor, z: Tensor, *, num_chains: int = 16, num_steps: int = 200,
                               leapfrog_steps: int = 10, base: str = "laplace", target_acceptance: float = 0.8,
                               pilot_iterations: int = 40, step_size: float = 0.05, full_hessian_max: int = 1024,
                               generator: torch.Generator | None = None) -> AISResult:
    """Reverse AIS from exact posterior samples ``z`` (flattened ``[B, d]``, one per row of ``x``): a
    stochastic upper bound ``-log mean_c w_c`` on ``log p(x)`` (module docstring). The base and the step
    size are set from ``x`` alone, exactly as :func:`ais_log_likelihood` sets them."""
    _check(num_chains, num_steps, leapfrog_steps, base)
    settings = AISSettings(num_chains, num_steps, leapfrog_steps, base, target_acceptance, pilot_iterations,
                           step_size, full_hessian_max)
    x = x.detach()
    _, path, step = _prepare(model, x, settings, generator)
    u = path.base.from_z(z.detach().to(x.dtype).repeat_interleave(num_chains, 0))
    betas = sigmoid_schedule(num_steps).flip(0)
    log_w, acceptance, step = _anneal(path, u, betas, step, settings, base == "prior", generator)
    log_w = log_w.view(x.shape[0], num_chains)
    inverse, error = log_mean_exp_with_error(log_w)
    return AISResult((-inverse).cpu(), error.cpu(), log_w.cpu(), acceptance, float(step.double().mean()))
