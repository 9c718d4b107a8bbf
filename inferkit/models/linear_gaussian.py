"""The linear-Gaussian model: every quantity inferkit estimates has a closed form here.

    z ~ N(0, I_d),   x = W z + b + sigma * eps,   eps ~ N(0, I_D).

Posterior precision ``P = I + W^T W / sigma^2``, posterior ``N(P^{-1} W^T (x - b) / sigma^2, P^{-1})``,
marginal ``x ~ N(b, W W^T + sigma^2 I)``. Noise-free gradient flow with step sizes ``s_k`` is linear,
``z_K - m = A (z_0 - m)`` with ``A = prod_k (I - s_k P)``, so ``q_s = N((I - A) m, A A^T)`` and
``KL(q_s || p(z|x))`` is the KL of two Gaussians (:meth:`LinearGaussian.flow_kl`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inferkit.errors import UserError
from inferkit.interfaces import Latents, Model, SimulatesObservations
from inferkit.linalg import slogdet

_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mean_q: Tensor, cov_q: Tensor, mean_p: Tensor, cov_p: Tensor) -> Tensor:
    """``KL(N(mean_q, cov_q) || N(mean_p, cov_p))`` for batched means ``[..., d]`` and covariances
    ``[..., d, d]``: ``0.5 (tr(S_p^-1 S_q) + (m_p-m_q)^T S_p^-1 (m_p-m_q) - d + log|S_p| - log|S_q|)``."""
    d = mean_q.shape[-1]
    chol_p = torch.linalg.cholesky(cov_p)
    diff = (mean_p - mean_q).unsqueeze(-1)
    trace = torch.cholesky_solve(cov_q, chol_p).diagonal(dim1=-2, dim2=-1).sum(-1)
    maha = (diff * torch.cholesky_solve(diff, chol_p)).sum((-2, -1))
    logdet_p = 2 * chol_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    logdet_q = slogdet(cov_q)[1]
    return 0.5 * (trace + maha - d + logdet_p - logdet_q)


class LinearGaussian(Model, SimulatesObservations):
    """``x = W z + b + sigma eps`` with ``z ~ N(0, I_d)``; ``weight`` is ``W`` (D x d)."""

    def __init__(self, latent_dim: int = 8, data_dim: int = 16, sigma: float = 0.5, seed: int = 0,
                 dtype: str = "float32"):
        super().__init__()
        if latent_dim < 1 or data_dim < 1:
            raise UserError("linear-gaussian: latent_dim and data_dim must be positive integers")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise UserError(f"linear-gaussian: sigma must be a positive number, got {sigma}")
        if dtype not in ("float32", "float64"):
            raise UserError("linear-gaussian: dtype must be float32 or float64")
        generator = torch.Generator().manual_seed(seed)
        torch_dtype = getattr(torch, dtype)
        weight = torch.randn(data_dim, latent_dim, generator=generator, dtype=torch.float64)
        weight /= math.sqrt(latent_dim)
        bias = 0.1 * torch.randn(data_dim, generator=generator, dtype=torch.float64)
        self.weight = torch.nn.Parameter(weight.to(torch_dtype))
        self.bias = torch.nn.Parameter(bias.to(torch_dtype))
        self.register_buffer("log_sigma", torch.tensor(math.log(sigma), dtype=torch_dtype))
        self.latent_shapes = ((latent_dim,),)
        self.data_shape = (data_dim,)

    # -- observation noise (annealable) -------------------------------------------------------
    @property
    def sigma(self) -> float:
        return float(self.log_sigma.exp())

    @property
    def observation_sigma(self) -> float:
        return self.sigma

    def set_observation_sigma(self, sigma: float) -> None:
        self.log_sigma.fill_(math.log(sigma))

    # -- Model interface ------------------------------------------------------------------------
    def sample_prior(self, n: int, *, generator: torch.Generator | None = None) -> Latents:
        """``z ~ N(0, I_d)``."""
        return (torch.randn(n, *self.latent_shapes[0], generator=generator,
                            device=self.weight.device, dtype=self.weight.dtype),)

    def log_prior(self, z: Latents) -> Tensor:
        """``log N(z; 0, I) = -0.5 (|z|^2 + d log 2 pi)``."""
        (z1,) = z
        return -0.5 * (z1.pow(2).sum(-1) + z1.shape[-1] * _LOG_2PI)

    def decode(self, z: Latents) -> Tensor:
        """``E[x | z] = W z + b``."""
        return z[0] @ self.weight.T + self.bias

    def sample_observation(self, z: Latents, *, generator: torch.Generator | None = None) -> Tensor:
        """``x = W z + b + sigma eps``, ``eps ~ N(0, I_D)``."""
        mean = self.decode(z)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + self.log_sigma.exp() * noise

    def log_joint(self, x: Tensor, z: Latents, mask: Tensor | None = None) -> Tensor:
        """``log N(z; 0, I) + sum_i m_i log N(x_i; (W z + b)_i, sigma^2)`` (``m`` = mask, default 1)."""
        log_sigma = self.log_sigma
        residual = (x - self.decode(z)) / log_sigma.exp()
        per_pixel = -0.5 * (residual.pow(2) + _LOG_2PI) - log_sigma
        if mask is not None:
            per_pixel = per_pixel * mask
        return self.log_prior(z) + per_pixel.sum(-1)

    # -- closed forms ---------------------------------------------------------------------------
    def posterior_precision(self) -> Tensor:
        """``P = I + W^T W / sigma^2``."""
        weight = self.weight
        eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
        return eye + weight.T @ weight / self.log_sigma.exp() ** 2

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``p(z | x) = N(P^{-1} W^T (x - b) / sigma^2, P^{-1})``: returns (mean ``[B, d]``, cov ``[d, d]``)."""
        precision = self.posterior_precision()
        cov = torch.linalg.inv(precision)
        mean = (x - self.bias) @ self.weight / self.log_sigma.exp() ** 2 @ cov
        return mean, cov

    def log_marginal(self, x: Tensor) -> Tensor:
        """``log p(x) = log N(x; b, W W^T + sigma^2 I)`` per example."""
        weight = self.weight
        cov = weight @ weight.T + self.log_sigma.exp() ** 2 * torch.eye(
            weight.shape[0], dtype=weight.dtype, device=weight.device)
        dist = torch.distributions.MultivariateNormal(self.bias, covariance_matrix=cov)
        return dist.log_prob(x)

    def flow_matrix(self, step_sizes: Tensor) -> Tensor:
        """``A = prod_k (I - s_k P)``: the Jacobian of K noise-free gradient steps."""
        precision = self.posterior_precision()
        eye = torch.eye(precision.shape[0], dtype=precision.dtype, device=precision.device)
        a = eye
        for s in step_sizes.reshape(-1):
            a = (eye - s * precision) @ a
        return a

    def flow_kl(self, x: Tensor, step_sizes: Tensor) -> Tensor:
        """Closed-form ``KL(q_s || p(z|x))`` per example for noise-free gradient flow from the prior,
        ``q_s = N((I - A) m, A A^T)``; ``step_sizes`` holds ``s_1..s_K``."""
        mean, cov = self.posterior(x)
        a = self.flow_matrix(step_sizes)
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        mean_q = mean @ (eye - a).T
        cov_q = a @ a.T
        return gaussian_kl(mean_q, cov_q.expand(x.shape[0], -1, -1), mean, cov.expand(x.shape[0], -1, -1))

    def langevin_kl(self, x: Tensor, step_sizes: Tensor) -> Tensor:
        """Closed-form ``KL(q_s || p(z|x))`` for Langevin with noise ``sqrt(2 s_k) eps_k``:
        ``q_s = N((I - A) m, A A^T + sum_k 2 s_k B_k B_k^T)`` with ``B_k = prod_{j>k} (I - s_j P)``."""
        mean, cov = self.posterior(x)
        precision = self.posterior_precision()
        eye = torch.eye(precision.shape[0], dtype=precision.dtype, device=precision.device)
        a = eye
        noise_cov = torch.zeros_like(eye)
        for s in step_sizes.reshape(-1):
            step = eye - s * precision
            a = step @ a
            noise_cov = step @ noise_cov @ step.T + 2 * s * eye
        mean_q = mean @ (eye - a).T
        cov_q = a @ a.T + noise_cov
        return gaussian_kl(mean_q, cov_q.expand(x.shape[0], -1, -1), mean, cov.expand(x.shape[0], -1, -1))
