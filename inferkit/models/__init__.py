"""Small reference models shipped with inferkit."""

from inferkit.lazy import lazy_exports
from inferkit.models.linear_gaussian import LinearGaussian

__all__ = ["LinearGaussian", "PyroModel", "RBMPrior"]

_LAZY = {  # imported on first use: these pull in more than the common case needs
    "PyroModel": "inferkit.models.pyro_model",
    "RBMPrior": "inferkit.models.rbm_prior",
}

__getattr__ = lazy_exports(__name__, _LAZY)
