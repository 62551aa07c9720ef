"""The `elalora-auto` commands: parse, call, print. No logic of its own lives here."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from elalora_auto.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elalora-auto",
        description="Find the best way to spend a fine-tuning parameter budget with ElaLoRA and Optuna.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each command adds its own sub-parser below and sets `func` to its handler.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
