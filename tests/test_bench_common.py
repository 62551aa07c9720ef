"""bench/common/, the toolkit every bench script stands on: the machine note reads the device torch really has
(never a hard-coded "no GPU"), results files append and resume row by row, and the commit note sees uncommitted
changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import append_jsonl, git_commit, machine_note, read_jsonl  # noqa: E402
from common.notes import cpu_model  # noqa: E402


def test_machine_note_names_the_device_torch_sees() -> None:
    note = machine_note()
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in note and "no CUDA device" not in note, note
    else:
        assert "no CUDA device" in note, note
    capability = torch.backends.cpu.get_cpu_capability()  # AVX2 / AVX512 kernels round differently: recorded
    assert f"{os.cpu_count()}-core CPU ({cpu_model()}, torch CPU kernels {capability})" in note, note
    assert "load average" in note, note
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.partition(":")[2].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    if names:  # the kernel's name, not platform.processor()'s (often empty or just the architecture)
        assert cpu_model() == names[0]


def test_results_append_row_by_row_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "results" / "rows.jsonl"
    assert read_jsonl(path) == []  # not run yet: nothing to resume from
    append_jsonl(path, {"seed": 42, "value": 0.5})
    append_jsonl(path, {"seed": 43, "value": Path("x")})  # what JSON cannot hold is written as its text
    assert read_jsonl(path) == [{"seed": 42, "value": 0.5}, {"seed": 43, "value": "x"}]


def test_git_commit_marks_uncommitted_changes(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git("rev-parse", "--short", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("two\n")
    assert git_commit(tmp_path) == f"{head}-dirty"
