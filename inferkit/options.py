"""Plugin options: ``key=value`` strings coerced by the plugin constructor's type annotations.

A constructor may bound a number with ``typing.Annotated``, e.g.
``num_steps: Annotated[int, Bounds(1, 100_000, "each step is a forward and backward pass")]``:
a value outside is refused when the option is coerced, before anything is built. Every integer
option must fit in 64 bits (what torch and numpy hold).
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from inferkit.errors import UserError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Bounds:
    """The range an ``Annotated`` numeric option must lie in, and why (shown to the user)."""

    minimum: float | None = None
    maximum: float | None = None
    why: str = ""

    def check(self, value: Any) -> Any:
        """``value`` itself, or a ``ValueError`` saying the range (and why) when it is outside."""
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None
                                                                    and value > self.maximum):
            low = "" if self.minimum is None else f"at least {self.minimum:g}"
            high = "" if self.maximum is None else f"at most {self.maximum:g}"
            reason = f": {self.why}" if self.why else ""
            raise ValueError(f"must be {' and '.join(p for p in (low, high) if p)}{reason}")
        return value


def _int64(value: int) -> int:
    """``value``, or a ``ValueError`` when it does not fit in a signed 64-bit integer."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{value} does not fit in a 64-bit integer")
    return value


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean a, b?)`` for close matches of ``name``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def parse_assignments(items: typing.Iterable[str], flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a malformed item is a :class:`UserError`."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} expects key=value, got {item!r}")
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


def _parse_scalar(text: str, kind: type) -> Any:
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    if kind is float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {text!r}")
        return value
    if kind is int:
        return _int64(int(text))
    if kind is str:
        return text
    raise ValueError(f"cannot parse {kind}")


def _split_list(text: str) -> list[str]:
    text = text.strip().strip("[]()")
    return [part.strip() for part in text.split(",") if part.strip()]


def coerce(value: Any, annotation: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a TOML value) to ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        value = coerce(value, base)
        for extra in extras:
            if isinstance(extra, Bounds) and isinstance(value, (int, float)):
                extra.check(value)
        return value
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if (value is None or (isinstance(value, str) and value.lower() in ("none", ""))) \
                and type(None) in typing.get_args(annotation):
            return None
        # Try list-like members first for "a,b" strings, scalars first otherwise.
        is_listy = isinstance(value, (list, tuple)) or (isinstance(value, str) and "," in value)
        ordered = sorted(members, key=lambda a: (typing.get_origin(a) in (tuple, list)) != is_listy)
        errors = []
        for member in ordered:
            try:
                return coerce(value, member)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        for choice in typing.get_args(annotation):
            if type(value) is type(choice) and value == choice:
                return choice
            if isinstance(value, str) and type(choice) in (int, float, bool):
                try:
                    if _parse_scalar(value, type(choice)) == choice:
                        return choice
                except ValueError:
                    pass
        raise ValueError(f"not one of {', '.join(repr(c) for c in typing.get_args(annotation))}: {value!r}")
    if annotation in (tuple, list):  # bare ``tuple`` / ``list``: items kept as strings
        annotation = tuple[str, ...] if annotation is tuple else list[str]
        origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        args = typing.get_args(annotation)
        if isinstance(value, str):
            items = _split_list(value)
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif isinstance(value, (int, float)):  # one number (e.g. from TOML) is a list of one
            items = [value]
        else:
            raise ValueError(f"expected a comma-separated list, got {value!r}")
        if origin is tuple and args and Ellipsis not in args:  # fixed length, e.g. tuple[int, str]
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values, got {len(items)}")
            return tuple(coerce(item, arg) for item, arg in zip(items, args))
        item_type = (args or (str,))[0]
        converted = [coerce(item, item_type) for item in items]
        return tuple(converted) if origin is tuple else converted
    if annotation in (int, float, bool, str):
        if isinstance(value, str):
            return _parse_scalar(value, annotation)
        if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ValueError(f"not a finite number: {value!r}")
            return float(value)
        if annotation is int and isinstance(value, int) and not isinstance(value, bool):
            return _int64(value)
        if isinstance(value, annotation) and not (isinstance(value, bool) and annotation is not bool):
            return value
        raise ValueError(f"expected {annotation.__name__}, got {value!r}")
    return value


def option_types(cls: type) -> dict[str, Any]:
    """Keyword options of ``cls`` with their annotations (``Annotated`` bounds kept) and defaults."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    signature = inspect.signature(cls.__init__)
    return {name: (hints.get(name, str), param.default)
            for name, param in signature.parameters.items()
            if name != "self" and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)}


def build(cls: type, options: dict[str, Any], *, what: str) -> Any:
    """Instantiate ``cls(**options)`` after checking names and coercing values."""
    known = option_types(cls)
    kwargs = {}
    for key, raw in options.items():
        if key not in known:
            valid = ", ".join(sorted(known)) or "none"
            raise UserError(f"{what} has no option {key!r}{suggest(key, known)}; its options are: {valid}")
        annotation, _ = known[key]
        try:
            kwargs[key] = coerce(raw, annotation)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{what} option {key}={raw!r} is not valid ({exc}); expected "
                            f"{describe(annotation)}") from None
    missing = [name for name, (_, default) in known.items()
               if default is inspect.Parameter.empty and name not in kwargs]
    if missing:
        raise UserError(f"{what} needs the option(s) {', '.join(missing)}; give them as key=value")
    return construct(cls, kwargs, what=what)


def describe(annotation: Any) -> str:
    """An annotation as a user reads it: ``int``, ``float | tuple[float, ...]``."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def construct(cls: type, kwargs: dict[str, Any], *, what: str) -> Any:
    """``cls(**kwargs)``; memory it cannot allocate, or any other failure of the constructor, is a
    :class:`UserError` naming ``what`` (a plugin's own :class:`UserError` passes unchanged)."""
    try:
        return cls(**kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken plugin constructor must not crash the caller
        if is_out_of_memory(exc):
            raise UserError(f"{what} cannot allocate its memory with these options ({first_line(exc)}); "
                            "give smaller sizes") from None
        raise UserError(f"{what} failed to build ({type(exc).__name__}: {first_line(exc)}); check its "
                        "options, or report it to the plugin's authors") from None


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a ``MemoryError`` or torch's "can't allocate memory" / "out of memory" errors."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, shortened when torch adds pages of detail."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
