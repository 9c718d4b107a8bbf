"""Small reference models shipped with inferkit."""

from importlib import import_module

from inferkit.models.linear_gaussian import LinearGaussian

__all__ = ["LinearGaussian", "PyroModel", "RBMPrior"]

_LAZY = {  # imported on first use: these pull in more than the common case needs
    "PyroModel": "inferkit.models.pyro_model",
    "RBMPrior": "inferkit.models.rbm_prior",
}


def __getattr__(name: str):
    if name in _LAZY:
        return vars(import_module(_LAZY[name]))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
