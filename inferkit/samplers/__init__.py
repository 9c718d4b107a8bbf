"""Samplers: short-run gradient flow and Langevin; the baselines ABP (persistent chains), VAE and
Ladder-VAE (amortized encoders)."""

from inferkit.samplers.abp import ABP
from inferkit.samplers.langevin import Langevin
from inferkit.samplers.lvae import LadderVAE
from inferkit.samplers.shortrun import ShortRun
from inferkit.samplers.vae import VAE

__all__ = ["ABP", "VAE", "LadderVAE", "Langevin", "ShortRun"]
