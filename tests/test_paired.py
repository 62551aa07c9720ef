"""bench/paired.py: the paired t-interval against a hand computation, the report's pairing and version filter on
hand-made rows, and a --smoke protocol on the tiny model that a second run resumes (skips every row) from."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "paired.py"
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("paired", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interval_by_hand(bench: ModuleType) -> None:
    # diffs 1..6: mean 3.5; SD sqrt(17.5 / 5) = 1.8708; t(0.975, 5 df) = 2.5706 (table);
    # half-width 2.5706 x 1.8708 / sqrt(6) = 1.9633 -> [1.5367, 5.4633]
    ci = bench.paired_interval([1, 2, 3, 4, 5, 6])
    assert ci["n"] == 6 and ci["mean"] == 3.5 and ci["sd"] == pytest.approx(1.8708, abs=1e-4)
    assert ci["low"] == pytest.approx(1.5367, abs=1e-3) and ci["high"] == pytest.approx(5.4633, abs=1e-3)
    assert math.isnan(bench.paired_interval([2.0])["low"])  # one seed: no interval
    # (t(0.975, 5) + t(0.8, 5)) x SD / sqrt(6) = (2.5706 + 0.9195) / 2.4495 = 1.4248 SDs
    assert bench.detectable(1.0, 6) == pytest.approx(1.4248, abs=1e-3)


def row(bench: ModuleType, arm: str, seed: int, value: float, other_versions: bool = False,
        kernels: str = "CPU Some Model, AVX512") -> dict:
    key = {"kind": "run", "task": "smoke", "arm": arm, "arm_spec": f"{arm}=lora", "seed": seed, "steps": 20,
           "trials": 1}
    versions = {**bench.versions(), "torch": "0.0-other"} if other_versions else bench.versions()
    return {"key": key, **key, "metric": "accuracy", "value": value, "trainable_params": 100, "versions": versions,
            "kernels": kernels}


def test_a_rows_kind_of_machine_from_its_field_or_its_older_machine_note(bench: ModuleType) -> None:
    from common.notes import kernels, row_kernels

    assert row_kernels({"kernels": "CPU X, AVX2", "machine_before": "ignored"}) == "CPU X, AVX2"
    notes = {"2-core CPU (Intel(R) Xeon(R) Processor, torch CPU kernels AVX512), no CUDA device, torch 2.13.0+cpu; "
             "load average 1.3 / 1.0 / 0.9 (1/5/15 min)": "CPU Intel(R) Xeon(R) Processor, AVX512",
             "2-core CPU (AMD EPYC), no CUDA device, torch 2.13.0+cpu; load average 2.0 / 2.0 / 2.0 (1/5/15 min)":
                 "CPU AMD EPYC, kernels unrecorded",
             "1 x NVIDIA H100 80GB HBM3 (79 GiB, CUDA 12.8), 16-core CPU (Intel(R) Xeon(R) Platinum 8480+, torch CPU "
             "kernels AVX512); load average 0.1 / 0.1 / 0.1 (1/5/15 min)": "CUDA NVIDIA H100 80GB HBM3",
             "2-core CPU, no GPU, shared with other work; load average 1.4 / 2.5 / 4.1 (1/5/15 min)": "unrecorded"}
    assert {note: row_kernels({"machine_before": note}) for note in notes} == notes
    here = kernels()  # this machine's, in the words its rows are stamped with
    assert row_kernels({"machine_before": bench.machine_note()}) == here and here.startswith(("CPU ", "CUDA "))


def test_the_report_names_each_rows_machine_where_they_differ(bench: ModuleType) -> None:
    args = bench.parse_args(["--smoke", "--seeds", "1", "2", "--arm", "a=lora", "--arm", "b=lora", "--baseline", "a"])
    rows = [row(bench, "a", 1, 0.5), row(bench, "a", 2, 0.6), row(bench, "b", 1, 0.5), row(bench, "b", 2, 0.6)]
    assert "kinds of machine" not in bench.report(rows, args)
    rows[3]["kernels"] = "CPU Other Model, AVX2"
    assert bench.report(rows, args).startswith(
        "rows from several kinds of machine (a seed's ElaLoRA run rounds apart on another kind, 0.2 points lower on "
        "average between two: pair within one kind where you can): CPU Other Model, AVX2: b 2; CPU Some Model, "
        "AVX512: a 1 2, b 1\n")


def test_calibration_lines_by_hand(bench: ModuleType) -> None:
    # one arm over 4 seeds: 65.5, 66.0, 54.0, 60.0 -> mean 61.375, spread 12.0, 3 of 4 at or above 55.0;
    # a second arm whose seeds all clear the floor; rows of both arms interleaved, as a cut-short run writes them
    rows = [{"arm": arm, "seed": seed, "value": value} for arm, seed, value in (
        ("a", 43, 0.655), ("b", 43, 0.70), ("a", 44, 0.66), ("a", 42, 0.54), ("b", 42, 0.71), ("a", 45, 0.60))]
    table = bench.calibration_lines(rows, 0.55)
    assert table[2].startswith("| a | 4 | 61.38 | 54.00 | 66.00 | 12.00 |") and table[2].endswith(
        "| 3 of 4 (floor 55.0) |")
    assert table[3].startswith("| b | 2 | 70.50 | 70.00 | 71.00 | 1.00 | 0.71 |") and "2 of 2" in table[3]


def test_report_pairs_seeds_and_leaves_out_other_versions(bench: ModuleType) -> None:
    args = bench.parse_args(["--smoke", "--seeds", "1", "2", "3", "4", "--arm", "a=lora", "--arm", "b=lora",
                             "--baseline", "a"])
    rows = [row(bench, "a", 1, 0.50), row(bench, "a", 2, 0.60), row(bench, "a", 3, 0.70),
            row(bench, "b", 1, 0.51), row(bench, "b", 2, 0.595), row(bench, "b", 3, 0.725),
            row(bench, "a", 4, 0.0, other_versions=True), row(bench, "b", 4, 1.0)]
    text = bench.report(rows, args)
    assert text.startswith("left out 1 row(s) run under other library versions (")
    # seeds 1-3 paired (seed 4's baseline ran under other versions): diffs +1.0 -0.5 +2.5 points, mean 1.0,
    # SD 1.5, t(0.975, 2 df) = 4.303: 1.0 +- 4.303 x 1.5 / sqrt(3) = [-2.73, +4.73]; detectable at 80% power:
    # (4.3027 + t(0.8, 2 df) = 1.0607) x 1.5 / sqrt(3) = 4.6448
    assert ("| accuracy (points) | b - a | 3 | 61.00 | 60.00 | +1.00 | 1.50 | [-2.73, +4.73] | 4.64 | "
            "+1.00 -0.50 +2.50 |") in text


def study(arm: str, seed: int, points: list[list[float]]) -> dict:
    """A search arm's row as paired.py writes it: its complete trials' (metric, trainable parameters)."""
    return {"arm": arm, "seed": seed, "task": "sst2", "trials": 2, "steps": 8, "pruning": "study",
            "metric": "accuracy", "baseline": 0.5, "points": points,
            "rows": [{"state": "COMPLETE", "accuracy": value, "trainable_params": size} for value, size in points]}


def test_hypervolume_wins_count_only_seeds_every_arm_finished(bench: ModuleType, tmp_path: Path) -> None:
    """A seed whose baseline study has not finished yet (a running verdict) must not count as a win for the arm
    that has one: only seeds with every arm's study are compared."""
    rows = [study(arm, seed, [[value, 1000.0]])
            for arm, seed, value in [("a", 1, 0.8), ("b", 1, 0.7), ("a", 2, 0.6), ("b", 2, 0.9), ("a", 3, 0.9)]]
    lines = bench.search_lines(rows, "b", [1000, 2000, 3000], tmp_path)
    assert next(line for line in lines if line.startswith("Largest")).endswith("a on 1 of 2 seeds, b on 1 of 2 seeds")
    assert (tmp_path / "paired_sst2.png").stat().st_size > 0


