"""Samplers: short-run gradient flow and Langevin; the baselines ABP (persistent chains), VAE and
Ladder-VAE (amortized encoders)."""

from inferkit.lazy import lazy_exports
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

__getattr__ = lazy_exports(__name__, _LAZY)
