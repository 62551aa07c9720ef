"""bench/search_vs_peers.py: the report's arithmetic on hand-made studies, and its --smoke run end to end (all
four arms, one seed, then a top-up that resumes the studies), so the long benchmark cannot rot between runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import matplotlib  # noqa: F401 - required dependencies the bench uses: a broken install fails here, not skips
import optuna  # noqa: F401
import peft  # noqa: F401
import pytest
import transformers  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "search_vs_peers.py"
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("search_vs_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def study(arm: str, seed: int, points: list[tuple[float, int]]) -> dict:
    rows = [{"number": i, "state": "COMPLETE", "accuracy": m, "trainable_params": c, "steps_done": 10,
             "wall_time_s": 1.0} for i, (m, c) in enumerate(points)]
    return {"kind": "study", "task": "sst2", "arm": arm, "seed": seed, "trials": len(rows), "steps": 10,
            "baseline": 0.5, "steps_per_trial": 10, "batch_size": 16, "max_length": 64, "pruning": "none",
            "rows": rows, "steps_total": 10 * len(rows), "wall_time_s": float(len(rows))}


def test_report_arithmetic(bench: ModuleType) -> None:
    ela = study("elalora", 42, [(0.80, 100), (0.85, 300)])
    lora = study("lora", 42, [(0.78, 100), (0.84, 300), (0.86, 900)])
    assert bench.reference([ela, lora]) == (0.5, pytest.approx(990.0))
    assert bench.task_budgets([ela, lora], None) == [100, 300, 300]
    assert bench.best_at(bench.complete_points(lora), 300) == 0.84
    assert bench.best_at(bench.complete_points(lora), 99) is None
    assert bench.relation(bench.complete_points(ela), bench.complete_points(lora)) == (
        "neither dominates nor is dominated by")  # lora's 0.86 at 900 is beaten by nothing of ElaLoRA's
    assert bench.relation(bench.complete_points(ela), bench.complete_points(lora)[:2]) == "dominates"
    # the box: 0.5 x 990; ElaLoRA covers (0.80 - 0.5) x 890 + (0.85 - 0.80) x 690
    assert bench.normalised_hv(bench.complete_points(ela), (0.5, 990.0)) == pytest.approx(
        (0.3 * 890 + 0.05 * 690) / (0.5 * 990))
    lines = bench.goal_lines({"sst2": [ela, lora]}, {"sst2": [100, 300, 900]})
    assert lines[0].endswith("= +2.0 -> mean +2.0 points over 1 task(s): target +1 met"), lines
    assert "= -1.0" in lines[2] and "NOT met" in lines[2], lines


def run(*args: str, tmp: Path) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--seeds", "42", "--max-steps", "8",
                           "--results", str(tmp / "r.jsonl"), "--workdir", str(tmp / "work"), "--plots", str(tmp),
                           *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_smoke_all_arms_then_resume(tmp_path: Path) -> None:
    out = run("--trials", "1", tmp=tmp_path)
    for arm in ("elalora", "lora", "adalora", "trainer-hps"):
        assert f"| {arm} | 42 | 1 (" in out, out[-3000:]
    assert (tmp_path / "search_vs_peers_smoke.png").is_file()
    out = run("--trials", "2", "--arms", "lora", "trainer-hps", tmp=tmp_path)  # the same studies, topped up
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    studies = {(r["arm"], r["trials"]): r for r in records if r["kind"] == "study"}
    for arm in ("lora", "trainer-hps"):
        assert [row["number"] for row in studies[(arm, 2)]["rows"]] == [0, 1], studies[(arm, 2)]["rows"]
        assert f"| {arm} | 42 | 2 (" in out
    trainer_trials = [r["number"] for r in records if r["kind"] == "trial" and r["arm"] == "trainer-hps"]
    assert trainer_trials == [0, 1], "the resumed Trainer search runs only the missing trial"
    assert "smoke/elalora/seed 42" not in out  # --arms narrows the report too


def test_space_option_reaches_the_arm(bench: ModuleType, tmp_path: Path) -> None:
    """--space ARM=YAML swaps one elalora-auto arm's space (an experiment), and the lean space the benchmark ships
    loads and holds its fixed values: a one-point range is a constant."""
    from elalora_auto.search.space import SearchSpace

    lean = "bench/spaces/elalora-lean.yaml"
    args = bench.parse_args(["--smoke", "--space", f"elalora={lean}", "--workdir", str(tmp_path)])
    assert args.space == {"elalora": lean}
    key = {"task": bench.SMOKE_TASK, "arm": "elalora", "seed": 42, "trials": 2, "steps": 8, "study": "s",
           "space": lean}
    assert bench.arm_settings(args, key).space == lean
    unswapped = {name: value for name, value in key.items() if name != "space"} | {"arm": "lora"}
    assert bench.arm_settings(args, unswapped).space == "lora", "an arm without --space keeps its method's space"
    space = SearchSpace.load(ROOT / lean)
    held = {p.name: (p.low, p.high) for p in space.params if p.type != "categorical"}
    assert held["b"] == (4, 4) and held["beta1"] == (0.85, 0.85), held
    for bad in (["--space", "trainer-hps=x.yaml"], ["--space", "elalora"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