def test_no_adapter_under_a_budget_scores_the_floor(bench: ModuleType, tmp_path: Path) -> None:
    """A search that left nothing at <= P loses that budget at the majority class on that seed; dropping the seed
    instead would pair only the seeds where it found a small adapter (the SST-2 verdict's seeds 43 and 44)."""
    rows = [study("a", 1, [[0.8, 1000.0]]), study("b", 1, [[0.7, 1000.0]]),
            study("a", 2, [[0.9, 5000.0]]), study("b", 2, [[0.75, 1000.0]])]
    lines = bench.search_lines(rows, "b", [1000, 5000, 6000], tmp_path)
    small = next(line for line in lines if line.startswith("| best at <= 1,000 "))
    assert "| 2 |" in small and "+10.00 -25.00" in small  # seed 2: the floor 0.5 against 0.75
    assert "1,000: a seed 2" in next(line for line in lines if line.startswith("No complete adapter"))


def test_pools_average_each_seeds_draws_and_unite_their_fronts(bench: ModuleType, tmp_path: Path) -> None:
    """A pool's mean on a seed is the mean over its draws, its union the front of all their trials, each paired
    with the baseline pool's on that seed; a seed where one draw has not finished is left out (its mean would
    average fewer draws). A pool of one arm is that arm."""
    points = {("a", 1): [[0.80, 1000.0]], ("a2", 1): [[0.70, 1000.0]], ("b", 1): [[0.70, 1000.0]],
              ("b2", 1): [[0.60, 1000.0]], ("a", 2): [[0.90, 1000.0]], ("a2", 2): [[0.90, 1000.0], [0.95, 2500.0]],
              ("b", 2): [[0.75, 1000.0]], ("b2", 2): [[0.85, 1000.0]],
              ("a", 3): [[0.90, 1000.0]], ("b", 3): [[0.60, 1000.0]], ("b2", 3): [[0.60, 1000.0]]}  # no a2 on 3
    rows = [study(arm, seed, front) for (arm, seed), front in points.items()]
    lines = bench.search_lines(rows, "b", [1000, 2000, 3000], tmp_path,
                               {"A": ["a", "a2"], "B": ["b", "b2"], "one": ["a"]})
    mean = lines[lines.index(next(line for line in lines if line.startswith("Pooled, the mean"))):]
    union = mean[mean.index(next(line for line in mean if line.startswith("Pooled, the union"))):]
    row = lambda block, label, name: next(x for x in block if x.startswith(f"| {label} | {name} - B |"))
    # mean, seed 1: (80 + 70) / 2 - (70 + 60) / 2 = +10; seed 2: 90 - 80 = +10 (at <= 1,000); at <= 3,000 seed 2:
    # (90 + 95) / 2 - 80 = +12.5
    assert row(mean, "best at <= 1,000 (points)", "A").endswith("| 2 | 82.50 | 72.50 | +10.00 | 0.00 | [+10.00, "
                                                                 "+10.00] | 0.00 | +10.00 +10.00 |")
    assert row(mean, "best at <= 3,000 (points)", "A").endswith("+10.00 +12.50 |")
    # union, seed 1: max(80, 70) - max(70, 60) = +10; seed 2 at <= 1,000: 90 - 85 = +5, at <= 3,000: 95 - 85 = +10
    assert row(union, "best at <= 1,000 (points)", "A").endswith("+10.00 +5.00 |")
    assert row(union, "best at <= 3,000 (points)", "A").endswith("+10.00 +10.00 |")
    # the one-arm pool: a's own values against B's on seeds 1-3 (seed 3 has no a2, which `one` does not need):
    # 80 - 65, 90 - 80, 90 - 60 (mean); 80 - 70, 90 - 85, 90 - 60 (union)
    assert row(mean, "best at <= 1,000 (points)", "one").endswith("+15.00 +10.00 +30.00 |")
    assert row(union, "best at <= 1,000 (points)", "one").endswith("+10.00 +5.00 +30.00 |")
    # seed 1: A's union front is a's alone (a2's 70 at the same size is dominated): a tie that counts for both
    assert next(x for x in union if x.startswith("Largest union")).endswith(
        "A on 2 of 2 seeds, B on 0 of 2 seeds, one on 1 of 2 seeds")


