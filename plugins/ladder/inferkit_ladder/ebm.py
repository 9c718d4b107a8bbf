"""The ladder generator with an energy-based top prior (exponential tilting; Pang et al. 2020,
"Learning latent space energy-based prior model"; the thesis, chapter 4).

    p_alpha(z_L) = exp(-E_alpha(z_L)) N(z_L; 0, I) / Z_alpha,       E_alpha: an MLP

and every lower layer and the likelihood as in :class:`~inferkit_ladder.LadderModel`. So

    log p(x, z) = log p_0(z) - E_alpha(z_L) + log p(x | z) - log Z_alpha,

known only up to ``log Z_alpha``: ``log_joint`` omits it and the model says so (it is an
:class:`~inferkit.interfaces.UnnormalizedModel`), so log-likelihood evaluators skip it.
``sample_prior`` / ``log_prior`` stay the Gaussian reference ``p_0`` (the initial density short-run
inference starts from, exact and normalised, so ``J(s)`` and its tuners apply unchanged:
``J + log p(x) + log Z = KL``). Samples of the tilted prior come from short-run Langevin on ``log p_0(z_L) - E_alpha(z_L)`` (``prior_steps`` steps of size
``prior_step_size``, from ``p_0``):

    z_{k+1} = z_k + (s^2 / 2) grad[-|z_k|^2 / 2 - E_alpha(z_k)] + s eps_k

(the Langevin convention of :mod:`inferkit.samplers.units`, as in Pang et al.'s code; with
``prior_step_units="raw"`` the coefficient is ``s`` and the noise ``sqrt(2 s) eps_k``)

and learning follows maximum likelihood: the posterior samples of inference give the positive
phase through ``-log_joint``, the prior samples the negative phase through
``log_normalizer_surrogate`` (``grad log Z = E_{p_alpha}[-grad E_alpha]``), which the trainer adds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from inferkit.errors import UserError
from inferkit.interfaces import Latents, UnnormalizedModel
from inferkit.samplers.units import check_units, gradient_coefficient
from inferkit_ladder.config import Features, check_int, check_positive_float
from inferkit_ladder.model import LadderModel


class LatentEnergy(nn.Module):
    """``E_alpha(z)``: Linear -> LeakyReLU(0.2) -> Linear -> LeakyReLU(0.2) -> Linear(1), per example."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(-1)


class LadderEBM(LadderModel, UnnormalizedModel):
    """:class:`~inferkit_ladder.LadderModel` with the top prior tilted by ``exp(-E_alpha(z_L))``.

    Args (besides the ladder's):
        energy_hidden: width of the energy MLP.
        prior_steps, prior_step_size: short-run Langevin for samples of the tilted prior
            (Pang et al.: 60 steps of ``s = 0.4``).
        prior_step_units: ``"langevin"`` (default) or ``"raw"``: the units of ``prior_step_size``.
    """

    def __init__(
        self,
        *,
        num_layers: int = 3,
        latent_dims: tuple[int, ...] = (),
        nf: Features = 12,
        image_size: int = 32,
        channels: int = 3,
        observation_sigma: float = 0.3,
        parameterization: str = "whitened",
        min_sigma: float = 1e-2,
        projection_channels: int = 4,
        sigma_head: str = "log-variance",
        output_block: str = "residual",
        energy_hidden: int = 200,
        prior_steps: int = 60,
        prior_step_size: float = 0.4,
        prior_step_units: str = "langevin",
    ) -> None:
        super().__init__(num_layers=num_layers, latent_dims=latent_dims, nf=nf, image_size=image_size,
                         channels=channels, observation_sigma=observation_sigma,
                         parameterization=parameterization, min_sigma=min_sigma,
                         projection_channels=projection_channels, sigma_head=sigma_head, output_block=output_block)
        self.prior_steps = check_int("prior_steps", prior_steps, 0)
        self.prior_step_size = check_positive_float("prior_step_size", prior_step_size)
        self.prior_step_units = check_units(prior_step_units, "ladder-ebm")
        self.energy = LatentEnergy(self.latent_shapes[-1][0], check_int("energy_hidden", energy_hidden, 1))

    def log_joint(self, x: Tensor, z: Latents, mask: Tensor | None = None) -> Tensor:
        """``log p_0(z) - E_alpha(z_L) + log p(x | z)`` per example (``log Z_alpha`` omitted)."""
        return super().log_joint(x, z, mask) - self.energy(z[-1])

    def tilted_log_density(self, z_top: Tensor) -> Tensor:
        """``log N(z_L; 0, I) - E_alpha(z_L)`` up to constants: the log density prior Langevin targets."""
        return -0.5 * z_top.pow(2).sum(-1) - self.energy(z_top)

    def sample_top(self, n: int, *, generator: torch.Generator | None = None, steps: int | None = None) -> Tensor:
        """``z_L`` from short-run Langevin on the tilted prior, started at ``N(0, I)`` (detached)."""
        num_steps = self.prior_steps if steps is None else steps
        if num_steps < 0:
            raise UserError(f"ladder-ebm: prior steps must be >= 0, got {num_steps}")
        dim = self.latent_shapes[-1][0]
        z = self._randn(n, dim, generator)
        step = gradient_coefficient(self.prior_step_size, self.prior_step_units)
        for _ in range(num_steps):
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                (score,) = torch.autograd.grad(self.tilted_log_density(z).sum(), z)
            z = z.detach() + step * score + (2 * step) ** 0.5 * self._randn(n, dim, generator)
        return z.detach()

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples of the tilted model: ``z_L`` by prior Langevin, the layers below from
        their conditionals, then the decoded mean."""
        eps = list(self.sample_prior(n, generator=generator))
        top = self.sample_top(n, generator=generator)
        if self.whitened:
            eps[-1] = top
            return self.decode(tuple(eps))
        eps = list(self.whiten(tuple(eps)))  # centered: re-draw the lower layers below the new top
        eps[-1] = top
        return self.decode(self.center(tuple(eps)))

    def log_normalizer_surrogate(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``-(E(z^-) - stop_grad(E(z^-))).mean()`` over ``n`` prior-Langevin samples ``z^-``: value 0,
        gradient ``-mean grad E_alpha(z^-)``, the estimate of ``grad log Z_alpha``."""
        negative = self.energy(self.sample_top(n, generator=generator))
        return -(negative - negative.detach()).mean()
