"""Small reference models shipped with inferkit."""

from inferkit.models.linear_gaussian import LinearGaussian

__all__ = ["LinearGaussian"]