@pytest.mark.parametrize("pool", ["A=", "A=a+", "a=a+a2", "A=a+c", "A=a+a2 --pool B=a2+b", "A=a+a2"])
def test_bad_pools_exit_before_any_work(bench: ModuleType, pool: str, capsys: pytest.CaptureFixture) -> None:
    """No or an empty member, a name taken by an arm, an unknown arm, the baseline in two pools or in none: a usage
    error before any study runs."""
    argv = ["--smoke", "--seeds", "1", "2", "--search-arm", "a=lora", "--search-arm", "a2=lora,draw=1",
            "--search-arm", "b=lora", "--baseline", "b" if pool != "A=a+a2 --pool B=a2+b" else "a2"]
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args([*argv, *(f"--pool {pool}".split())])
    assert exit_info.value.code == 2 and "pool" in capsys.readouterr().err


def trial(number: int, params: dict, value: float | None, size: int, steps: int) -> dict:
    """One trial of a study row as paired.py writes it (value None: pruned)."""
    return {"number": number, "state": "PRUNED" if value is None else "COMPLETE", "accuracy": value,
            "trainable_params": size, "steps_done": steps, "params": params}


def test_same_configurations_pair_trial_by_trial(bench: ModuleType) -> None:
    """Trials pair by their drawn parameters on the names both have (the arm's one-choice extra is ignored), not by
    trial number: the baseline's draws may be shifted by a failed trial. A configuration only one arm drew is
    left out; one complete in one arm only is counted, not paired."""
    a, b, c = {"r": 2, "lr": 1e-3}, {"r": 4, "lr": 5e-4}, {"r": 8, "lr": 2e-4}
    two = {"rows": [trial(0, {**a, "x": 0.5}, 0.82, 900, 450), trial(1, {**b, "x": 0.5}, 0.80, 1800, 450),
                    trial(2, {**c, "x": 0.5}, None, 3600, 250)]}
    failed = {**trial(0, a, None, 1000, 0), "state": "FAIL"}  # an error, re-run as trial 1: pairs with nothing
    one = {"rows": [failed, trial(1, a, 0.81, 1000, 300),
                    trial(2, b, 0.805, 2000, 300), trial(3, c, 0.7, 3000, 300)]}
    lora = {"rows": [trial(0, {"r": 2, "dropout": 0.05}, 0.79, 500, 300)]}  # names not nested: never a pair
    rows = [{**study("two", 1, []), **two}, {**study("one", 1, []), **one}, {**study("lora", 1, []), **lora}]
    lines = bench.same_config_lines(rows, "one")
    # pairs: +1.0 and -0.5 points, mean +0.25; ratios 0.9 and 0.9; c is complete in `one` only
    summary = next(line for line in lines if line.startswith("Same configurations"))
    assert summary.startswith("Same configurations, two vs one: 3 configurations drawn by both, 2 complete in both "
                              "(complete in two only 0, in one only 1); accuracy +0.25 points [")
    assert "median 0.90x; optimizer steps of all these trials 1,150 / 900" in summary
    assert "| 1 | 0 / 1 | 82.0 at 900 | 81.0 at 1,000 | +1.0 |" in lines
    assert "| 1 | 1 / 2 | 80.0 at 1,800 | 80.5 at 2,000 | -0.5 |" in lines
    assert not any("lora" in line for line in lines)


