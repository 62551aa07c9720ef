"""Where bench output goes and how it is written: committed JSON lines under bench/results/ (appended row by row,
so a run cut short keeps what it measured and resumes from there), scratch under bench/out/, and BENCHMARKS.md
sections that state the command, the date and the machine."""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
from typing import Any

from common.notes import ROOT, command_line, machine_note

RESULTS_DIR = ROOT / "bench" / "results"  # committed rows
OUT = Path(os.environ.get("ELALORA_BENCH_OUT", ROOT / "bench" / "out"))  # scratch; the smoke tests point it away
GLUE = Path("/work/shared/data/glue")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file (one JSON object per line); none when it does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Add one row as it comes, so a benchmark cut short keeps what it measured and resumes from there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row, default=str) + "\n")


def write_json(name: str, payload: Any) -> Path:
    """Scratch output: bench/out/NAME.json, replaced on every call (a script's latest rows)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def append_section(path: Path | None, title: str, body: str, note_before: str, note_after: str) -> None:
    """Append '## title' with the command, date, machine load at start and end, and `body` (markdown)."""
    if path is None:
        return
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n## {title}\n\nCommand: `{command_line()}`  \nDate: {date}  \n"
            f"Machine at start: {note_before}  \nMachine at end: {note_after}\n\n{body.strip()}\n")
    with open(path, "a") as handle:
        handle.write(text)


def publish(name: str, title: str, args: argparse.Namespace, before: str, payload: dict[str, Any], text: str,
            description: str) -> None:
    """Print the table, keep the raw rows in bench/out/NAME.json and, with --append-to, add the section."""
    after = machine_note()
    write_json(name, {"args": vars(args), "machine_before": before, "machine_after": after, **payload})
    print(text)
    append_section(args.append_to, title, f"{text}\n\n{description}", before, after)
