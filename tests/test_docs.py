"""The documentation cannot drift from the code: the library example in docs/library.md runs as written, every CLI
command has its page in docs/commands/ whose options table names every option the parser defines (with its
choices and its argparse default), README starts with the two commands, and every relative link (files, images,
#anchors) in README.md and docs/ resolves."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from elalora_auto.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMAND_PAGES = ROOT / "docs" / "commands"
PAGE_SECTIONS = ("## Synopsis", "## Options", "## Examples", "## Errors")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_library_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    section = text.split("# ElaLoRA as a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code.replace("/tmp/elalora-example", str(tmp_path / "out")), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    # The round history line proves rounds happened under the Trainer with no manual call.
    assert "'pruned'" in proc.stdout and "'grown'" in proc.stdout, proc.stdout
    # "ranks moved during training": the printed rank map is no longer r_init everywhere, at the same total rank.
    r_init = int(re.search(r"r_init=(\d+)", code).group(1))
    ranks = next(ast.literal_eval(line) for line in proc.stdout.splitlines() if line.startswith("{'bert."))
    assert set(ranks.values()) != {r_init} and sum(ranks.values()) == r_init * len(ranks), ranks


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every `elalora-auto` subcommand's parser, by name."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def option_rows(page: str) -> dict[str, str]:
    """The options table of a command page: `--flag` (its first cell's first option) -> the whole row."""
    rows = {}
    for line in page.split("## Options", 1)[-1].split("\n## ", 1)[0].splitlines():
        match = re.match(r"\|\s*`(--[\w-]+)", line)
        if match:
            rows[match.group(1)] = line
    return rows


def page_problems(name: str, parser: argparse.ArgumentParser, page: str) -> list[str]:
    """What a command's page misses of its parser: sections, options, choices, argparse defaults."""
    problems = [f"no '{section}' section" for section in PAGE_SECTIONS if f"\n{section}\n" not in page]
    rows = option_rows(page)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings or action.dest == "help":
            continue
        flag = max(action.option_strings, key=len)
        row = rows.get(flag)
        if row is None:
            problems.append(f"option {flag} is not in the options table")
            continue
        for choice in action.choices or ():
            if f"`{choice}`" not in row:
                problems.append(f"{flag}: choice `{choice}` is not in its row")
        if action.default not in (None, False, []) and f"`{action.default}`" not in row:
            problems.append(f"{flag}: default `{action.default}` is not in its row")
    return [f"docs/commands/{name}.md: {p}" for p in problems]


def test_every_command_has_a_page_naming_every_option() -> None:
    """Adding a command or an option without its documentation fails here, naming the page and the option."""
    problems = []
    for name, parser in commands().items():
        page = COMMAND_PAGES / f"{name}.md"
        if not page.is_file():
            problems.append(f"docs/commands/{name}.md is missing: write its page ({', '.join(PAGE_SECTIONS)})")
            continue
        problems += page_problems(name, parser, page.read_text(encoding="utf-8"))
    stray = sorted(p.name for p in COMMAND_PAGES.glob("*.md") if p.stem not in commands())
    assert not problems and not stray, "\n".join(problems + [f"no command for page docs/commands/{s}" for s in stray])
    readme = README.read_text(encoding="utf-8")
    assert not [name for name in commands() if f"(docs/commands/{name}.md)" not in readme], "README links every page"


def test_a_page_missing_an_option_is_caught() -> None:
    """The check above can fail: a page with one option's row removed, or its default changed, is reported."""
    parser = commands()["ui"]
    page = (COMMAND_PAGES / "ui.md").read_text(encoding="utf-8")
    assert page_problems("ui", parser, page) == []
    without = "\n".join(line for line in page.splitlines() if not line.startswith("| `--tracking-uri"))
    assert page_problems("ui", parser, without) == ["docs/commands/ui.md: option --tracking-uri is not in the "
                                                    "options table"]
    assert page_problems("ui", parser, page.replace("| `5000` |", "| `8080` |")) == [
        "docs/commands/ui.md: --port: default `5000` is not in its row"]


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces as hyphens, repeats
    numbered -1, -2, ... (headings inside code blocks are not headings)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        in_code ^= line.startswith("```")
        match = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            found.add(slug if slug not in counts else f"{slug}-{counts[slug]}")
            counts[slug] = counts.get(slug, 0) + 1
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Relative links of `page` whose file or #anchor does not exist (paths shown relative to `root`)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target} (no file {path.relative_to(root)})")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path.relative_to(root)})")
    return broken


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links: {broken_links(page)}"


def test_a_broken_anchor_is_caught(tmp_path: Path) -> None:
    """The link check can fail: a missing file and a missing heading are both reported; a repeated heading's
    second anchor (-1) resolves."""
    (tmp_path / "other.md").write_text("# Log\n\n## Step time\n\n## Step time\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#step-time-1) [b](other.md#step-time-2) [c](gone.md) [d](#log)\n# Log\n")
    assert broken_links(page, tmp_path.resolve()) == ["other.md#step-time-2 (no heading #step-time-2 in other.md)",
                                                      "gone.md (no file gone.md)"]
