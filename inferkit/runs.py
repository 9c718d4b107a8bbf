"""Run specifications: which plugins with which options, and the training settings.

A run folder holds ``config.json`` (the resolved :class:`RunSpec`), so ``--resume``, ``eval``,
``sample`` and ``tune`` rebuild exactly the objects the run trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from inferkit.acceleration import check_precision
from inferkit.errors import UserError
from inferkit.interfaces import require_compatible
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
    """Fractions of ``iterations`` at which the learning rate is multiplied by ``lr_gamma``."""
    lr_gamma: float = 0.3
    sigma_start: float = 0.3
    sigma_end: float = 0.2
    sigma_anneal: float = 0.5
    """Fraction of the run over which observation sigma goes linearly from start to end."""
    tune_every: int = 100
    """``T_s``: run the tuner every this many iterations (0: never)."""
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

    def validate(self) -> None:
        positive = ("iterations", "batch_size", "log_every", "checkpoint_every", "image_every", "eval_examples")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.shards < 0:
            raise UserError(f"shards must be >= 0 (0: one per process), got {self.shards}")
        if self.tune_every < 0:
            raise UserError(f"tune-every must be >= 0, got {self.tune_every}")
        for name in ("learning_rate", "lr_gamma", "sigma_start", "sigma_end"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{name.replace('_', '-')} must be positive and finite, got {value}")
        if not 0 <= self.sigma_anneal <= 1 or not all(0 <= m <= 1 for m in self.lr_milestones):
            raise UserError("sigma-anneal and lr-milestones are fractions of the run, between 0 and 1")
        check_precision(self.precision, self.device)

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
    def load(cls, folder: Path) -> RunSpec:
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise UserError(f"{folder} holds no inferkit run (no {CONFIG_FILE}); give a run folder made by "
                            "`inferkit run`")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from None


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
    """Write JSON to ``path`` through a temporary file and a rename, so a crash leaves the old file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


@_removes_tmp_on_failure
def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file, flushed to disk, then renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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

    A model class may define ``options_for_data(data_shape) -> dict`` to take its input shape from
    the data (e.g. image size and channels); options the user gave win.
    """
    data_cls = plugin_class("dataset", spec.data.name)
    data = build(data_cls, spec.data.options, what=f"dataset {spec.data.name!r}")
    model_cls = plugin_class("model", spec.model.name)
    model_options = dict(spec.model.options)
    fit = getattr(model_cls, "options_for_data", None)
    if fit is not None:
        for key, value in fit(tuple(data.data_shape)).items():
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
