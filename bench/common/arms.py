"""The arms of bench/paired.py as its command line names them: `NAME=METHOD[,KEY=VALUE...]` specs, a search arm's
options (the SearchSettings fields they set), --pool and --trials-of; each malformed one stops before any work."""

from __future__ import annotations

import argparse
from typing import Any

from elalora_auto.search.settings import SAMPLERS


def parse_arm(text: str) -> tuple[str, str, list[str]]:
    """'NAME=METHOD[,KEY=VALUE...]' -> (name, method, overrides)."""
    name, sep, rest = text.partition("=")
    method, *overrides = rest.split(",")
    if not sep or not name or not method:
        raise SystemExit(f"error: an arm is NAME=METHOD[,KEY=VALUE...], got {text!r}")
    return name, method, overrides


# a search arm's KEY=VALUE options -> the SearchSettings field each sets (draw: see paired.py's `study_settings`)
SEARCH_OPTIONS = {"space": "space", "sampler": "sampler", "startup": "startup_trials", "draw": "draw"}
WHOLE_NUMBERS = ("startup", "draw")


def search_options(overrides: list[str]) -> dict[str, Any]:
    """A search arm's options as SearchSettings fields; an unknown or malformed one exits before any work."""
    options: dict[str, Any] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if (not sep or name not in SEARCH_OPTIONS or (name in WHOLE_NUMBERS and not value.isdigit())
                or (name == "draw" and int(value) < 1) or (name == "sampler" and value not in SAMPLERS)):
            raise SystemExit("error: a search arm's options are space=YAML, sampler=tpe|gp, startup=N, draw=N "
                             f"(N >= 1); got {item!r}")
        options[SEARCH_OPTIONS[name]] = int(value) if name in WHOLE_NUMBERS else value
    return options


def parse_pools(parser: argparse.ArgumentParser, texts: list[str], arms: list[str],
                base: str | None) -> dict[str, list[str]]:
    """--pool NAME=ARM[+ARM...]: a new name for one or more search arms; the search baseline in exactly one pool."""
    pools = {}
    for text in texts:
        name, _, rest = text.partition("=")
        members = rest.split("+")
        if not name or name in arms or name in pools or not all(members) or set(members) - set(arms):
            parser.error(f"a pool is NAME=ARM[+ARM...]: a new name and one or more of the search arms "
                         f"({', '.join(arms) or 'none'}); got {text!r}")
        pools[name] = members
    if pools and sum(base in members for members in pools.values()) != 1:
        parser.error(f"with --pool, the search baseline {base!r} must be in exactly one pool (the others are paired "
                     "with it)")
    return pools


def parse_trials_of(parser: argparse.ArgumentParser, texts: list[str], arms: list[str]) -> dict[str, int]:
    """--trials-of NAME=N: one of the search arms and a whole number of trials >= 1."""
    trials = {}
    for text in texts:
        name, _, count = text.partition("=")
        if name not in arms or not count.isdigit() or int(count) < 1:
            parser.error(f"--trials-of is NAME=N: one of the search arms ({', '.join(arms) or 'none'}) and trials "
                         f">= 1; got {text!r}")
        trials[name] = int(count)
    return trials
