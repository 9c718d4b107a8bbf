"""Pyro model functions used by tests/test_pyro_model.py (importable as ``pyro:pyro_models:...``)."""

import pyro
import pyro.distributions as dist
import torch

LATENT_DIM, DATA_DIM, SIGMA = 3, 5, 0.5
WEIGHT = torch.randn(DATA_DIM, LATENT_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
BIAS = torch.randn(DATA_DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def linear_gaussian(x):
    """x = W z + b + sigma eps, z ~ N(0, I): the built-in linear-gaussian, written in Pyro."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(LATENT_DIM, dtype=x.dtype), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ WEIGHT.T.to(x.dtype) + BIAS.to(x.dtype), SIGMA).to_event(1), obs=x)


def scaled_decoder(x):
    """A learnable linear decoder with a positive, per-example noise scale s ~ LogNormal(-1, 0.3)."""
    decoder = pyro.module("decoder", _DECODER)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        scale = pyro.sample("scale", dist.LogNormal(-1.0, 0.3))
        pyro.sample("x", dist.Normal(decoder(z), scale.unsqueeze(-1)).to_event(1), obs=x)


def coin(x):
    """A discrete latent: not for gradient samplers."""
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c.unsqueeze(-1).expand(x.shape), 1.0).to_event(1), obs=x)


torch.manual_seed(0)
_DECODER = torch.nn.Linear(2, 4)
