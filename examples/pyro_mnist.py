"""A Pyro model trained by inferkit: a small MLP generator for MNIST, written in plain Pyro.

    z ~ N(0, I_16),   x ~ N(tanh(MLP(z)), 0.3^2 I)   (MNIST pixels in [-1, 1], shape 1x28x28)

    PYTHONPATH=. inferkit run --model pyro:examples.pyro_mnist:model --sampler shortrun --tuner kl-grid \
        --data mnist --data-dir ~/data/mnist --out runs/pyro-mnist
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

LATENT_DIM = 16

torch.manual_seed(0)
DECODER = nn.Sequential(nn.Linear(LATENT_DIM, 256), nn.GELU(), nn.Linear(256, 784), nn.Tanh())


def model(x):
    decoder = pyro.module("mnist_decoder", DECODER)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(LATENT_DIM, dtype=x.dtype), 1.0).to_event(1))
        mean = decoder(z).view(-1, 1, 28, 28)
        pyro.sample("x", dist.Normal(mean, 0.3).to_event(3), obs=x)
