"""bench/gpu_check.py: its CPU-sized --smoke run goes through all three parts, so the prepared GPU check
cannot rot between the rare runs on a GPU machine; without CUDA the full run refuses in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SMOKE_HEADING = "## GPU check (bench/gpu_check.py --smoke)"


def test_smoke_times_trains_and_searches_with_exact_count() -> None:
    benchmarks = ROOT / "BENCHMARKS.md"
    headings_before = benchmarks.read_text().count(SMOKE_HEADING)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1"], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    for method in ("lora", "elalora", "adalora"):
        assert re.search(rf"^\| 2 \| 16 \| {method} \| \d+\.\d \| ", out, re.M), f"(a) row for {method}\n{out}"
        assert re.search(rf"^\| {method} \| accuracy \| \d\.\d{{4}} \| \d+ \| ", out, re.M), f"(b) row for {method}"
    assert re.search(r"^\| 2 \| 16 \| elalora-every4 \| \d+\.\d \| ", out, re.M), f"(a) row, lazy penalty\n{out}"
    assert "search: exactly 4 trials, numbers [0, 1, 2, 3] distinct (4 complete;" in out, out[-3000:]
    assert "FAILED" not in out and "appended" not in out
    assert benchmarks.read_text().count(SMOKE_HEADING) == headings_before, "--smoke must not append"


def test_full_run_refuses_without_cuda_in_one_line() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the refusal is for machines without it")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--parts", "a"], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: CUDA is not available here; run on a GPU machine, or add --smoke (CPU, tiny sizes)"]
