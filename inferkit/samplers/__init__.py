"""Samplers: short-run gradient flow, Langevin, and (later) persistent and amortized baselines."""

from inferkit.samplers.langevin import Langevin
from inferkit.samplers.shortrun import ShortRun

__all__ = ["Langevin", "ShortRun"]
