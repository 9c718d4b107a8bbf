"""Run specifications: which plugins with which options, and the training settings.

A run folder holds ``config.json`` (the resolved :class:`RunSpec`), so ``--resume``, ``eval``,
``sample`` and ``tune`` rebuild exactly the objects the run trained.

A run folder is data, never code: its ``.pt`` files are loaded with ``torch.load(weights_only=True)``
(tensors, numbers, strings and containers; a pickled Python object is refused, see
:func:`load_plain`), and a ``pyro:MODULE:FUNCTION`` model its config names is imported only when the
user names it again or trusts the folder (:meth:`RunSpec.load`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from inferkit.acceleration import check_precision
from inferkit.errors import UserError
from inferkit.interfaces import require_compatible
from inferkit.optimizers import RunOptimizer
from inferkit.options import Bounds, build, coerce, option_types, suggest
from inferkit.registry import plugin_class

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"

LearningRate = Annotated[float, Bounds(maximum=1.0, why="Adam moves every parameter by about this much per step")]


@dataclass
class TrainConfig:
    """Algorithm 1's settings (defaults sized so the headline command runs in minutes on a CPU)."""

    iterations: int = 300
    batch_size: int = 32
    learning_rate: LearningRate = 1e-3
    lr_milestones: tuple[float, ...] = (0.6, 0.85)
    """Fractions of the schedule (``schedule_iterations``) at which the learning rate steps: it is
    multiplied by ``lr_gamma``, or set to the matching entry of ``lr_values``."""
    lr_gamma: float = 0.3
    lr_values: tuple[float, ...] = ()
    """The learning rate from each milestone on (one per milestone, milestones increasing); empty:
    ``learning_rate * lr_gamma^k`` after the k-th milestone."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's ``(beta1, beta2)``."""
    sigma_start: float = 0.3
    sigma_end: float = 0.2
    sigma_anneal: float = 0.5
    """Fraction of the schedule over which observation sigma goes linearly from start to end."""
    tune_every: int = 250
    """``T_s``: run the tuner every this many iterations (0: never). 250 is one pass over 8,000
    training images at batch 32; the papers tune once per epoch."""
    retune_sigma_ratio: float = math.sqrt(2)
    """Between those tunings, also tune where the annealed observation sigma has fallen by this factor
    since the last tuning (0: only every ``T_s``). The likelihood's curvature grows as ``1 / sigma^2``:
    at ``sqrt(2)`` a step ``s`` chosen at the last tuning meets twice the curvature it was chosen for,
    which is where a gradient step that was near its best becomes one that overshoots."""
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    image_every: int = 100
    eval_examples: int = 128
    device: str = "cpu"
    shards: int = 0
    """``S``: the batch splits into S shards with data and random draws of their own (0: one per
    process, so 1 outside ``torchrun``); one process with ``shards=S`` trains as S processes do
    (:mod:`inferkit.distributed`)."""
    precision: str = "float32"
    """``float32``, or ``bf16``: inference and the loss under bfloat16 autocast, latents float32
    (tuning and evaluation stay float32; see :mod:`inferkit.acceleration`)."""
    find_unused_parameters: str = "auto"
    """Data parallel: ``DistributedDataParallel(find_unused_parameters=...)``; ``auto`` is on exactly for
    samplers that train in phases (:attr:`Sampler.trains_in_phases`), ``on`` / ``off`` force it."""
    schedule_iterations: int = 0
    """The iteration count the fractions ``lr_milestones`` and ``sigma_anneal`` refer to (0: ``iterations``).
    ``--resume RUN --iterations N`` keeps the run's planned count here, so an extended run is the planned
    run followed by iterations at the final learning rate and sigma (:meth:`resized`)."""

    @property
    def schedule_total(self) -> int:
        """The iteration count the learning-rate and sigma schedules are fractions of."""
        return self.schedule_iterations or self.iterations

    def resized(self, iterations: int) -> str | None:
        """Continue to ``iterations`` in total with the schedules of the run as planned; returns a note
        for the run's log when the total changes (``None`` otherwise)."""
        if iterations == self.iterations:
            return None
        planned = self.schedule_total
        self.schedule_iterations, self.iterations = planned, iterations
        if iterations == planned:
            return None
        where = (f"iterations {planned}-{iterations - 1} train at the final learning rate and sigma"
                 if iterations > planned else f"it stops at {iterations}")
        return (f"note: the run was planned for {planned} iterations and now goes to {iterations}; its "
                f"learning-rate and sigma schedules stay those of the {planned} planned and {where}, so it "
                f"differs from a run planned with {iterations} iterations from the start")

    def validate(self) -> None:
        positive = ("iterations", "batch_size", "log_every", "checkpoint_every", "image_every", "eval_examples")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.schedule_iterations < 0:
            raise UserError(f"schedule-iterations must be >= 0 (0: iterations), got {self.schedule_iterations}")
        if self.shards < 0:
            raise UserError(f"shards must be >= 0 (0: one per process), got {self.shards}")
        if self.tune_every < 0:
            raise UserError(f"tune-every must be >= 0, got {self.tune_every}")
        ratio = self.retune_sigma_ratio
        if not (ratio == 0 or (math.isfinite(ratio) and ratio > 1)):
            raise UserError(f"retune-sigma-ratio must be 0 (off) or a finite number above 1, got {ratio}")
        for name in ("learning_rate", "lr_gamma", "sigma_start", "sigma_end"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{name.replace('_', '-')} must be positive and finite, got {value}")
        if not 0 <= self.sigma_anneal <= 1 or not all(0 <= m <= 1 for m in self.lr_milestones):
            raise UserError("sigma-anneal and lr-milestones are fractions of the run, between 0 and 1")
        self._validate_lr_values()
        if len(self.adam_betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.adam_betas):
            raise UserError(f"adam-betas must be two numbers in [0, 1) (beta1, beta2), got {list(self.adam_betas)}")
        check_precision(self.precision, self.device)
        if self.find_unused_parameters not in ("auto", "on", "off"):
            raise UserError(f"find-unused-parameters must be auto, on or off, got {self.find_unused_parameters!r}")

    def _validate_lr_values(self) -> None:
        if not self.lr_values:
            return
        if len(self.lr_values) != len(self.lr_milestones):
            raise UserError(f"lr-values gives {len(self.lr_values)} learning rate(s) for {len(self.lr_milestones)} "
                            "lr-milestones; give one rate per milestone (the rate from that milestone on)")
        if any(b <= a for a, b in zip(self.lr_milestones, self.lr_milestones[1:])):
            raise UserError(f"lr-milestones must increase when lr-values is given, got {list(self.lr_milestones)}")
        if not all(math.isfinite(v) and 0 < v <= 1 for v in self.lr_values):
            raise UserError(f"lr-values must be learning rates in (0, 1], got {list(self.lr_values)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = {name: option_types(cls)[name][0] for name in known}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise UserError(f"unknown training option {key!r}{suggest(key, known)}")
            try:
                kwargs[key] = coerce(value, hints[key])
            except (ValueError, TypeError) as exc:
                raise UserError(f"training option {key}={value!r} is not valid ({exc})") from None
        return cls(**kwargs)


@dataclass
class PluginSpec:
    """A plugin by registered name, with its options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSpec:
    """Everything needed to rebuild a run."""

    model: PluginSpec
    sampler: PluginSpec
    tuner: PluginSpec
    data: PluginSpec
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSpec:
        try:
            return cls(**{k: PluginSpec(**values[k]) for k in ("model", "sampler", "tuner", "data")},
                       train=TrainConfig.from_dict(values.get("train", {})))
        except (KeyError, TypeError) as exc:
            raise UserError(f"run configuration is malformed ({exc}); was it written by inferkit?") from None

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / CONFIG_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: Path, *, model: str | None = None, trust_code: bool = False) -> RunSpec:
        """The spec saved in ``folder``. A ``pyro:`` model is code, so a config naming one is refused
        unless the user names the same model again (``model``, their ``--model``) or ``trust_code``."""
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise UserError(f"{folder} holds no inferkit run (no {CONFIG_FILE}); give a run folder made by "
                            "`inferkit run`")
        try:
            spec = cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from None
        check_model_trusted(spec.model.name, path, model=model, trust_code=trust_code)
        return spec


def check_model_trusted(saved: str, path: Path, *, model: str | None, trust_code: bool) -> None:
    """Refuse a saved model the user did not confirm: a ``--model`` that differs from it, or a
    ``SCHEME:REST`` model such as ``pyro:MODULE:FUNCTION`` (code) neither named again nor trusted with
    ``--trust-code``."""
    if model is not None and model != saved:
        raise UserError(f"--model {model} is not the model of this run: {path} names {saved}; a run keeps "
                        f"its model (pass --model {saved}, or leave --model out)")
    if ":" in saved and model is None and not trust_code:  # a SCHEME:REST model (pyro:...) imports code
        label = "Pyro model" if saved.startswith("pyro:") else "model"
        raise UserError(f"{path} names the {label} {saved}, which is code; pass --model {saved} "
                        "(or --trust-code) to import it")


NULL_BECAUSE = "null_because"
"""The key of a written JSON object that says which of its values were non-finite numbers (``null``)."""


def _finite_only(value: Any, path: str, replaced: dict[str, str]) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (recorded in ``replaced`` by path)."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced[path or "."] = repr(value)  # 'nan', 'inf', '-inf'
        return None
    if isinstance(value, dict):
        return {k: _finite_only(v, f"{path}.{k}" if path else str(k), replaced) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v, f"{path}[{i}]", replaced) for i, v in enumerate(value)]
    return value


def strict_json(value: Any, **dumps_options: Any) -> str:
    """``value`` as strict JSON: a non-finite float (NaN, +-inf, which JSON cannot hold) becomes ``null``,
    and an object gets a ``null_because`` entry mapping each such value's path to what it was."""
    replaced: dict[str, str] = {}
    clean = _finite_only(value, "", replaced)
    if replaced and isinstance(clean, dict):
        clean[NULL_BECAUSE] = {path: f"non-finite ({what})" for path, what in replaced.items()}
    return json.dumps(clean, allow_nan=False, **dumps_options)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a crash leaves the old file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _removes_tmp_on_failure(write):
    """Decorate an atomic writer of ``path`` (through ``PATH.tmp``): an ``OSError`` (disk full, no
    permission) removes the partial ``PATH.tmp`` and becomes ``UserError("cannot write PATH (reason)")``."""
    @functools.wraps(write)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        path = Path(inspect.signature(write).bind(*args, **kwargs).arguments["path"])
        try:
            return write(*args, **kwargs)
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.with_name(path.name + ".tmp").unlink(missing_ok=True)
            raise UserError(f"cannot write {path} ({exc.strerror or exc}); check the free space and the "
                            f"permissions of {path.parent}") from None
    return wrapper


@_removes_tmp_on_failure
def write_json_atomic(path: Path, value: Any) -> None:
    """Write strict JSON (:func:`strict_json`) to ``path`` through a temporary file and a rename."""
    write_text_atomic(path, strict_json(value, indent=2) + "\n")


@_removes_tmp_on_failure
def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file, flushed to disk, then renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_plain(path: Path, map_location: Any = "cpu", *, what: str = "checkpoint",
               hint: str = "it may be damaged") -> Any:
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True``: tensors, numbers,
    strings, lists, tuples and dicts, never an arbitrary pickled object (unpickling one may run any
    code). A file that holds one is refused; an unreadable file is a UserError ending in ``hint``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if _holds_objects(path):
            raise UserError(f"{path} is not a plain inferkit {what} (it holds Python objects); refusing to "
                            "load it") from None
        raise UserError(f"{what} {path} cannot be read (UnpicklingError); {hint}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise UserError(f"{what} {path} cannot be read ({type(exc).__name__}); {hint}") from None


def _holds_objects(path: Path) -> bool:
    """Whether a file ``weights_only`` refused names globals it does not allow (read from the pickle's
    opcodes, nothing run); ``False`` when it names none, so the pickle itself is damaged. A file this
    cannot scan (not torch's zip format) counts as holding objects."""
    try:
        return bool(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - unscannable: refuse it as untrusted rather than call it damaged
        return True


CHECKPOINT_KEYS = ("iteration", "model", "sampler")


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A run's checkpoint as a dict (iteration, model, sampler, optimizer, ...), loaded by
    :func:`load_plain`: a checkpoint holding Python objects is refused, nothing in it run."""
    state = load_plain(path, map_location)
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS) \
            or not isinstance(state["iteration"], int):
        raise UserError(f"checkpoint {path} cannot be read (not an inferkit checkpoint); it may be damaged")
    return state


def restore_checkpoint(path: Path, map_location: Any, model: torch.nn.Module, sampler: torch.nn.Module,
                       optimizer: RunOptimizer | None = None) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model``, ``sampler`` (built and set up as the run's) and
    ``optimizer``; returns the checkpoint."""
    state = load_checkpoint(path, map_location)
    try:
        model.load_state_dict(state["model"])
        sampler.load_state_dict(state["sampler"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a checkpoint that does not fit is a user-facing error
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it may be damaged or from "
                        "another model") from None
    return state


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def resolved_options(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``cls`` with its value: the given ones coerced, the rest their defaults."""
    out = {}
    for name, (annotation, default) in option_types(cls).items():
        if name in given:
            out[name] = _jsonable(coerce(given[name], annotation))
        elif default is not inspect.Parameter.empty:
            out[name] = _jsonable(default)
    return out


def build_objects(spec: RunSpec, *, resolve: bool = True):
    """Build (data, model, sampler, tuner) from ``spec``; with ``resolve`` the spec's options are
    replaced by the full resolved options (defaults included), ready to be saved.

    A model class takes options from the data's shape through :meth:`Model.options_for_data` (e.g. image
    size and channels); options the user gave win.
    """
    data_cls = plugin_class("dataset", spec.data.name)
    data = build(data_cls, spec.data.options, what=f"dataset {spec.data.name!r}")
    model_cls = plugin_class("model", spec.model.name)
    model_options = dict(spec.model.options)
    for key, value in model_cls.options_for_data(tuple(data.data_shape)).items():
        model_options.setdefault(key, value)
    torch.manual_seed(spec.train.seed)  # parameter initialisation is part of the run's seed
    model = build(model_cls, model_options, what=f"model {spec.model.name!r}")
    if tuple(model.data_shape) != tuple(data.data_shape):
        raise UserError(f"model {spec.model.name!r} takes data of shape {tuple(model.data_shape)} but data set "
                        f"{spec.data.name!r} has shape {tuple(data.data_shape)}; pick a matching model or data "
                        "option")
    sampler_cls = plugin_class("sampler", spec.sampler.name)
    sampler = build(sampler_cls, spec.sampler.options, what=f"sampler {spec.sampler.name!r}")
    tuner_cls = plugin_class("tuner", spec.tuner.name)
    tuner = build(tuner_cls, spec.tuner.options, what=f"tuner {spec.tuner.name!r}")
    require_compatible(model, sampler)
    if resolve:
        spec.data.options = resolved_options(data_cls, spec.data.options)
        spec.model.options = resolved_options(model_cls, model_options)
        spec.sampler.options = resolved_options(sampler_cls, spec.sampler.options)
        spec.tuner.options = resolved_options(tuner_cls, spec.tuner.options)
    return data, model, sampler, tuner


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, refusing devices this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA GPU is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}; use cpu or cuda")
    return device