def test_search_arm_options_reach_the_study_settings(bench: ModuleType, tmp_path: Path) -> None:
    args = bench.parse_args(["--smoke", "--seeds", "1", "2", "--search-arm", "g=elalora,sampler=gp,startup=4",
                             "--baseline", "g", "--workdir", str(tmp_path)])
    assert args.plots == tmp_path / "plots"  # the fronts' figure goes with the rest of --workdir unless --plots
    settings = bench.study_settings(args, "elalora", 1, "g-1", bench.search_options(["sampler=gp", "startup=4"]))
    assert (settings.sampler, settings.startup_trials, settings.space) == ("gp", 4, "elalora")
    shipped = bench.study_settings(args, "elalora", 1, "s-1")
    assert (shipped.sampler, shipped.startup_trials) == ("tpe", 10)
    # draw=N: the same search with sampler seed 1000 N + seed; every trial's training seed stays the seed
    drawn = bench.study_settings(args, "elalora", 5, "d-5", bench.search_options(["draw=2"]))
    assert (drawn.seed, drawn.sampler_seed, shipped.sampler_seed) == (5, 2005, None)
    for bad in ("startup=four", "sampler", "sampler=cmaes", "lr=1e-3", "draw=0", "draw=-1"):  # refused before work
        with pytest.raises(SystemExit, match="a search arm's options are space=YAML"):
            bench.parse_args(["--smoke", "--search-arm", f"g=elalora,{bad}", "--baseline", "g"])


