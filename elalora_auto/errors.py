"""Errors a user can fix. The CLI prints them as one line and exits non-zero; everything else is a bug."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """Bad input (unknown task, missing files, malformed YAML, impossible ranges, ...); the message names the fix."""


class ConfigError(UserError):
    """An invalid ElaLoraConfig or search-space entry."""


class DataError(UserError):
    """Task data that cannot be found or read."""


def reject_unknown(given: Iterable[str], known: Iterable[str], what: str, error: type[UserError] = ConfigError,
                   valid: Iterable[str] | None = None) -> None:
    """Raise `error`("{what} 'first unknown' (valid: ...)") when `given` holds a key outside `known`.

    The one check behind every "unknown key" message (settings, trial configs, spaces, adapter parameters), so
    each names the offending key and the valid ones alike. `valid` lists names to show instead of `known`.
    """
    unknown = sorted(set(given) - set(known))
    if unknown:
        names = sorted(valid if valid is not None else known)
        raise error(f"{what} {unknown[0]!r} (valid: {', '.join(names)})")


def lookup(registry: Mapping[str, T], name: str, what: str, error: type[UserError] = ConfigError) -> T:
    """`registry[name]` (a registry of methods, of task families), else `error`("unknown {what} 'name'; choose
    one of ...") naming the registered ones."""
    if name not in registry:
        raise error(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def close_hint(name: str, names: Iterable[str]) -> str:
    """" did you mean 'x'?" for the closest of `names` (difflib), or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(names), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_fields(settings: Any, where: str = "", positive: Iterable[str] = (), non_negative: Iterable[str] = (),
                 error: type[UserError] = ConfigError) -> None:
    """Every field of a settings dataclass has its annotated type (int, float, str, bool, X | None, ...) and no
    text field is empty, and the named numeric fields are > 0 (`positive`) or >= 0 (`non_negative`); nested
    dataclasses are checked too.

    One check for every settings object, so `trials: "many"`, `batch_size: 0` or `learning_rate=abc` fail before
    anything runs, with the field's name (`where` is its prefix, e.g. "training.").
    """
    hints = typing.get_type_hints(type(settings))
    positive, non_negative = set(positive), set(non_negative)
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{where}{f.name}.", error=error)
            continue
        if not _has_type(value, hints[f.name]):
            raise error(f"{where}{f.name}: expected {_type_name(hints[f.name])}, got {value!r}")
        if isinstance(value, str) and not value.strip():  # a name, path or URI: empty is never meant
            raise error(f"{where}{f.name}: empty; give a value or leave it out")
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if f.name in positive and not value > 0:
            raise error(f"{where}{f.name}: must be > 0, got {value!r}")
        if f.name in non_negative and not value >= 0:
            raise error(f"{where}{f.name}: must be >= 0, got {value!r}")


def _has_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arm) for arm in typing.get_args(hint))
    if origin is typing.Literal:  # exact: `1` is not `True`, nor `"true"` (text) the boolean
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return "nothing (null)"
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    names = {int: "a whole number", float: "a number", str: "text", bool: "true or false", dict: "a mapping",
             list: "a list"}
    origin = typing.get_origin(hint) or hint
    return names.get(origin, getattr(origin, "__name__", str(origin)))
