"""Speed options of the K-step inference loop: mixed precision, compilation, and a host-sync check.

* ``precision``: ``"float32"`` (default) or ``"bf16"``. With ``bf16`` the trainer runs inference, the
  loss and the negative phase under ``torch.autocast(dtype=torch.bfloat16)``: the generator's matrix
  products and convolutions run in bfloat16, while the latents, their gradients and the step updates
  stay float32 (autograd returns gradients in the dtype of the tensor differentiated, and the update
  ``addcmul`` keeps ``z``'s dtype). Tuning, evaluation and images run outside autocast (float32
  model, float64 log-determinants).
* ``compile``: how a short-run sampler runs one step ``z -> z + s * grad_z log p(x, z) [+ noise]``:
  ``"none"`` (eager), or ``torch.compile`` of that step with mode ``"default"``,
  ``"reduce-overhead"`` (on CUDA: CUDA graphs of one whole step) or ``"max-autotune"``. Modes are
  inductor's; with another ``compile_backend`` (e.g. ``aot_eager``) the mode only selects the
  sampler's own handling (CUDA-graph step marks) and is not passed to the backend.
* :func:`forbid_host_sync`: a context in which Python-level host synchronisations of tensors
  (``.item()``, ``bool(t)``, ``.cpu()``, device-to-host copies, ...) raise :class:`HostSyncError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from inferkit.errors import UserError

PRECISIONS = ("float32", "bf16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


# -- options -------------------------------------------------------------------------------------
def _device_type(device: str | torch.device | None) -> str | None:
    """``"cpu"``, ``"cuda"``, ... for a device or its name; None when it names no device."""
    try:
        return torch.device(device).type if device is not None else None
    except (RuntimeError, TypeError):
        return None  # an unknown device is reported where devices are resolved


def check_precision(precision: str, device: str | torch.device | None = None) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` and ``device`` can run it; else a UserError."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}; "
                        "give --precision float32 or --precision bf16")
    kind = _device_type(device)
    if precision == "bf16" and kind is not None:
        if kind not in ("cpu", "cuda"):
            raise UserError(f"precision bf16 runs on cpu or cuda, not {kind}; use --precision float32")
        if kind == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise UserError("this CUDA GPU does not support bfloat16; use --precision float32")
    return precision


def check_compile(mode: str, backend: str) -> None:
    """Raise a UserError unless ``mode`` is one of :data:`COMPILE_MODES` and, when compiling,
    ``backend`` is a registered ``torch.compile`` backend."""
    if mode not in COMPILE_MODES:
        raise UserError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}; "
                        "give e.g. --sampler-opt compile=default")
    if not isinstance(backend, str) or not backend:
        raise UserError(f"compile_backend must name a torch.compile backend, got {backend!r}; "
                        "give e.g. compile_backend=inductor")
    if mode == "none":
        return  # importing torch._dynamo takes seconds: only when a compiled path is asked for
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise UserError(f"compile_backend {backend!r} is not a torch.compile backend; give one of "
                        f"inductor, aot_eager, eager (all: torch._dynamo.list_backends())")


# -- mixed precision -----------------------------------------------------------------------------
def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device type, bfloat16)`` for ``"bf16"``; a null context for ``"float32"``."""
    check_precision(precision, device)
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


# -- compilation ---------------------------------------------------------------------------------
def compile_function(function: Callable, mode: str, backend: str) -> Callable:
    """``torch.compile(function)`` with static shapes, for ``mode`` in :data:`COMPILE_MODES` other
    than ``"none"``; the mode goes to inductor only (other backends take no modes)."""
    check_compile(mode, backend)
    if mode == "none":
        raise ValueError("compile_function needs a compile mode other than 'none'")
    if backend == "inductor":
        return torch.compile(function, backend=backend, mode=mode, dynamic=False)
    return torch.compile(function, backend=backend, dynamic=False)


def uses_cuda_graphs(mode: str, backend: str, device: torch.device) -> bool:
    """Whether a compiled step replays CUDA graphs: inductor's ``reduce-overhead`` and
    ``max-autotune`` modes on a CUDA device (their outputs are overwritten by the next replay)."""
    return device.type == "cuda" and (backend == "cudagraphs" or (
        backend == "inductor" and mode in ("reduce-overhead", "max-autotune")))


# -- host synchronisation ------------------------------------------------------------------------
class HostSyncError(RuntimeError):
    """A tensor operation that makes the host wait for the device ran inside :func:`forbid_host_sync`."""


# Tensor methods (and torch functions) that read a value back to the host, or whose output size
# depends on the data, so that on CUDA the host must wait for the device.
_SYNCING = frozenset({"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__complex__",
                      "cpu", "numpy", "nonzero", "masked_select", "__repr__", "__format__"})


def _is_host(device: Any) -> bool:
    return device is not None and torch.device(device).type == "cpu"


def _device_to_host(func: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to`` / ``Tensor.copy_`` / ``torch.Tensor.__getitem__`` moves data from a
    device to the host (or indexes by a boolean mask, whose result size the host must read)."""
    name = getattr(func, "__name__", "")
    if name == "to" and args and isinstance(args[0], torch.Tensor):
        source = args[0]
        if source.device.type == "cpu":
            return False
        target = kwargs.get("device")
        for value in args[1:]:
            if isinstance(value, (str, torch.device)):
                target = value
            elif isinstance(value, torch.Tensor):
                target = value.device
        return _is_host(target)
    if name == "copy_" and len(args) >= 2 and all(isinstance(a, torch.Tensor) for a in args[:2]):
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    if name in ("__getitem__", "__setitem__") and len(args) >= 2:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    return False


class _ForbidHostSync(TorchFunctionMode):
    """Raise :class:`HostSyncError` on every host-synchronising tensor operation."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _SYNCING or _device_to_host(func, args, kwargs):
            raise HostSyncError(f"host synchronisation inside a no-sync region: {name}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def forbid_host_sync(device: str | torch.device = "cpu", *, python_level: bool = True) -> Iterator[None]:
    """Within the block, Python-level host synchronisations (``.item()``, ``.tolist()``, ``bool(t)``,
    ``float(t)``, ``int(t)``, ``.cpu()``, ``.numpy()``, device-to-host ``.to``/``.copy_``, ``nonzero``,
    boolean-mask indexing, printing a tensor) raise :class:`HostSyncError`; on a CUDA ``device``
    ``torch.cuda.set_sync_debug_mode("error")`` also makes every synchronising CUDA call raise
    (``RuntimeError``), those inside C++ kernels included.

    ``python_level=False`` keeps only the CUDA check: the Python-level one is a torch function mode,
    under which a ``torch.compile``d function recompiles once (minutes with inductor)."""
    cuda = torch.device(device).type == "cuda"
    previous = torch.cuda.get_sync_debug_mode() if cuda else None
    if cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        with _ForbidHostSync() if python_level else contextlib.nullcontext():
            yield
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(previous)
