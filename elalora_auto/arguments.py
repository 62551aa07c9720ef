"""The CLI's argument types: a wrong value fails in the parser, naming the flag, before any file is written or any
study touched. Checks that need another layer (storage and tracking URIs, registry names) are imported on use."""

from __future__ import annotations

import argparse
from typing import Callable

from elalora_auto.errors import UserError


def positive_int(text: str) -> int:
    """A whole number >= 1 (trials, steps, samples, workers)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds, epochs, a parameter cap)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535, got {value}")
    return value


def folder(text: str) -> str:
    """A folder to write into: it may not exist yet, but it may not be a file."""
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("empty; name a folder")
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; pass a folder (created when missing)")
    return text


def output_file(text: str) -> str:
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("empty; name a file, e.g. result.json")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; pass a file name, e.g. {Path(text) / 'result.json'}")
    return text


def storage(text: str) -> str:
    from elalora_auto.search.settings import check_storage_url

    return _checked(check_storage_url, "--storage", text)


def tracking_uri(text: str) -> str:
    from elalora_auto.tracking.store import check_tracking_uri

    return _checked(check_tracking_uri, "--tracking-uri", text)


def _checked(check: Callable[[str], str], flag: str, text: str) -> str:
    """`check(text)`, its UserError as argparse's error line (which names the flag itself)."""
    try:
        return check(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag} {text!r}").removeprefix(f"{flag} ")
                                         .lstrip(": ")) from None


def model_name(text: str) -> str:
    from elalora_auto.tracking.models import check_model_name

    return _checked(check_model_name, "--register", text)
