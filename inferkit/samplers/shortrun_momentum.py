"""Short-run dynamics with momentum: heavy-ball (Polyak) or Nesterov steps on ``log p(x, z)``.

    z_0 ~ p(z),  v_0 = 0
    heavy-ball:  v_{k+1} = mu v_k + S_k grad log p(x, z_k),              z_{k+1} = z_k + v_{k+1}
    Nesterov:    v_{k+1} = mu v_k + S_k grad log p(x, z_k + mu v_k),     z_{k+1} = z_k + v_{k+1}

One update, :func:`momentum_step`, drives both the eager :meth:`ShortRunMomentum.infer` and the
differentiable :meth:`ShortRunMomentum.path`.

The log-determinant (derivation). On the augmented state ``u = (z, v)`` one step is a map with
Jacobian (``H_k`` the Hessian of ``log p(x, .)`` where the gradient is taken)::

    heavy-ball:  J_k = [[I + S H_k,  mu I], [S H_k,  mu I]]
    Nesterov:    J_k = [[I + S H_k,  mu (I + S H_k)], [S H_k,  mu (I + S H_k)]]

Subtracting the second block row from the first leaves ``[[I, 0], [S H_k, mu I]]`` and
``[[I, 0], [S H_k, mu (I + S H_k)]]``, so

    log|det J_k| = D log mu                         (heavy-ball: volume shrinks by mu^D, whatever H_k)
    log|det J_k| = D log mu + log|det(I + S H_k)|   (Nesterov).

These per-step determinants are those of the augmented flow ``(z_0, v_0) -> (z_K, v_K)``; they give a
density only when ``v_0`` has one. Short-run momentum starts at rest (``v_0 = 0``), so ``q_s`` is the
law of ``z_K = F(z_0)`` with ``F: R^D -> R^D`` and the change of variables needs
``dz_K/dz_0 = [I 0] J_{K-1} ... J_0 [I; 0]``: the product of the augmented per-step Jacobians applied
to the tangent ``(P_0, Q_0) = (I, 0)``, i.e. ``Q_{k+1} = mu Q_k + S H_k P_k`` and
``P_{k+1} = P_k + Q_{k+1}`` (Nesterov: ``H_k (P_k + mu Q_k)`` in place of ``H_k P_k``). That
recursion is this sampler's ``stepwise`` log-determinant (:meth:`ShortRunMomentum.step_log_det`);
it does not factor into per-step traces, so the ``stochastic`` estimator does not apply, and
``exact`` (the Jacobian of F by ``torch.func``) gives the same number.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Inference, Latents, Model
from inferkit.latents import hessians, unit_step_sizes
from inferkit.linalg import slogdet
from inferkit.samplers.shortrun import NumSteps, Score, ShortRun, eager_score, functional_score


def momentum_step(model: Model, x: Tensor, z: Latents, v: Latents, step_row: Tensor | list[Tensor],
                  momentum: Tensor, mask: Tensor | None, *, nesterov: bool,
                  score: Score = functional_score) -> tuple[Latents, Latents]:
    """One momentum step, per latent layer ``l`` (``s_k = step_row``, ``mu = momentum``):

        v_{k+1,l} = mu v_{k,l} + s_{k,l} grad_{z_l} log p(x, z_k [+ mu v_k]),    z_{k+1,l} = z_{k,l} + v_{k+1,l}

    (the look-ahead ``+ mu v_k`` with ``nesterov``). Returns ``(z_{k+1}, v_{k+1})``."""
    point = tuple(t + momentum * u for t, u in zip(z, v)) if nesterov else z
    grads = score(model, x, point, mask)
    v = tuple(torch.addcmul(momentum * u, g, step_row[layer]) for layer, (u, g) in enumerate(zip(v, grads)))
    return tuple(t + u for t, u in zip(z, v)), v


class ShortRunMomentum(ShortRun):
    """Noise-free short-run dynamics with momentum.

    Args:
        num_steps, step_size, per, units: as :class:`~inferkit.samplers.shortrun.ShortRun` (``S_k`` below
            is the gradient coefficient, ``s^2 / 2`` by default).
        momentum: mu in ``[0, 1)``; ``0`` is plain gradient flow.
        nesterov: evaluate the gradient at the look-ahead point ``z_k + mu v_k``.
    """

    supports_stochastic_log_det = False  # the Jacobian of z_0 -> z_K is not a product of I + S_k H_k

    def __init__(self, num_steps: NumSteps = 20, step_size: float | tuple[float, ...] = 0.05, per: str = "shared",
                 momentum: float = 0.5, nesterov: bool = False, units: str = "langevin"):
        super().__init__(num_steps=num_steps, step_size=step_size, per=per, units=units)
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise UserError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.nesterov = bool(nesterov)
        self.register_buffer("momentum", torch.tensor(float(momentum), dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={float(self.momentum)}, nesterov={self.nesterov}"

    def hyperparameters(self) -> dict[str, Tensor]:
        return {"step_size": self.step_size, "momentum": self.momentum}

    # -- the hot path ---------------------------------------------------------------------------
    def infer(self, model: Model, x: Tensor, *, index: Tensor | None = None, mask: Tensor | None = None,
              generator: torch.Generator | None = None) -> Inference:
        """K momentum steps from ``z_0 ~ p(z)``, ``v_0 = 0``; a fresh graph per step, ``z_K`` detached."""
        z = tuple(t.detach() for t in model.sample_prior(x.shape[0], generator=generator))
        dtype, device = z[0].dtype, z[0].device
        steps = self.step_sizes(len(z)).detach().to(device=device, dtype=dtype)
        step_rows = [list(row) for row in steps.unbind(0)]
        mu = self.momentum.detach().to(device=device, dtype=dtype)
        v = tuple(torch.zeros_like(t) for t in z)
        with torch.no_grad():
            for k in range(self.num_steps):
                z, v = momentum_step(model, x, z, v, step_rows[k], mu, mask, nesterov=self.nesterov,
                                     score=eager_score)
        return Inference(z=z, info={"num_steps": self.num_steps})

    # -- the differentiable map F -----------------------------------------------------------------
    def path(self, model: Model, x: Tensor, z0: Latents, step_sizes: Tensor, noise: list[Latents] | None = None,
             mask: Tensor | None = None, *, momentum: Tensor | None = None) -> list[Latents]:
        """Positions ``z_0..z_K`` (differentiable w.r.t. ``z_0``, step sizes, ``momentum`` (default: the
        sampler's) and the model)."""
        return [z for z, _ in self._states(model, x, z0, step_sizes, mask, momentum)]

    def _states(self, model: Model, x: Tensor, z0: Latents, step_sizes: Tensor, mask: Tensor | None,
                momentum: Tensor | None) -> list[tuple[Latents, Latents]]:
        steps = step_sizes.to(dtype=z0[0].dtype, device=z0[0].device)
        mu = (self.momentum if momentum is None else momentum).to(dtype=z0[0].dtype, device=z0[0].device)
        z, v = tuple(z0), tuple(torch.zeros_like(t) for t in z0)
        states = [(z, v)]
        for k in range(self.num_steps):
            z, v = momentum_step(model, x, z, v, steps[k], mu, mask, nesterov=self.nesterov)
            states.append((z, v))
        return states

    def step_log_det(self, model: Model, x: Tensor, path: list[Latents], step_sizes: Tensor,
                     mask: Tensor | None = None, *, momentum: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``log|det dz_K/dz_0|`` by the tangent recursion of the module docstring (Hessians by
        ``torch.func``, float64), for the path from ``path[0] = z_0`` (whose velocities are rerun from
        ``z_0``: the positions alone do not give them exactly). Returns (log-det ``[batch]``,
        invertibility margin ``[batch]``: the smallest singular value of ``dz_K/dz_0``, positive where F is
        locally invertible. Momentum oscillates along stiff directions, so ``det dz_K/dz_0`` may be
        negative without F being singular; unlike plain gradient flow there is no per-step certificate of
        global invertibility, so this is checked at the sampled points only)."""
        states = self._states(model, x, path[0], step_sizes, mask, momentum)
        unit_steps = unit_step_sizes(step_sizes.to(dtype=torch.float64, device=x.device), model.latent_shapes)
        mu = (self.momentum if momentum is None else momentum).to(dtype=torch.float64, device=x.device)
        batch, dim = x.shape[0], unit_steps.shape[1]
        tangent_z = torch.eye(dim, dtype=torch.float64, device=x.device).expand(batch, dim, dim)
        tangent_v = torch.zeros_like(tangent_z)
        for k in range(self.num_steps):
            z, v = states[k]
            point = tuple(t + mu.to(t.dtype) * u for t, u in zip(z, v)) if self.nesterov else z
            hess = hessians(model, x, point, mask).to(torch.float64)
            direction = tangent_z + mu * tangent_v if self.nesterov else tangent_z
            tangent_v = mu * tangent_v + unit_steps[k][None, :, None] * (hess @ direction)
            tangent_z = tangent_z + tangent_v
        _, log_abs = slogdet(tangent_z)
        finite = torch.isfinite(tangent_z).all(-1).all(-1)
        safe = torch.where(finite[:, None, None], tangent_z, torch.eye(dim, dtype=torch.float64, device=x.device))
        smallest = torch.linalg.svdvals(safe.detach())[:, -1]
        margin = torch.where(finite, smallest, torch.full_like(smallest, math.nan))
        return log_abs, margin
