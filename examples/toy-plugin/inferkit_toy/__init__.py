"""A third-party plugin: the model ``toy-mlp`` (z ~ N(0, I), x ~ N(tanh(MLP(z)), sigma^2 I) on images)
and the sampler ``toy-metropolis`` (:mod:`inferkit_toy.metropolis`)."""

import math

import torch

import inferkit
from inferkit_toy.metropolis import ToyMetropolis

__all__ = ["ToyMLP", "ToyMetropolis"]


class ToyMLP(inferkit.Model):
    """One latent layer decoded by a two-layer MLP into images of ``data_shape``."""

    def __init__(self, latent_dim: int = 8, hidden: int = 64, channels: int = 3, image_size: int = 16,
                 sigma: float = 0.3):
        super().__init__()
        self.latent_shapes = ((latent_dim,),)
        self.data_shape = (channels, image_size, image_size)
        self.sigma = sigma
        self.net = torch.nn.Sequential(torch.nn.Linear(latent_dim, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, math.prod(self.data_shape)))

    @staticmethod
    def options_for_data(data_shape):
        return {"channels": data_shape[0], "image_size": data_shape[1]}

    def sample_prior(self, n, *, generator=None):
        weight = self.net[0].weight
        return (torch.randn(n, self.latent_shapes[0][0], generator=generator, device=weight.device),)

    def log_prior(self, z):
        return torch.distributions.Normal(0.0, 1.0).log_prob(z[0]).sum(-1)

    def decode(self, z):
        return torch.tanh(self.net(z[0])).view(-1, *self.data_shape)

    def log_joint(self, x, z, mask=None):
        log_lik = torch.distributions.Normal(self.decode(z), self.sigma).log_prob(x)
        if mask is not None:
            log_lik = log_lik * mask
        return self.log_prior(z) + log_lik.flatten(1).sum(-1)
