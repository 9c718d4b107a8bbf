"""Short-run inference dynamics: K steps of gradient flow on ``log p(x, z)`` from the prior.

    z_0 ~ p(z),    z_{k+1} = z_k + S_k grad_z log p(x, z_k)        (k = 0..K-1)

``S_k`` is diagonal: one step size for every latent unit (``per="shared"``), one per latent
layer (``per="layer"``) or one per step (``per="step"``). ``F = z_0 -> z_K`` is the flow whose
law ``q_s`` the KL tuners fit to ``p(z | x)``; its Jacobian factorises over steps as
``prod_k (I + S_k H_k)`` with ``H_k = hess_z log p(x, z_k)``.

With ``compile`` other than ``"none"`` each step runs as one ``torch.compile``d function of
``(z_k, x, mask, s_k, eps_k)`` (see :mod:`inferkit.acceleration`); the noise is drawn outside it,
with the same generator in the same order, so both paths draw the same numbers.
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
from inferkit.interfaces import Inference, Latents, Model, Sampler
from inferkit.options import Bounds

MAX_STEPS = 100_000
NumSteps = Annotated[int, Bounds(maximum=MAX_STEPS, why="K is the gradient steps of each inference, each "
                                                       "a forward and backward pass")]

STEP_SIZE_LAYOUTS = ("shared", "layer", "step")


class ShortRun(Sampler):
    """Noise-free short-run gradient flow (Nijkamp et al., "Short Run Inference Dynamics").

    Args:
        num_steps: K, the number of gradient steps.
        step_size: s; one number, or a sequence (one per layer or one per step, see ``per``).
        per: ``"shared"``, ``"layer"`` or ``"step"``: what one entry of ``step_size`` covers.
        compile: ``"none"`` (eager steps), or the ``torch.compile`` mode of one step: ``"default"``,
            ``"reduce-overhead"`` (CUDA graphs of one step on CUDA) or ``"max-autotune"``.
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager`` compiles fast).
    """

    noise_scale: float = 0.0  # multiplies sqrt(2 s) eps; 1 for Langevin

    def __init__(self, num_steps: NumSteps = 20, step_size: float | tuple[float, ...] = 0.05, per: str = "shared",
                 compile: str = "none", compile_backend: str = "inductor"):
        super().__init__()
        check_compile(compile, compile_backend)
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
    def step_size_matrix(self, num_layers: int) -> Tensor:
        """``[K, L]`` matrix of step sizes ``s_{k,l}`` (float64)."""
        s = self.step_size
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

    def sample_noise(self, model: Model, n: int, *, generator: torch.Generator | None = None
                     ) -> list[Latents] | None:
        """The noise path ``eps_0..eps_{K-1}`` (``None`` for noise-free dynamics)."""
        return None

    def _noise_like(self, z: Latents, generator: torch.Generator | None) -> Latents:
        return tuple(torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype) for t in z)

    def _start(self, model: Model, x: Tensor, generator: torch.Generator | None
               ) -> tuple[Latents, Tensor, Tensor | None]:
        """``z_0 ~ p(z)`` (detached), the ``[K, L]`` step sizes ``S`` and noise scales
        ``sqrt(2 S) * noise_scale`` (``None`` without noise) in the latents' dtype and device."""
        z = tuple(t.detach() for t in model.sample_prior(x.shape[0], generator=generator))
        # Detached: a step size a tuner made differentiable must not link the steps into one graph.
        steps = self.step_size_matrix(len(z)).detach().to(device=z[0].device, dtype=z[0].dtype)
        noise_steps = (2 * steps).sqrt() * self.noise_scale if self.noise_scale else None
        return z, steps, noise_steps

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
        with torch.enable_grad():
            for k in range(self.num_steps):
                z = tuple(t.requires_grad_() for t in z)
                grads = torch.autograd.grad(model.log_joint(x, z, mask).sum(), z)
                # The update reads detached z and graph-free gradients: no graph outlives the step.
                row = step_rows[k]
                z = tuple(torch.addcmul(t.detach(), g, row[layer]) for layer, (t, g) in enumerate(zip(z, grads)))
                if noise_rows is not None:
                    row = noise_rows[k]
                    z = tuple(torch.addcmul(t, e, row[layer])
                              for layer, (t, e) in enumerate(zip(z, self._noise_like(z, generator))))
        return Inference(z=z, info={"num_steps": self.num_steps})

    # -- the compiled hot path ------------------------------------------------------------------
    def compiled_step(self, model: Model) -> Callable:
        """The compiled ``step(z, x, mask, step_row, noise, noise_row) -> z_next`` for ``model``
        (built on first use, kept while the model lives, never saved with the sampler)."""
        cached = self.__dict__.get("_compiled_step")
        if cached is not None and cached[0]() is model:
            return cached[1]
        function = compile_function(gradient_step(model), self.compile, self.compile_backend)
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
                noise = None if noise_rows is None else self._noise_like(z, generator)
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                z = step(z, x, mask, step_rows[k], noise, None if noise_rows is None else noise_rows[k])
        if graphs:  # a CUDA-graph output is overwritten by the next replay
            z = tuple(t.clone() for t in z)
        return Inference(z=z, info={"num_steps": self.num_steps, "compile": self.compile})

    # -- the differentiable map F, for tuners ---------------------------------------------------
    def path(self, model: Model, x: Tensor, z0: Latents, noise: list[Latents] | None = None,
             mask: Tensor | None = None) -> list[Latents]:
        """States ``z_0, ..., z_K`` of the flow, differentiable w.r.t. ``z_0``, the step sizes and the
        model (works under ``torch.func`` transforms)."""

        def log_joint_sum(z: Latents) -> Tensor:
            return model.log_joint(x, z, mask).sum()

        score = torch.func.grad(log_joint_sum)
        steps = self.step_size_matrix(len(z0)).to(dtype=z0[0].dtype, device=z0[0].device)
        states = [tuple(z0)]
        z = tuple(z0)
        for k in range(self.num_steps):
            grads = score(z)
            z = tuple(t + steps[k, layer] * g for layer, (t, g) in enumerate(zip(z, grads)))
            if noise is not None and self.noise_scale:
                z = tuple(t + (2 * steps[k, layer]).sqrt() * self.noise_scale * e
                          for layer, (t, e) in enumerate(zip(z, noise[k])))
            states.append(z)
        return states

    def flow(self, model: Model, x: Tensor, z0: Latents, noise: list[Latents] | None = None,
             mask: Tensor | None = None) -> Latents:
        """``F(z_0) = z_K`` (differentiable)."""
        return self.path(model, x, z0, noise, mask)[-1]


def gradient_step(model: Model) -> Callable:
    """``step(z, x, mask, step_row, noise, noise_row)``: one update
    ``z_l + s_l * grad_{z_l} log p(x, z) [+ r_l * eps_l]`` per layer ``l`` (``s = step_row``,
    ``r = noise_row``, ``eps = noise``; no noise term when ``noise`` is None), as :meth:`ShortRun.infer`
    computes it, written with ``torch.func.grad`` so that ``torch.compile`` takes it whole."""

    def step(z: Latents, x: Tensor, mask: Tensor | None, step_row: Tensor, noise: Latents | None,
             noise_row: Tensor | None) -> Latents:
        grads = torch.func.grad(lambda latents: model.log_joint(x, latents, mask).sum())(z)
        z = tuple(torch.addcmul(t, g, step_row[layer]) for layer, (t, g) in enumerate(zip(z, grads)))
        if noise is not None:
            z = tuple(torch.addcmul(t, e, noise_row[layer]) for layer, (t, e) in enumerate(zip(z, noise)))
        return z

    return step
