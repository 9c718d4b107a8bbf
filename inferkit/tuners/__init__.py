"""Tuners: set a sampler's hyperparameters, by the KL objective or by hand."""

from inferkit.lazy import lazy_exports
from inferkit.tuners.fixed import Fixed
from inferkit.tuners.kl_grid import KLGrid

__all__ = ["Fixed", "KLGrad", "KLGrid"]

_LAZY = {  # imported on first use: these pull in more than the common case needs
    "KLGrad": "inferkit.tuners.kl_grad",
}

__getattr__ = lazy_exports(__name__, _LAZY)
