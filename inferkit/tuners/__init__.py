"""Tuners: set a sampler's hyperparameters, by the KL objective or by hand."""

from inferkit.tuners.fixed import Fixed
from inferkit.tuners.kl_grid import KLGrid

__all__ = ["Fixed", "KLGrid"]
