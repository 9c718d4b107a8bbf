"""A third-party sampler in a few lines: K steps of random-walk Metropolis on ``log p(x, z)``.

    z_0 ~ p(z),   z' = z_k + step_size * eps,   eps ~ N(0, I),
    z_{k+1} = z'  with probability  min(1, p(x, z') / p(x, z_k)),  else  z_k.

Each example runs its own chain, so ``q(z | x)`` tends to the exact posterior ``p(z | x)`` as the
number of steps grows (the proposal is symmetric, so the acceptance ratio is the ratio of joints).
Accept/reject moves are not a differentiable flow, so this is a plain :class:`inferkit.Sampler`, not an
:class:`inferkit.GradientFlow`: the KL tuners refuse it and the ``fixed`` tuner sets its step size.
"""

import math

import torch

import inferkit


class ToyMetropolis(inferkit.Sampler):
    """Random-walk Metropolis from the prior: ``num_steps`` steps of proposal scale ``step_size``."""

    def __init__(self, num_steps: int = 50, step_size: float = 0.1):
        super().__init__()
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise inferkit.UserError(f"toy-metropolis: num_steps must be a positive integer, got {num_steps!r}")
        if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
            raise inferkit.UserError(f"toy-metropolis: step_size must be a positive number, got {step_size!r}")
        self.num_steps = num_steps
        # A buffer: saved in checkpoints, moved with .to(device), and set in place by the inherited
        # Sampler.set_hyperparameters (which copies a tuner's chosen value into the tensor below).
        self.register_buffer("step_size", torch.tensor(float(step_size)))

    def hyperparameters(self):
        """The live ``step_size`` buffer (0-dimensional), by name."""
        return {"step_size": self.step_size}

    @torch.no_grad()
    def infer(self, model, x, *, index=None, mask=None, generator=None):
        z = model.sample_prior(x.shape[0], generator=generator)
        log_p = model.log_joint(x, z, mask)
        accepted = torch.zeros_like(log_p)
        for _ in range(self.num_steps):
            proposal = tuple(layer + self.step_size.to(layer) * torch.randn(
                layer.shape, generator=generator, device=layer.device, dtype=layer.dtype) for layer in z)
            log_p_proposal = model.log_joint(x, proposal, mask)
            uniform = torch.rand(log_p.shape, generator=generator, device=log_p.device, dtype=log_p.dtype)
            accept = uniform.log() < log_p_proposal - log_p  # a NaN proposal is never accepted
            z = tuple(torch.where(accept.view(-1, *[1] * (layer.dim() - 1)), new, layer)
                      for new, layer in zip(proposal, z))
            log_p = torch.where(accept, log_p_proposal, log_p)
            accepted += accept.to(accepted.dtype)
        return inferkit.Inference(z=z, info={"acceptance_rate": float(accepted.mean()) / self.num_steps})