@pytest.mark.parametrize("trials_of", ["x=24", "g=0", "g=two", "g"])
def test_bad_trials_of_exit_before_any_work(bench: ModuleType, trials_of: str,
                                            capsys: pytest.CaptureFixture) -> None:
    """--trials-of names one of the search arms and a whole number of trials >= 1, or the command stops."""
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--smoke", "--seeds", "1", "2", "--search-arm", "g=lora", "--baseline", "g",
                          "--trials-of", trials_of])
    assert exit_info.value.code == 2 and "--trials-of is NAME=N" in capsys.readouterr().err


def smoke(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--seeds", "1", "2", "--steps", "8", "--trials", "2",
         "--arm", "a=lora", "--arm", "b=lora,learning_rate=2e-3", "--search-arm", "s=lora", "--search-arm",
         "t=elalora", "--trials-of", "t=3", "--baseline", "a", "--baseline", "s",
         "--results", str(tmp_path / "rows.jsonl"), "--workdir", str(tmp_path / "work"), "--plots", str(tmp_path / "plots")],
        capture_output=True, text=True, env=ENV, timeout=900)


@pytest.mark.slow
def test_smoke_protocol_then_resume(tmp_path: Path) -> None:
    first = smoke(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "A new study created" not in first.stderr  # library lines go to the workdir's log, as under `search`
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert sorted((r["kind"], r["arm"], r["seed"]) for r in rows) == sorted(
        (kind, arm, seed) for kind, arm in (("run", "a"), ("run", "b"), ("study", "s"), ("study", "t"))
        for seed in (1, 2))
    assert all(r["versions"]["torch"] and r["commit"] and r["kernels"].startswith(("CPU ", "CUDA ")) for r in rows)
    assert all(len(r["points"]) >= 1 for r in rows if r["kind"] == "study")
    # search arms run the study file's own pruning (the shipped search) and say so in their key; every trial is kept
    assert {r["key"]["pruning"] for r in rows if r["kind"] == "study"} == {"study"}
    # --trials-of: t's studies ran 3 trials, s's the --trials 2, and the report pairs them seed by seed (below)
    assert {(r["arm"], r["key"]["trials"], len(r["rows"])) for r in rows if r["kind"] == "study"} == {
        ("s", 2, 2), ("t", 3, 3)} and all(r["steps_total"] > 0 for r in rows if r["kind"] == "study")
    assert f"Fronts of every arm and seed: {tmp_path / 'plots' / 'paired_smoke.png'}" in first.stdout
    assert (tmp_path / "plots" / "paired_smoke.png").stat().st_size > 0
    assert "| accuracy (points) | b - a | 2 |" in first.stdout and "| HV (x100) | t - s | 2 |" in first.stdout

    second = smoke(tmp_path)  # everything is there: nothing re-runs, the same report
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skip ") == 8 and len((tmp_path / "rows.jsonl").read_text().splitlines()) == 8
    assert second.stdout.split("**Runs")[1] == first.stdout.split("**Runs")[1]
