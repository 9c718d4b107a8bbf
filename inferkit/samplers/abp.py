"""Alternating back-propagation (Han et al. 2017): persistent Langevin chains, one per training example.

    z_{k+1} = z_k + (s^2 / 2) grad_z log p(x, z_k) + s eps_k,   eps_k ~ N(0, I),   k = 0..K-1

Each training example's chain is kept by its dataset index (so batches may be shuffled freely): the
first time an example is seen its chain starts from the prior ``z_0 ~ p(z)``; every later time it
continues from where it stopped. Examples without an index (test data) run ``test_steps`` steps from
the prior. ``s`` is ABP's ``delta`` (the Langevin convention of :mod:`inferkit.samplers.units`;
``units="raw"`` makes ``s`` the gradient coefficient ``delta^2 / 2``): the default ``s = 0.1``; the
ECCV 2020 baseline is ``delta = 0.3`` with 40 steps, i.e. ``step_size=0.3 num_steps=40``. The observation sigma (0.3 in ABP) is the model's, which the
trainer anneals from ``sigma_start``.

The chain store (``num_examples`` x latents, and which examples have been seen) is the sampler's
extra state: saved in checkpoints and restored on ``--resume``. It lives on the model's device, or on
the CPU when it would take more than a quarter of the device's free memory (``store=auto``), or
where ``store`` says; a CPU store costs a host transfer of the batch's chains per iteration.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from inferkit.devices import module_placement
from inferkit.errors import UserError
from inferkit.interfaces import Inference, Latents, Model, Sampler
from inferkit.samplers.shortrun import NumSteps
from inferkit.samplers.units import check_units, gradient_coefficient

STORE_PLACES = ("auto", "device", "cpu")
DEVICE_STORE_FRACTION = 0.25  # store=auto keeps chains on the device up to this share of its free memory


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"abp: {name} must be a positive integer, got {value!r}")
    return value


class ABP(Sampler):
    """Persistent Langevin chains keyed by dataset index.

    Args:
        num_steps: Langevin steps per visit of a training example.
        step_size: ``s`` (ABP's ``delta``; the gradient coefficient is ``s^2 / 2``).
        test_steps: steps from the prior for examples without an index (test data, reconstructions).
        store: where the chain store lives: ``auto``, ``device`` (the model's) or ``cpu``.
        units: ``"langevin"`` (default) or ``"raw"`` (:mod:`inferkit.samplers.units`).
    """


    def __init__(self, num_steps: NumSteps = 30, step_size: float = 0.1, test_steps: int = 300, store: str = "auto",
                 units: str = "langevin"):
        super().__init__()
        self.units = check_units(units, "abp")
        self.num_steps = _positive_int("num_steps", num_steps)
        self.test_steps = _positive_int("test_steps", test_steps)
        try:
            value = float(step_size)
        except (TypeError, ValueError):
            raise UserError(f"abp: step_size must be a positive number, got {step_size!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"abp: step_size must be positive and finite, got {step_size!r}")
        if store not in STORE_PLACES:
            raise UserError(f"abp: store must be one of {', '.join(STORE_PLACES)}, got {store!r}")
        self.store = store
        self.register_buffer("step_size", torch.tensor(value, dtype=torch.float64))
        self.chains: Latents | None = None
        self.seen: Tensor | None = None
        self._store_device: torch.device | None = None

    def extra_repr(self) -> str:
        size = 0 if self.seen is None else self.seen.shape[0]
        return (f"num_steps={self.num_steps}, step_size={float(self.step_size)}, test_steps={self.test_steps}, "
                f"store={self.store!r}, chains={size}")

    def hyperparameters(self) -> dict[str, Tensor]:
        return {"step_size": self.step_size}

    # -- the chain store -----------------------------------------------------------------------
    def _place(self, model: Model, num_examples: int) -> torch.device:
        device, dtype = module_placement(model)
        if self.store == "cpu" or device.type == "cpu":
            return torch.device("cpu")
        if self.store == "device":
            return device
        needed = num_examples * model.latent_dim * torch.tensor([], dtype=dtype).element_size()
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return device if needed <= DEVICE_STORE_FRACTION * free else torch.device("cpu")
        return device

    def setup(self, model: Model, *, num_examples: int | None = None) -> None:
        """Make an empty store (no example seen) for ``num_examples`` training examples, unless one of
        that size and shape exists (then it is kept, moved to where it belongs)."""
        if num_examples is None:
            return
        num_examples = _positive_int("num_examples", num_examples)
        self._store_device = self._place(model, num_examples)
        _, dtype = module_placement(model)
        shapes = [tuple(s) for s in model.latent_shapes]
        if self.chains is not None and self.seen.shape[0] == num_examples \
                and [tuple(c.shape[1:]) for c in self.chains] == shapes:
            self._move_store(self._store_device)
            return
        self.chains = tuple(torch.zeros(num_examples, *shape, dtype=dtype, device=self._store_device)
                            for shape in shapes)
        self.seen = torch.zeros(num_examples, dtype=torch.bool, device=self._store_device)

    def _move_store(self, device: torch.device) -> None:
        self.chains = tuple(c.to(device) for c in self.chains)
        self.seen = self.seen.to(device)

    def get_extra_state(self) -> dict[str, Any]:
        """The chain store, saved with ``state_dict`` (so in checkpoints)."""
        return {"chains": None if self.chains is None else list(self.chains), "seen": self.seen}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the chain store from a checkpoint; it must fit the store :meth:`setup` made."""
        chains, seen = state.get("chains"), state.get("seen")
        if chains is None:
            if self.chains is not None:
                raise UserError("abp: the checkpoint has no chain store but this run has one")
            return
        if self.chains is not None:
            expected = [tuple(c.shape) for c in self.chains]
            if [tuple(c.shape) for c in chains] != expected:
                raise UserError(f"abp: the checkpoint's chain store has shapes {[tuple(c.shape) for c in chains]}, "
                                f"this run's data and model need {expected}")
        device = self._store_device or seen.device
        self.chains = tuple(c.to(device) for c in chains)
        self.seen = seen.to(device=device, dtype=torch.bool)

    def gather_example_state(self, owned: Tensor, all_reduce_sum) -> None:
        """Unite the chain stores of all processes: each example's chain (and seen flag) comes from the
        process that owns it, ``store = sum_r [owned_r] store_r`` (one all-reduce per latent layer, on
        ``owned``'s device, the training device, which nccl needs; a CPU store goes there and back)."""
        if self.chains is None:
            return
        device = owned.device
        chains = []
        for store in self.chains:
            mine = store.to(device) * owned.view(-1, *([1] * (store.dim() - 1))).to(store.dtype)
            chains.append(all_reduce_sum(mine).to(store.device))
        self.chains = tuple(chains)
        seen = (self.seen.to(device) & owned).to(torch.int32)
        self.seen = (all_reduce_sum(seen) > 0).to(self.seen.device)

    def _initial(self, model: Model, x: Tensor, index: Tensor | None,
                 generator: torch.Generator | None) -> tuple[Latents, Tensor | None]:
        """``z_0``: the stored state of each seen example, a prior draw otherwise; and the store index."""
        prior = tuple(t.detach() for t in model.sample_prior(x.shape[0], generator=generator))
        if index is None:
            return prior, None
        if self.chains is None:
            raise UserError("abp: the chain store is not set up; call sampler.setup(model, num_examples=N) with "
                            "the number of training examples first (inferkit.train does)")
        where = index.to(self.seen.device, torch.long)
        if where.device.type == "cpu" and where.numel() and (int(where.min()) < 0
                                                             or int(where.max()) >= self.seen.shape[0]):
            raise UserError(f"abp: dataset index out of range for a store of {self.seen.shape[0]} examples")
        seen = self.seen.index_select(0, where).to(x.device)
        z0 = []
        for store, fresh in zip(self.chains, prior):
            stored = store.index_select(0, where).to(device=fresh.device, dtype=fresh.dtype)
            z0.append(torch.where(seen.view(-1, *([1] * (fresh.dim() - 1))), stored, fresh))
        return tuple(z0), where

    # -- inference ---------------------------------------------------------------------------------
    def infer(self, model: Model, x: Tensor, *, index: Tensor | None = None, mask: Tensor | None = None,
              generator: torch.Generator | None = None) -> Inference:
        """Continue each example's chain by ``num_steps`` Langevin steps (from the prior if new) and store
        the end state; without ``index``, ``test_steps`` steps from the prior. Returns ``z`` detached."""
        z, where = self._initial(model, x, index, generator)
        steps = self.num_steps if where is not None else self.test_steps
        dtype, device = z[0].dtype, z[0].device
        step = gradient_coefficient(self.step_size.detach(), self.units).to(device=device, dtype=dtype)
        noise_scale = (2 * step).sqrt()
        with torch.enable_grad():
            for _ in range(steps):
                z = tuple(t.requires_grad_() for t in z)
                grads = torch.autograd.grad(model.log_joint(x, z, mask).sum(), z)
                z = tuple(torch.addcmul(t.detach(), g, step) for t, g in zip(z, grads))
                z = tuple(torch.addcmul(t, torch.randn(t.shape, generator=generator, device=device, dtype=dtype),
                                        noise_scale) for t in z)
        if where is not None:
            for store, t in zip(self.chains, z):
                store.index_copy_(0, where, t.to(device=store.device, dtype=store.dtype))
            self.seen.index_fill_(0, where, True)
        return Inference(z=z, info={"num_steps": steps, "persistent": where is not None})
