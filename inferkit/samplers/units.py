"""The two conventions for a Langevin step size.

    units="langevin" (default):  z_{k+1} = z_k + (s^2 / 2) grad_z log p(x, z_k) [+ s eps_k]
    units="raw":                 z_{k+1} = z_k + s grad_z log p(x, z_k)         [+ sqrt(2 s) eps_k]

``langevin`` is the convention of the authors' code (Nijkamp et al., ``z -= 0.5 * s**2 * (z + grad
||x - g(z)||^2 / (2 sigma^2))`` plus ``s * eps`` with noise; Pang et al. likewise; Han et al.'s ABP
with ``delta`` for ``s``): the papers' grid ``s in {0.01, ..., 0.15}`` and "the step size settles near
0.05" are in these units. ``raw`` reads the papers' eq. (10) literally, with ``s`` the gradient
coefficient. The two are related by ``s_raw = s_langevin^2 / 2`` (0.05 -> 0.00125, 0.15 -> 0.01125).

Internally every flow works with the gradient coefficient ``S = s^2 / 2`` (or ``S = s``); its noise
is ``sqrt(2 S) eps``, which is ``s eps`` in the Langevin convention, so the Jacobian of a step is
``I + S H_k`` in both.
"""

from __future__ import annotations

from inferkit.errors import UserError

STEP_UNITS = ("langevin", "raw")


def check_units(units: str, owner: str) -> str:
    """``units`` if it is one of :data:`STEP_UNITS`, else a :class:`UserError` naming ``owner``."""
    if units not in STEP_UNITS:
        raise UserError(f"{owner}: units must be one of {', '.join(STEP_UNITS)}, got {units!r}")
    return units


def gradient_coefficient(step_size, units: str):
    """The coefficient ``S`` of ``grad log p`` in one step: ``s^2 / 2`` (``langevin``) or ``s`` (``raw``).
    Works on floats and tensors, differentiably."""
    return step_size * step_size / 2 if units == "langevin" else step_size
