"""Dense linear algebra that inferkit relies on, made safe on every build.

PyTorch's batched LU on the CPU (``slogdet``, ``solve``, ``lu_factor`` of a ``[batch, n, n]`` input)
returns wrong results, with "Intel oneMKL ERROR: Parameter 6 was incorrect on entry to DLASWP",
once ``torch.set_num_threads`` has been called and ``n`` is above about 150 (pytorch/pytorch#142815;
seen with torch 2.13 and MKL 2024.2). Single matrices are unaffected, so the CPU path factors the
batch one matrix at a time; CUDA keeps the batched call.
"""

from __future__ import annotations

import torch
from torch import Tensor


def slogdet(matrices: Tensor) -> tuple[Tensor, Tensor]:
    """``(sign, log|det A|)`` of every square matrix in ``matrices`` (``[..., n, n]``), as
    :func:`torch.linalg.slogdet`, but factoring CPU batches one matrix at a time (see the module)."""
    if matrices.dim() == 2 or matrices.device.type != "cpu":
        return torch.linalg.slogdet(matrices)
    batch_shape = matrices.shape[:-2]
    flat = matrices.reshape(-1, *matrices.shape[-2:])
    if flat.shape[0] == 0:
        return torch.linalg.slogdet(matrices)
    signs, logs = zip(*(torch.linalg.slogdet(matrix) for matrix in flat.unbind(0)))
    return torch.stack(signs).reshape(batch_shape), torch.stack(logs).reshape(batch_shape)
