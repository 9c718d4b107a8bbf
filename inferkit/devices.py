"""Where a module's tensors live."""

from __future__ import annotations

import itertools

import torch


def module_placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the first floating-point parameter (else buffer) of ``module``; CPU and
    float32 when it has none. Tensors a model makes for itself (noise, initial states) go there."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of :func:`module_placement`."""
    return module_placement(module)[0]
