"""Short-run Langevin dynamics: the gradient flow of :mod:`shortrun` plus diffusion noise.

    z_0 ~ p(z),    z_{k+1} = z_k + (s_k^2 / 2) grad_z log p(x, z_k) + s_k eps_k,   eps_k ~ N(0, I)

(:func:`~inferkit.samplers.shortrun.shortrun_step` with ``noise_scale = 1`` and the gradient
coefficient ``S_k = s_k^2 / 2``, so the noise ``sqrt(2 S_k) eps_k`` is ``s_k eps_k``, as in the authors'
code; with ``units="raw"``, ``S_k = s_k``.)

With the noise path held fixed each step's Jacobian is still ``I + S_k H_k``, so the tuners'
log-determinant gives the entropy of ``q`` *conditional on the noise*; since
``H(z_K) >= H(z_K | eps)``, the J they minimise is an upper bound on ``KL(q_s || p(z|x)) - log p(x)``.
The gap is the mutual information ``I(z_K; eps) = H(z_K) - H(z_K | eps)``, which grows with s (more
of z_K's spread comes from the noise), so tuning on this bound leans toward smaller step sizes than
the KL itself would choose.
"""

from __future__ import annotations

import torch

from inferkit.devices import module_placement
from inferkit.interfaces import Latents, Model
from inferkit.samplers.shortrun import ShortRun


class Langevin(ShortRun):
    """Noisy short-run Langevin (Nijkamp et al., ECCV 2020); options as :class:`ShortRun`."""

    noise_scale = 1.0

    def sample_noise(self, model: Model, n: int, *, generator: torch.Generator | None = None
                     ) -> list[Latents]:
        """``eps_0..eps_{K-1} ~ N(0, I)``, shaped like the latents."""
        # Noise is made where the model lives (never on the host and copied over).
        device, dtype = module_placement(model)
        return [tuple(torch.randn(n, *shape, generator=generator, device=device, dtype=dtype)
                      for shape in model.latent_shapes)
                for _ in range(self.num_steps)]
