"""Tuners: set a sampler's hyperparameters, by the KL objective or by hand."""

from importlib import import_module

from inferkit.tuners.fixed import Fixed
from inferkit.tuners.kl_grid import KLGrid

__all__ = ["Fixed", "KLGrad", "KLGrid"]

_LAZY = {  # imported on first use: these pull in more than the common case needs
    "KLGrad": "inferkit.tuners.kl_grad",
}


def __getattr__(name: str):
    if name in _LAZY:
        return vars(import_module(_LAZY[name]))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
