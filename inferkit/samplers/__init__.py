"""Samplers: short-run gradient flow and Langevin; the baselines ABP (persistent chains), VAE and
Ladder-VAE (amortized encoders)."""

from importlib import import_module

from inferkit.samplers.abp import ABP
from inferkit.samplers.langevin import Langevin
from inferkit.samplers.lvae import LadderVAE
from inferkit.samplers.shortrun import ShortRun
from inferkit.samplers.vae import VAE

__all__ = ["ABP", "RWS", "VAE", "VIMCO", "LadderVAE", "Langevin", "ShortRun", "ShortRunMomentum"]

_LAZY = {  # imported on first use: these pull in more than the common case needs
    "RWS": "inferkit.samplers.rws",
    "ShortRunMomentum": "inferkit.samplers.shortrun_momentum",
    "VIMCO": "inferkit.samplers.vimco",
}


def __getattr__(name: str):
    if name in _LAZY:
        return vars(import_module(_LAZY[name]))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
