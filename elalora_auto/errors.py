"""Errors a user can fix. The CLI prints them as one line and exits non-zero; everything else is a bug."""

from __future__ import annotations

from typing import Iterable


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
