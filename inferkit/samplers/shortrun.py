"""Short-run inference dynamics: K steps of gradient flow on ``log p(x, z)`` from the prior.

    z_0 ~ p(z),    z_{k+1} = z_k + S_k grad_z log p(x, z_k)  [+ sqrt(2 S_k) eps_k]     (k = 0..K-1)

(the noise term for Langevin, :mod:`inferkit.samplers.langevin`), with the gradient coefficient
``S_k = s_k^2 / 2`` for the step size ``s_k`` (noise ``s_k eps_k``), as in the authors' code, or
``S_k = s_k`` with ``units="raw"`` (the papers' eq. (10) read literally; see
:mod:`inferkit.samplers.units`). ``S_k`` is diagonal: one step size for every latent unit
(``per="shared"``), one per latent layer (``per="layer"``) or one per step (``per="step"``). ``F = z_0 -> z_K`` is the flow whose law ``q_s`` the KL tuners fit to ``p(z | x)``;
its Jacobian factorises over steps as ``prod_k (I + S_k H_k)`` with ``H_k = hess_z log p(x, z_k)``.

One update, :func:`shortrun_step`, is run three ways: eagerly by :meth:`ShortRun.infer` (a fresh
graph per step, no graph across steps), as one ``torch.compile``d function per step with
``compile`` other than ``"none"`` (see :mod:`inferkit.acceleration`), and differentiably by
:meth:`ShortRun.path` (for the tuners, also under ``torch.func`` transforms). The noise is drawn
outside the step, with the same generator in the same order, so all three draw the same numbers.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Annotated

import torch
from torch import Tensor

from inferkit.acceleration import check_compile, compile_function, uses_cuda_graphs
from inferkit.errors import UserError
from inferkit.interfaces import GradientFlow, Inference, Latents, Model
from inferkit.options import Bounds
from inferkit.samplers.units import check_units, gradient_coefficient

MAX_STEPS = 100_000
NumSteps = Annotated[int, Bounds(maximum=MAX_STEPS, why="K is the gradient steps of each inference, each "
                                                       "a forward and backward pass")]

STEP_SIZE_LAYOUTS = ("shared", "layer", "step")

Score = Callable[[Model, Tensor, Latents, "Tensor | None"], Latents]
"""``(model, x, z, mask) -> grad_z log p(x, z)``, one tensor per latent layer."""


def functional_score(model: Model, x: Tensor, z: Latents, mask: Tensor | None) -> Latents:
    """``grad_z sum_i log p(x_i, z_i)`` by ``torch.func.grad``: composes with ``torch.func`` transforms
    (``vmap``, ``jacfwd``) and ``torch.compile``, and is differentiable in ``z``, the step sizes and the
    model's parameters when they require grad."""
    return torch.func.grad(lambda latents: model.log_joint(x, latents, mask).sum())(z)


def eager_score(model: Model, x: Tensor, z: Latents, mask: Tensor | None) -> Latents:
    """The same gradient by ``torch.autograd.grad`` on fresh leaves: no graph outlives the call, and in
    eager mode it runs ~1.3x (conv generator) to ~2x (tiny models) faster than ``torch.func.grad``."""
    with torch.enable_grad():
        leaves = tuple(t.detach().requires_grad_() for t in z)
        return torch.autograd.grad(model.log_joint(x, leaves, mask).sum(), leaves)


def shortrun_step(model: Model, x: Tensor, z: Latents, step_row: Tensor | Sequence[Tensor],
                  noise_row: Tensor | Sequence[Tensor] | None, eps: Latents | None, mask: Tensor | None,
                  score: Score = functional_score) -> Latents:
    """One short-run step, per latent layer ``l``:

        z_{k+1,l} = z_{k,l} + s_{k,l} grad_{z_l} log p(x, z_k)  [+ r_{k,l} eps_{k,l}]

    with the gradient coefficients ``s_k = step_row`` (:meth:`GradientFlow.step_sizes`),
    ``r_k = noise_row = noise_scale * sqrt(2 s_k)`` and ``eps_k = eps`` (no
    noise term when ``eps`` is None). ``score`` computes the gradient (:func:`functional_score` by
    default; the eager loop passes :func:`eager_score`)."""
    grads = score(model, x, z, mask)
    z = tuple(torch.addcmul(t, g, step_row[layer]) for layer, (t, g) in enumerate(zip(z, grads)))
    if eps is not None:
        z = tuple(torch.addcmul(t, e, noise_row[layer]) for layer, (t, e) in enumerate(zip(z, eps)))
    return z


def noise_like(z: Latents, generator: torch.Generator | None) -> Latents:
    """``eps ~ N(0, I)`` shaped like ``z``, on its device and in its dtype."""
    return tuple(torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype) for t in z)


