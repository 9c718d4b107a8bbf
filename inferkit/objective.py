"""The tuning objective ``J(s)`` and the log-determinant of the flow's Jacobian.

    J(s) = E_{z_0 ~ p_0}[ log p_0(z_0) - log|det dF/dz_0| - log p(x, F(z_0)) ]
         = KL(q_s || p(z | x)) - log p(x)

``log|det dF/dz_0|`` is computed either ``exact``-ly (the full Jacobian of F by ``torch.func``,
then ``slogdet``) or ``stepwise`` (``sum_k log|det(I + S_k H_k)|`` with symmetric eigensolvers,
accumulated in float64). Both are differentiable with respect to the step sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import GradientFlow, Latents, Model, Sampler

LOGDET_METHODS = ("exact", "stepwise")


@dataclass(frozen=True)
class ObjectiveInfo:
    """Diagnostics of one ``kl_objective`` evaluation.

    ``min_eigenvalue`` is the smallest eigenvalue of any ``I + S_k H_k`` met along the path (both
    log-det methods: with ``exact`` the per-step eigenvalues are computed as well, without a graph,
    since the sign of ``det dF/dz_0`` alone misses an even number of negative eigenvalues);
    ``invertible`` is False when some step map has a non-positive (or non-finite) eigenvalue, i.e.
    F is not a diffeomorphism there and ``J`` is not a KL.
    """

    invertible: bool
    min_eigenvalue: float
    log_det: Tensor


def flatten_latents(z: Latents) -> Tensor:
    """Concatenate the layers of ``z`` into one ``[batch, D]`` tensor."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in z], dim=1)


def unflatten_latents(flat: Tensor, shapes: tuple[tuple[int, ...], ...]) -> Latents:
    """Inverse of :func:`flatten_latents` for per-layer ``shapes`` (without batch)."""
    sizes = [math.prod(s) for s in shapes]
    return tuple(part.reshape(flat.shape[0], *s) for part, s in zip(flat.split(sizes, dim=1), shapes))


def hessians(model: Model, x: Tensor, z: Latents, mask: Tensor | None = None) -> Tensor:
    """Per-example ``H = hess_z log p(x, z)`` of the flattened latents, ``[batch, D, D]``."""
    shapes = model.latent_shapes

    def log_joint_single(z_flat: Tensor, x_row: Tensor, mask_row: Tensor | None) -> Tensor:
        z_one = unflatten_latents(z_flat.unsqueeze(0), shapes)
        m = None if mask_row is None else mask_row.unsqueeze(0)
        return model.log_joint(x_row.unsqueeze(0), z_one, m)[0]

    in_dims = (0, 0, None if mask is None else 0)
    return torch.func.vmap(torch.func.jacrev(torch.func.jacrev(log_joint_single)), in_dims=in_dims)(flatten_latents(z), x, mask)


def _unit_step_sizes(sampler: GradientFlow, model: Model, device, dtype) -> Tensor:
    """``[K, D]``: the diagonal of every ``S_k``, each layer's step size repeated over its units."""
    matrix = sampler.step_size_matrix(len(model.latent_shapes)).to(device=device, dtype=dtype)
    sizes = torch.tensor([math.prod(s) for s in model.latent_shapes], device=device)
    return matrix.repeat_interleave(sizes, dim=1)


