"""Names a package exports but imports on first use (for modules that pull in more than the common case needs)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``: ``name`` in ``table`` is imported from the module
    ``table[name]`` when first asked for; any other name is an ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return vars(import_module(table[name]))[name]
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