class ShortRun(GradientFlow):
    """Noise-free short-run gradient flow (Nijkamp et al., "Short Run Inference Dynamics").

    Args:
        num_steps: K, the number of gradient steps.
        step_size: s; one number, or a sequence (one per layer or one per step, see ``per``). The
            default 0.05 is the authors' ``z_step_size``.
        units: ``"langevin"``: the gradient coefficient is ``s^2 / 2`` and Langevin's noise ``s eps``
            (the authors' code); ``"raw"``: the coefficient is ``s`` and the noise ``sqrt(2 s) eps``.
        per: ``"shared"``, ``"layer"`` or ``"step"``: what one entry of ``step_size`` covers.
        compile: ``"none"`` (eager steps), or the ``torch.compile`` mode of one step: ``"default"``,
            ``"reduce-overhead"`` (CUDA graphs of one step on CUDA) or ``"max-autotune"``.
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager`` compiles fast).
    """

    noise_scale: float = 0.0  # multiplies sqrt(2 s) eps; 1 for Langevin

    def __init__(self, num_steps: NumSteps = 20, step_size: float | tuple[float, ...] = 0.05, per: str = "shared",
                 compile: str = "none", compile_backend: str = "inductor", units: str = "langevin"):
        super().__init__()
        check_compile(compile, compile_backend)
        self.units = check_units(units, type(self).__name__)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise UserError(f"num_steps must be a positive integer (K), got {num_steps!r}")
        if per not in STEP_SIZE_LAYOUTS:
            raise UserError(f"per must be one of {', '.join(STEP_SIZE_LAYOUTS)}, got {per!r}")
        try:
            if isinstance(step_size, Sequence) and not isinstance(step_size, str):
                values = [float(s) for s in step_size]
            else:
                values = [float(step_size)]
        except (TypeError, ValueError):
            raise UserError(f"step_size must be a positive number or a sequence of them, got {step_size!r}"
                            ) from None
        if not values or not all(math.isfinite(s) and s > 0 for s in values):
            raise UserError(f"step_size must be positive and finite, got {step_size!r}")
        if per == "shared" and len(values) != 1:
            raise UserError("step_size has several entries: set per=layer or per=step to say what they cover")
        if per == "step" and len(values) == 1:
            values = values * num_steps
        if per == "step" and len(values) != num_steps:
            raise UserError(f"per=step needs one step size per step: got {len(values)} for num_steps={num_steps}")
        self.num_steps = num_steps
        self.per = per
        self.compile = compile
        self.compile_backend = compile_backend
        tensor = torch.tensor(values if per != "shared" else values[0], dtype=torch.float64)
        self.register_buffer("step_size", tensor)

    def extra_repr(self) -> str:
        text = f"num_steps={self.num_steps}, per={self.per!r}, step_size={self.step_size.tolist()}"
        if self.units != "langevin":
            text += f", units={self.units!r}"
        if self.compile != "none":
            text += f", compile={self.compile!r}, compile_backend={self.compile_backend!r}"
        return text

    def __getstate__(self) -> dict:
        """The module's state without the compiled step (rebuilt on first use after unpickling)."""
        state = super().__getstate__()
        state.pop("_compiled_step", None)
        return state

    def hyperparameters(self) -> dict[str, Tensor]:
        return {"step_size": self.step_size}

    # -- step sizes -----------------------------------------------------------------------------
    def step_sizes(self, num_layers: int, step_size: Tensor | None = None) -> Tensor:
        """``[K, L]`` gradient coefficients ``S_{k,l}`` (``s^2 / 2``, or ``s`` with ``units="raw"``) from
        ``step_size`` (laid out as ``per`` says; default: the current ``step_size``, float64),
        differentiable in it."""
        s = gradient_coefficient(self.step_size if step_size is None else step_size, self.units)
        if self.per == "shared":
            return s.expand(self.num_steps, num_layers)
        if self.per == "step":
            return s.unsqueeze(1).expand(self.num_steps, num_layers)
        if s.numel() == 1:
            return s.reshape(1, 1).expand(self.num_steps, num_layers)
        if s.numel() != num_layers:
            raise UserError(f"per=layer needs one step size per latent layer: got {s.numel()} for a model "
                            f"with {num_layers} layers")
        return s.unsqueeze(0).expand(self.num_steps, num_layers)

    def noise_scales(self, step_sizes: Tensor) -> Tensor | None:
        """``noise_scale * sqrt(2 S)`` for ``[K, L]`` step sizes (``None`` for a noise-free flow)."""
        return (2 * step_sizes).sqrt() * self.noise_scale if self.noise_scale else None

    def _start(self, model: Model, x: Tensor, generator: torch.Generator | None
               ) -> tuple[Latents, Tensor, Tensor | None]:
        """``z_0 ~ p(z)`` (detached), the ``[K, L]`` step sizes ``S`` and noise scales
        ``sqrt(2 S) * noise_scale`` (``None`` without noise) in the latents' dtype and device."""
        z = tuple(t.detach() for t in model.sample_prior(x.shape[0], generator=generator))
        # Detached: a step size that requires grad must not link the steps into one graph.
        steps = self.step_sizes(len(z)).detach().to(device=z[0].device, dtype=z[0].dtype)
        return z, steps, self.noise_scales(steps)

    # -- the hot path: inference without a graph across steps -----------------------------------
    def infer(self, model: Model, x: Tensor, *, index: Tensor | None = None, mask: Tensor | None = None,
              generator: torch.Generator | None = None) -> Inference:
        """Run the K steps from ``z_0 ~ p(z)``; returns ``z_K`` detached.

        Each step builds a fresh graph of ``log p(x, z_k)``, takes ``grad_z`` and frees it, so peak
        memory does not grow with K. Nothing here synchronises with the host.
        """
        if self.compile != "none":
            return self._infer_compiled(model, x, mask=mask, generator=generator)
        z, steps, noise_steps = self._start(model, x, generator)
        step_rows = [list(row) for row in steps.unbind(0)]  # 0-dim views made once, not per step
        noise_rows = None if noise_steps is None else [list(row) for row in noise_steps.unbind(0)]
        with torch.no_grad():  # the update builds no graph; eager_score makes (and frees) its own
            for k in range(self.num_steps):
                eps = None if noise_rows is None else noise_like(z, generator)
                z = shortrun_step(model, x, z, step_rows[k], None if noise_rows is None else noise_rows[k], eps,
                                  mask, score=eager_score)
        return Inference(z=z, info={"num_steps": self.num_steps})

    # -- the compiled hot path ------------------------------------------------------------------
    def compiled_step(self, model: Model) -> Callable:
        """``torch.compile`` of :func:`shortrun_step` for ``model``, called as
        ``step(z, x, mask, step_row, noise, noise_row)`` (built on first use, kept while the model
        lives, never saved with the sampler)."""
        cached = self.__dict__.get("_compiled_step")
        if cached is not None and cached[0]() is model:
            return cached[1]

        def step(z: Latents, x: Tensor, mask: Tensor | None, step_row: Tensor, noise: Latents | None,
                 noise_row: Tensor | None) -> Latents:
            return shortrun_step(model, x, z, step_row, noise_row, noise, mask)

        function = compile_function(step, self.compile, self.compile_backend)
        self.__dict__["_compiled_step"] = (weakref.ref(model), function)
        return function

    def _infer_compiled(self, model: Model, x: Tensor, *, mask: Tensor | None,
                        generator: torch.Generator | None) -> Inference:
        """:meth:`infer` through :meth:`compiled_step`: the same updates and the same noise draws."""
        z, steps, noise_steps = self._start(model, x, generator)
        # One contiguous [L] tensor per step, made before the loop: every call sees the same layout.
        step_rows = [row.clone() for row in steps.unbind(0)]
        noise_rows = None if noise_steps is None else [row.clone() for row in noise_steps.unbind(0)]
        step = self.compiled_step(model)
        graphs = uses_cuda_graphs(self.compile, self.compile_backend, z[0].device)
        with torch.no_grad():  # torch.func.grad inside the step ignores it; no parameter graph is built
            for k in range(self.num_steps):
                noise = None if noise_rows is None else noise_like(z, generator)
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                z = step(z, x, mask, step_rows[k], noise, None if noise_rows is None else noise_rows[k])
        if graphs:  # a CUDA-graph output is overwritten by the next replay
            z = tuple(t.clone() for t in z)
        return Inference(z=z, info={"num_steps": self.num_steps, "compile": self.compile})

    # -- the differentiable map F, for tuners ---------------------------------------------------
    def path(self, model: Model, x: Tensor, z0: Latents, step_sizes: Tensor, noise: list[Latents] | None = None,
             mask: Tensor | None = None) -> list[Latents]:
        """States ``z_0, ..., z_K`` of the flow with ``[K, L]`` ``step_sizes`` (and, for a noisy flow,
        the noise path ``noise`` held fixed), differentiable w.r.t. ``z_0``, the step sizes and the model
        (works under ``torch.func`` transforms)."""
        steps = step_sizes.to(dtype=z0[0].dtype, device=z0[0].device)
        noise_steps = self.noise_scales(steps) if noise is not None else None
        states = [tuple(z0)]
        for k in range(self.num_steps):
            eps = None if noise_steps is None else noise[k]
            states.append(shortrun_step(model, x, states[-1], steps[k], None if noise_steps is None else noise_steps[k],
                                        eps, mask))
        return states
