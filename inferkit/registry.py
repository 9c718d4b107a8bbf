"""Plugins found through entry points: ``inferkit.models``, ``.samplers``, ``.tuners``, ``.datasets``.

inferkit's own built-ins are registered the same way, in its ``pyproject.toml``.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from inferkit.errors import UserError
from inferkit.options import build, suggest

GROUPS = {
    "model": "inferkit.models",
    "sampler": "inferkit.samplers",
    "tuner": "inferkit.tuners",
    "dataset": "inferkit.datasets",
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


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def plugin_class(kind: str, name: str) -> type:
    """The class registered as ``name`` in the ``kind`` group; a model named ``pyro:MODULE:FUNCTION``
    is that Pyro model function behind :class:`~inferkit.models.pyro_model.PyroModel`."""
    if kind == "model" and name.startswith("pyro:"):
        from inferkit.models.pyro_model import load_pyro_function

        return load_pyro_function(name[len("pyro:"):])
    available = _entry_points(kind)
    if name not in available:
        names = ", ".join(sorted(available)) or "none installed"
        raise UserError(f"unknown {kind} {name!r}{suggest(name, available)}; installed {kind}s: {names} "
                        "(see `inferkit list`)")
    try:
        return available[name].load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not crash the caller
        raise UserError(f"{kind} plugin {name!r} failed to import ({type(exc).__name__}: {exc}); "
                        "reinstall it or see `inferkit list`") from None


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
    """Every registered plugin of every group, each imported to report its status."""
    found = []
    for kind in GROUPS:
        for name, ep in sorted(_entry_points(kind).items()):
            dist = ep.dist.name if ep.dist is not None else "?"
            try:
                ep.load()
                error = None
            except Exception as exc:  # noqa: BLE001 - report any import failure, never raise
                error = traceback.format_exception_only(type(exc), exc)[-1].strip()
            found.append(PluginInfo(kind, name, ep.value, dist, error))
    return found
