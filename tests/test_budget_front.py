"""bench/budget_front.py end to end on the smoke task: a real (tiny) ElaLoRA study from bench/search_vs_peers.py,
each configuration re-run under the other budget, and a re-run under its own budget that must reproduce the
study's result exactly (the pairing is only fair if a re-run is the study's trial again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib  # noqa: F401 - required dependencies the benches use: a broken install fails here, not skips
import optuna  # noqa: F401
import peft  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def bench(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_paired_rerun_reproduces_the_study(tmp_path: Path) -> None:
    studies, reruns = tmp_path / "studies.jsonl", tmp_path / "reruns.jsonl"
    bench("search_vs_peers.py", "--smoke", "--seeds", "42", "--max-steps", "8", "--trials", "1", "--arms", "elalora",
          "--results", str(studies), "--workdir", str(tmp_path / "work"), "--plots", str(tmp_path))
    args = ("budget_front.py", "--task", "smoke", "--seed", "42", "--check", "0", "--studies", str(studies),
            "--results", str(reruns), "--workdir", str(tmp_path / "work"), "--plots", str(tmp_path))
    out = bench(*args)
    assert "1 of 1 configurations paired" in out, out
    rows = [json.loads(line) for line in reruns.read_text().splitlines()]
    trial = next(json.loads(line) for line in studies.read_text().splitlines() if '"kind": "trial"' in line)
    own = trial["params"]["budget"]
    assert sorted(r["budget"] for r in rows) == sorted(["rank", "params"])
    check = next(r for r in rows if r["budget"] == own)
    assert (check["accuracy"], check["trainable_params"]) == (trial["accuracy"], trial["trainable_params"])
    assert (tmp_path / "budget_front_smoke_s42.png").is_file()
    bench(*args)  # resumes: nothing left to run
    assert len(reruns.read_text().splitlines()) == 2


def test_setting_front_reruns_each_configuration_with_a_changed_setting(tmp_path: Path) -> None:
    """bench/setting_front.py: final_budget=1.0 is the study's own setting, so that re-run must reproduce the trial
    exactly; final_budget=0.5 must end smaller. Both are reported against the LoRA search of the same seed."""
    studies, reruns = tmp_path / "studies.jsonl", tmp_path / "reruns.jsonl"
    bench("search_vs_peers.py", "--smoke", "--seeds", "42", "--max-steps", "12", "--trials", "1", "--arms", "elalora",
          "lora", "--results", str(studies), "--workdir", str(tmp_path / "work"), "--plots", str(tmp_path))
    args = ("setting_front.py", "--task", "smoke", "--seed", "42", "--set", "final_budget=1.0", "--set",
            "final_budget=0.5", "--studies", str(studies), "--results", str(reruns), "--workdir",
            str(tmp_path / "work"), "--plots", str(tmp_path))
    out = bench(*args)
    rows = {r["setting"]: r for r in map(json.loads, reruns.read_text().splitlines())}
    trial = next(json.loads(line) for line in studies.read_text().splitlines()
                 if '"kind": "trial"' in line and '"arm": "elalora"' in line)
    same = rows["final_budget=1.0"]
    assert (same["accuracy"], same["trainable_params"]) == (trial["accuracy"], trial["trainable_params"])
    assert rows["final_budget=0.5"]["trainable_params"] < trial["trainable_params"]
    assert "lora search" in out and "final_budget=0.5: 1 configurations re-run" in out, out
    assert (tmp_path / "setting_front_smoke_s42.png").is_file()
    bench(*args)  # resumes: nothing left to run
    assert len(reruns.read_text().splitlines()) == 2
    against = bench(*args, "--baseline", "final_budget=1.0", "--table")
    assert "final_budget=0.5 against the final_budget=1.0 re-run" in against, against
    assert "final_budget=0.5: 1 configurations re-run. Size change" in against
