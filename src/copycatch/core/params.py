"""Typed parameter objects that reject unknown keys.

Each scheme, attack and post-processor declares its parameters as a frozen
dataclass deriving from :class:`Params`. ``from_dict`` refuses keys it does not
know (naming the valid ones), converts strings from the command line to the
declared types, and runs the class's ``validate`` hook so a bad value is reported
with its name before any work starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from .errors import InvalidArgument

P = TypeVar("P", bound="Params")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to ``hint`` (only the simple types parameters use)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(name, value, hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise InvalidArgument(f"parameter {name!r} must be one of {', '.join(map(repr, allowed))}, not {value!r}")
        return value
    if origin in (tuple, list):
        return _coerce_sequence(name, value, hint, origin)
    if hint is Any:
        return value
    if hint in _SCALARS:
        return _SCALARS[hint](name, value)
    if hint is dict or origin is dict:
        return _coerce_dict(name, value)
    return value


def _coerce_union(name: str, value: Any, hint: Any) -> Any:
    """None for an optional's ``None`` (or "none"/"null"), else the first member type that takes ``value``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    is_none = value is None or (isinstance(value, str) and value.lower() in {"none", "null"})
    if is_none and type(None) in typing.get_args(hint):
        return None
    errors = []
    for arg in args:
        try:
            return _coerce(name, value, arg)
        except InvalidArgument as exc:
            errors.append(str(exc))
    raise InvalidArgument(errors[0] if errors else f"parameter {name!r}: cannot use {value!r}")


def _coerce_sequence(name: str, value: Any, hint: Any, origin: type) -> Any:
    """A list or tuple of the item type; a string is split on commas (or semicolons)."""
    if isinstance(value, str):
        value = [v for v in value.replace(";", ",").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise InvalidArgument(f"parameter {name!r} needs a list, not {value!r}")
    args = typing.get_args(hint)
    item = args[0] if args else Any
    out = [_coerce(name, v, item) for v in value]
    return tuple(out) if origin is tuple else out


def _coerce_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise InvalidArgument(f"parameter {name!r} needs true/false, not {value!r}")


def _coerce_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"parameter {name!r} needs an integer, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value)
    raise InvalidArgument(f"parameter {name!r} needs an integer, not {value!r}")


def _coerce_float(name: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError, ZeroDivisionError):
            if "/" in value:  # "5/255" is the natural way to write pixel budgets
                num, den = value.split("/", 1)
                return float(num) / float(den)
            return float(value)
    raise InvalidArgument(f"parameter {name!r} needs a number, not {value!r}")


def _coerce_str(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise InvalidArgument(f"parameter {name!r} needs a string, not {value!r}")


def _coerce_dict(name: str, value: Any) -> dict[Any, Any]:
    """A mapping, or a string holding one as JSON."""
    if isinstance(value, str):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise InvalidArgument(f"parameter {name!r} needs a mapping, not {value!r}")


_SCALARS: dict[Any, Callable[[str, Any], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
}


@dataclasses.dataclass(frozen=True)
class Params:
    """Base class: subclasses are frozen dataclasses with defaults for every field."""

    kind: ClassVar[str] = "parameters"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(f.name, value, hints[f.name])
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Override to check ranges; raise :class:`InvalidArgument` naming the bad value."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[P], values: Mapping[str, Any] | None = None, **more: Any) -> P:
        merged = {**(values or {}), **more}
        merged = {k.replace("-", "_"): v for k, v in merged.items()}
        valid = cls.field_names()
        unknown = [k for k in merged if k not in valid]
        if unknown:
            raise InvalidArgument(
                f"unknown {cls.kind} key {unknown[0]!r} for {cls.__name__}; valid keys: {', '.join(valid) or '(none)'}"
            )
        return cls(**merged)

    def replace(self: P, **changes: Any) -> P:
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any]]:
        """(name, type, default) for every field: used by ``--help`` and docs."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
                )
            )
            out.append((f.name, _type_name(hints[f.name]), default))
        return out


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "|".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def parse_assignments(items: Iterable[str] | None) -> dict[str, str]:
    """Parse ``["eps=0.1", "steps=5"]`` (CLI ``--param``) into a dict of strings."""
    out: dict[str, str] = {}
    for item in items or ():
        for part in _split_top(item):
            if "=" not in part:
                raise InvalidArgument(f"parameter {part!r} must look like NAME=VALUE")
            key, value = part.split("=", 1)
            key = key.strip()
            if not key:
                raise InvalidArgument(f"parameter {part!r} has an empty name")
            out[key] = value.strip()
    return out


def _split_top(item: str) -> list[str]:
    """Split ``a=1,b=2`` on commas that start a new ``name=`` (so ``sizes=1,2`` keeps its list)."""
    parts: list[str] = []
    for chunk in item.split(","):
        if parts and "=" not in chunk:
            parts[-1] += "," + chunk
        else:
            parts.append(chunk)
    return [p for p in parts if p.strip()]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Parse ``name:key=value,key=value`` into ``(name, {key: value})``."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise InvalidArgument(f"empty name in {spec!r}")
    return name, parse_assignments([rest] if rest else [])
