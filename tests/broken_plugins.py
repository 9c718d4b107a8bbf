"""Plugin classes that are broken in the ways a third-party plugin can be (for the entry points the
one-line-error tests register)."""

from inferkit.interfaces import Model
from inferkit.models.linear_gaussian import LinearGaussian


class MissingMethods(Model):
    """A model that implements none of the abstract methods."""


class RaisingConstructor(LinearGaussian):
    """A model whose constructor fails with an error of its own."""

    def __init__(self) -> None:
        raise KeyError("weights")


class OutOfMemory(LinearGaussian):
    """A model whose parameters cannot be allocated."""

    def __init__(self) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 409600000000 bytes.\nframe #0: ...")


class NotAPlugin:
    """Neither a Model, a Sampler nor a Tuner."""


class FakeShortRun(NotAPlugin):
    """What a third party registers under a built-in's name."""


LONG_IMPORT_ERROR = ("this plugin needs the optional library frobnicate-gpu 2.7 or newer, built with "
                     "the same CUDA version as torch; install it with pip install frobnicate-gpu and try "
                     "again END-OF-MESSAGE")