def stepwise_log_det(model: Model, sampler: GradientFlow, x: Tensor, states: list[Latents],
                     mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``sum_k log|det(I + S_k H_k)|`` over the states ``z_0..z_{K-1}``, in float64.

    ``I + S H`` is similar to the symmetric ``I + S^{1/2} H S^{1/2}`` (``S`` diagonal, positive),
    so ``eigvalsh`` of the latter gives its eigenvalues. Returns (log-det ``[batch]``, smallest
    eigenvalue per example ``[batch]``).
    """
    root_steps = _unit_step_sizes(sampler, model, x.device, torch.float64).sqrt()
    log_det = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    min_eig = torch.full_like(log_det, math.inf)
    for k, z in enumerate(states):
        hess = hessians(model, x, z, mask).to(torch.float64)
        hess = 0.5 * (hess + hess.transpose(-1, -2))
        root = root_steps[k]
        eye = torch.eye(hess.shape[-1], dtype=torch.float64, device=x.device)
        step_map = eye + root[:, None] * hess * root[None, :]
        # A diverged path (inf/NaN latents) gives a non-finite Hessian, on which eigvalsh raises;
        # report NaN eigenvalues for those examples instead (J is NaN there, F "not invertible").
        finite = torch.isfinite(step_map).all(-1).all(-1)
        eig = torch.linalg.eigvalsh(torch.where(finite[:, None, None], step_map, eye))
        eig = torch.where(finite[:, None], eig, torch.full_like(eig, math.nan))
        log_det = log_det + eig.abs().log().sum(-1)
        min_eig = torch.minimum(min_eig, eig.min(-1).values.detach())
    return log_det, min_eig


def exact_log_det(model: Model, sampler: GradientFlow, x: Tensor, z0: Latents,
                  noise: list[Latents] | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``log|det dF/dz_0|`` from the full per-example Jacobian of F (``torch.func.jacrev`` under
    ``vmap``) and ``slogdet`` in float64. Returns (log-det, sign of det) per example."""
    shapes = model.latent_shapes
    num_steps = 0 if noise is None else len(noise)

    def flow_single(z_flat: Tensor, x_row: Tensor, mask_row: Tensor | None, *noise_rows: Tensor) -> Tensor:
        z_one = unflatten_latents(z_flat.unsqueeze(0), shapes)
        path_noise = None
        if num_steps:
            flat_noise = [n.unsqueeze(0) for n in noise_rows]
            path_noise = [unflatten_latents(n, shapes) for n in flat_noise]
        m = None if mask_row is None else mask_row.unsqueeze(0)
        return flatten_latents(sampler.flow(model, x_row.unsqueeze(0), z_one, path_noise, m))[0]

    noise_flat = [] if noise is None else [flatten_latents(n) for n in noise]
    in_dims = (0, 0, None if mask is None else 0, *([0] * len(noise_flat)))
    jac = torch.func.vmap(torch.func.jacrev(flow_single), in_dims=in_dims)(
        flatten_latents(z0), x, mask, *noise_flat)
    sign, log_abs = torch.linalg.slogdet(jac.to(torch.float64))
    return log_abs, sign


_FLOW_METHODS = ("flow", "path", "step_size_matrix", "sample_noise")


def kl_objective_unavailable(sampler: Sampler | type) -> str | None:
    """Why ``J(s)`` cannot be evaluated for ``sampler`` (an instance or a class), or ``None`` when it
    can: the sampler's own ``kl_objective_unsupported`` reason (amortized or persistent samplers), or
    the lack of a differentiable gradient flow."""
    reason = getattr(sampler, "kl_objective_unsupported", None)
    if reason:
        return reason
    if not all(callable(getattr(sampler, name, None)) for name in _FLOW_METHODS):
        return "it has no differentiable gradient flow"
    return None


def check_kl_objective(sampler: Sampler) -> None:
    """Raise :class:`UserError` saying why, when ``J(s)`` does not apply to ``sampler``."""
    reason = kl_objective_unavailable(sampler)
    if reason is not None:
        raise UserError(f"the KL objective does not apply to sampler {type(sampler).__name__}: {reason}; "
                        "use the 'fixed' tuner (--tuner fixed)")


def kl_objective(model: Model, sampler: Sampler, x: Tensor, *, num_samples: int = 1,
                 logdet: str = "stepwise", mask: Tensor | None = None,
                 generator: torch.Generator | None = None, return_info: bool = False,
                 differentiable: bool = True):
    """``J(s)`` per example (float64, ``[batch]``), averaged over ``num_samples`` draws of ``z_0``.

    ``J + log p(x) = KL(q_s || p(z|x))`` for noise-free dynamics; with noise (Langevin) the
    entropy is conditional on the noise path and ``J + log p(x)`` is an upper bound on the KL.
    With ``return_info=True`` returns ``(J, ObjectiveInfo)``. ``differentiable=False`` evaluates
    without building an autograd graph (the values are the same; grid search needs no gradient).
    """
    check_kl_objective(sampler)
    if not isinstance(sampler, GradientFlow):  # pragma: no cover - check_kl_objective tested the methods
        raise UserError(f"sampler {type(sampler).__name__} has no differentiable gradient flow; "
                        "use the 'fixed' tuner")
    if logdet not in LOGDET_METHODS:
        raise UserError(f"logdet must be one of {', '.join(LOGDET_METHODS)}, got {logdet!r}")
    if num_samples < 1:
        raise UserError(f"num_samples must be a positive integer, got {num_samples}")
    batch = x.shape[0]
    x_rep = x.repeat_interleave(num_samples, dim=0)
    mask_rep = None if mask is None else mask.expand_as(x).repeat_interleave(num_samples, dim=0)
    z0 = model.sample_prior(x_rep.shape[0], generator=generator)
    noise = sampler.sample_noise(model, x_rep.shape[0], generator=generator)
    # torch.func transforms (grad, hessian, jacrev) work under no_grad too, so the values do not
    # depend on the grad mode; only whether a graph to the step sizes and parameters is kept.
    with torch.enable_grad() if differentiable else torch.no_grad():
        if logdet == "stepwise":
            states = sampler.path(model, x_rep, z0, noise, mask_rep)
            z_final = states[-1]
            log_det, min_eig = stepwise_log_det(model, sampler, x_rep, states[:-1], mask_rep)
        else:
            z_final = sampler.flow(model, x_rep, z0, noise, mask_rep)
            log_det, _ = exact_log_det(model, sampler, x_rep, z0, noise, mask_rep)
            with torch.no_grad():  # invertibility check: every step map, not only the sign of det
                states = sampler.path(model, x_rep, z0, noise, mask_rep)
                _, min_eig = stepwise_log_det(model, sampler, x_rep, states[:-1], mask_rep)
        per_draw = (model.log_prior(z0).to(torch.float64) - log_det
                    - model.log_joint(x_rep, z_final, mask_rep).to(torch.float64))
    objective = per_draw.view(batch, num_samples).mean(1)
    if not return_info:
        return objective
    smallest = float(min_eig.detach().min())
    return objective, ObjectiveInfo(invertible=smallest > 0, min_eigenvalue=smallest,
                                    log_det=log_det.view(batch, num_samples).mean(1))
