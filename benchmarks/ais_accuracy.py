"""AIS against exact log-likelihoods: the default settings (Laplace base) and annealing from the prior.

    python benchmarks/ais_accuracy.py                       # sigma 0.3, 0.1, 0.05 at d=32, D=784, 8 images
    python benchmarks/ais_accuracy.py --sigmas 0.1 --images 4 --json out.json

For each observation noise sigma, a float64 linear-Gaussian model (``latent_dim=32, data_dim=784``)
and ``--images`` data points simulated from it; ``|AIS - log p(x)|`` per image against the closed form
:meth:`~inferkit.models.linear_gaussian.LinearGaussian.log_marginal`, and the wall time of each setting:

* ``prior``: 16 chains, 500 intermediate distributions, 10 leapfrog steps, per-chain step sizes adapted
  towards acceptance 0.65, annealing from ``p(z)`` (Wu et al.'s setting);
* ``default``: :func:`inferkit.eval.ais.ais_log_likelihood` with its defaults.

The posterior of a linear-Gaussian model is Gaussian, so the Laplace base is exact there and only checks
the machinery; the last row is a curved two-dimensional posterior (``x = tanh(W z + c) + sigma eps``,
``D = 3``) whose ``log p(x)`` comes from quadrature on a 601 x 601 grid.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

import inferkit
from inferkit.eval import ais
from inferkit.interfaces import Model

LOG_2PI = math.log(2 * math.pi)
SETTINGS = {
    "prior": {"base": "prior", "num_chains": 16, "num_steps": 500, "leapfrog_steps": 10, "target_acceptance": 0.65},
    "default": {},
}


class TanhDecoder(Model):
    """``z ~ N(0, I_2)``, ``x = tanh(W z + c) + sigma eps`` (D = 3), with ``log p(x)`` by quadrature."""

    def __init__(self, sigma: float = 0.1, scale: float = 4.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = scale * torch.randn(3, 2, generator=generator, dtype=torch.float64)
        self.shift = torch.randn(3, generator=generator, dtype=torch.float64)
        self.sigma = sigma
        self.latent_shapes, self.data_shape = ((2,),), (3,)

    def sample_prior(self, n, *, generator=None):
        return (torch.randn(n, 2, generator=generator, dtype=torch.float64),)

    def log_prior(self, z):
        return -0.5 * (z[0].pow(2).sum(-1) + 2 * LOG_2PI)

    def decode(self, z):
        return torch.tanh(z[0] @ self.weight.T + self.shift)

    def log_joint(self, x, z, mask=None):
        residual = (x - self.decode(z)) / self.sigma
        return self.log_prior(z) - 0.5 * (residual.pow(2) + LOG_2PI).sum(-1) - 3 * math.log(self.sigma)

    def log_marginal(self, x, n: int = 601, width: float = 6.0):
        grid = torch.linspace(-width, width, n, dtype=torch.float64)
        z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
        cell = math.log(float(grid[1] - grid[0]) ** 2)
        return torch.stack([torch.logsumexp(self.log_joint(row.expand(z.shape[0], -1), (z,)), 0) + cell for row in x])


def case(model, x: torch.Tensor, exact: torch.Tensor, label: str) -> list[dict]:
    rows = []
    for name, options in SETTINGS.items():
        began = time.perf_counter()
        result = ais.ais_log_likelihood(model, x, generator=torch.Generator().manual_seed(0), **options)
        seconds = time.perf_counter() - began
        error = (result.log_likelihood - exact).abs()
        rows.append({"case": label, "setting": name, "mean_abs_error": float(error.mean()),
                     "max_abs_error": float(error.max()), "mean_signed_error": float((result.log_likelihood - exact).mean()),
                     "monte_carlo_standard_error": result.standard_error, "seconds": seconds})
        print(f"{label:<34} {name:<8} |AIS - exact| mean {error.mean():8.3f}  max {error.max():8.3f}  "
              f"{seconds:8.1f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigmas", default="0.3,0.1,0.05")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for sigma in (float(s) for s in args.sigmas.split(",")):
        model = inferkit.load_model("linear-gaussian", latent_dim=32, data_dim=784, sigma=sigma, dtype="float64")
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            x = model.sample_observation(model.sample_prior(args.images, generator=generator), generator=generator)
        rows += case(model, x, model.log_marginal(x).detach(), f"linear-gaussian sigma={sigma}")
    model = TanhDecoder()
    generator = torch.Generator().manual_seed(1)
    z = model.sample_prior(args.images, generator=generator)
    x = model.decode(z) + model.sigma * torch.randn(args.images, 3, generator=generator, dtype=torch.float64)
    rows += case(model, x, model.log_marginal(x), "tanh decoder d=2 D=3 sigma=0.1")
    print("\n| case | setting | mean abs error (nats) | max abs error | seconds |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['setting']} | {r['mean_abs_error']:.3f} | {r['max_abs_error']:.3f} | "
              f"{r['seconds']:.1f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
