"""Plugins found through entry points: ``inferkit.models``, ``.samplers``, ``.tuners``, ``.datasets``.

inferkit's own built-ins are registered the same way, in its ``pyproject.toml``. A model named
``SCHEME:REST`` (e.g. ``pyro:mypkg.models:model``) is made by the function registered as ``SCHEME`` in
``inferkit.model_schemes``: ``function(REST) -> Model class`` (inferkit registers ``pyro``).
"""

from __future__ import annotations

import inspect
import traceback
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from inferkit.errors import UserError
from inferkit.interfaces import Model, Sampler, Tuner
from inferkit.options import build, suggest

BUILTIN_DISTRIBUTION = "inferkit"

GROUPS = {
    "model": "inferkit.models",
    "sampler": "inferkit.samplers",
    "tuner": "inferkit.tuners",
    "dataset": "inferkit.datasets",
    "model scheme": "inferkit.model_schemes",
}


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin: where it comes from and whether it imports."""

    kind: str
    name: str
    target: str
    distribution: str
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def _distribution(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def _all_entry_points(kind: str) -> list[EntryPoint]:
    """Every entry point of the ``kind`` group, duplicate names included, built-ins first."""
    found = list(entry_points(group=GROUPS[kind]))
    return sorted(found, key=lambda ep: _distribution(ep) != BUILTIN_DISTRIBUTION)


def _resolve(kind: str) -> tuple[dict[str, EntryPoint], list[tuple[EntryPoint, EntryPoint]]]:
    """The entry points of the ``kind`` group by name, and the ``(ignored, winner)`` pairs of names
    given twice: the built-in one (from the ``inferkit`` distribution) wins, else the first found."""
    chosen: dict[str, EntryPoint] = {}
    ignored = []
    for ep in _all_entry_points(kind):
        if ep.name in chosen:
            ignored.append((ep, chosen[ep.name]))
        else:
            chosen[ep.name] = ep
    return chosen, ignored


def _shadow_message(kind: str, loser: EntryPoint, winner: EntryPoint) -> str:
    return (f"{kind} {loser.name!r} of distribution {_distribution(loser)!r} ({loser.value}) is ignored: "
            f"the name is taken by {_distribution(winner)!r} ({winner.value}); rename the plugin's entry point")


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    """The entry points of the ``kind`` group by name (see :func:`_resolve`), warning about each
    entry point ignored because another took its name."""
    chosen, ignored = _resolve(kind)
    for loser, winner in ignored:
        warnings.warn(_shadow_message(kind, loser, winner), stacklevel=3)
    return chosen


BASES = {"model": Model, "sampler": Sampler, "tuner": Tuner}


def _check_class(kind: str, name: str, cls: Any) -> None:
    """A :class:`UserError` unless ``cls`` is a concrete subclass of the group's interface (for a
    model scheme: a function)."""
    where = f"{kind} plugin {name!r}"
    if kind == "model scheme":
        if not callable(cls):
            raise UserError(f"{where} is {type(cls).__name__}, not a function of the model's name")
        return
    if not inspect.isclass(cls):
        raise UserError(f"{where} is {type(cls).__name__} {cls!r}, not a class; its entry point must name "
                        "a class")
    if kind in BASES and not issubclass(cls, BASES[kind]):
        base = BASES[kind].__name__
        raise UserError(f"{where} ({cls.__module__}.{cls.__qualname__}) is not an inferkit.{base}; it must "
                        f"subclass inferkit.{base}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise UserError(f"{where} ({cls.__module__}.{cls.__qualname__}) does not implement {missing}; "
                        "the plugin is incomplete, update or report it")


def _load_entry_point(kind: str, ep: EntryPoint) -> type:
    """The class behind ``ep``, checked; any failure while importing it (a ``sys.exit`` too, but
    not Ctrl-C) is a :class:`UserError`."""
    try:
        cls = ep.load()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken plugin must not crash the caller
        reason = traceback.format_exception_only(type(exc), exc)[-1].strip()
        raise UserError(f"{kind} plugin {ep.name!r} failed to import ({reason}); reinstall it or see "
                        "`inferkit list`") from None
    _check_class(kind, ep.name, cls)
    return cls


def plugin_class(kind: str, name: str) -> type:
    """The class registered as ``name`` in the ``kind`` group; a model named ``SCHEME:REST`` is the
    class the ``SCHEME`` model scheme makes of ``REST`` (``pyro:MODULE:FUNCTION``: that Pyro model
    function behind :class:`~inferkit.models.pyro_model.PyroModel`)."""
    if kind == "model" and ":" in name:
        scheme, _, rest = name.partition(":")
        return plugin_class("model scheme", scheme)(rest)
    available = _entry_points(kind)
    if name not in available:
        names = ", ".join(sorted(available)) or "none installed"
        raise UserError(f"unknown {kind} {name!r}{suggest(name, available)}; installed {kind}s: {names} "
                        "(see `inferkit list`)")
    return _load_entry_point(kind, available[name])


def load(kind: str, name: str, **options: Any) -> Any:
    """Build the ``kind`` plugin registered as ``name`` with ``options`` (strings are coerced)."""
    return build(plugin_class(kind, name), options, what=f"{kind} {name!r}")


def load_model(name: str, **options: Any):
    """Build a registered :class:`~inferkit.Model` by name, e.g. ``load_model("ladder", nf=64)``."""
    return load("model", name, **options)


def load_sampler(name: str, **options: Any):
    """Build a registered :class:`~inferkit.Sampler` by name, e.g. ``load_sampler("shortrun")``."""
    return load("sampler", name, **options)


def load_tuner(name: str, **options: Any):
    """Build a registered :class:`~inferkit.Tuner` by name, e.g. ``load_tuner("kl-grid")``."""
    return load("tuner", name, **options)


def load_dataset(name: str, **options: Any):
    """Build a registered data set by name, e.g. ``load_dataset("mnist", data_dir=...)``."""
    return load("dataset", name, **options)


def list_plugins() -> list[PluginInfo]:
    """Every registered plugin of every group, each imported and checked to report its status; an
    entry point whose name another one took is listed with that as its error."""
    found = []
    for kind in GROUPS:
        chosen, ignored = _resolve(kind)
        entries = [(ep, None) for ep in chosen.values()] + [(ep, _shadow_message(kind, ep, winner))
                                                             for ep, winner in ignored]
        for ep, error in sorted(entries, key=lambda entry: entry[0].name):
            if error is None:
                try:
                    _load_entry_point(kind, ep)
                except UserError as exc:
                    error = str(exc)
            found.append(PluginInfo(kind, ep.name, ep.value, _distribution(ep), error))
    return found
