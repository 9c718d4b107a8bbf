"""Plugin options: ``key=value`` strings coerced by the plugin constructor's type annotations."""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from typing import Any

from inferkit.errors import UserError


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
        return int(text)
    if kind is str:
        return text
    raise ValueError(f"cannot parse {kind}")


def _split_list(text: str) -> list[str]:
    text = text.strip().strip("[]()")
    return [part.strip() for part in text.split(",") if part.strip()]


def coerce(value: Any, annotation: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a TOML value) to ``annotation``."""
    origin = typing.get_origin(annotation)
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
            return value
        if isinstance(value, annotation) and not (isinstance(value, bool) and annotation is not bool):
            return value
        raise ValueError(f"expected {annotation.__name__}, got {value!r}")
    return value


def option_types(cls: type) -> dict[str, Any]:
    """Keyword options of ``cls`` with their annotations and defaults."""
    hints = typing.get_type_hints(cls.__init__)
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
            raise UserError(f"{what} option {key}={raw!r} is not valid ({exc}); expected {annotation}") from None
    missing = [name for name, (_, default) in known.items()
               if default is inspect.Parameter.empty and name not in kwargs]
    if missing:
        raise UserError(f"{what} needs the option(s) {', '.join(missing)}; give them as key=value")
    return cls(**kwargs)
