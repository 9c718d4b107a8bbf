"""Random generators fixed by a seed and a stream number alone, independent of global RNG state."""

from __future__ import annotations

import torch


def seeded_generator(seed: int, stream: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``(seed * 1_000_003 + stream) mod (2^63 - 1)``, so that each
    ``(seed, stream)`` pair (e.g. stream = iteration) has its own reproducible sequence."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + stream) % (2**63 - 1))
