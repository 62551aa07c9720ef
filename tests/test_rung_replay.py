"""bench/rung_replay.py: the replay applies the search's own rung and baseline rules in study order."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_module() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("rung_replay", ROOT / "bench" / "rung_replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_replay():
    return load_module().replay


@pytest.mark.parametrize("ties", ["keep", "hypervolume", "adaptive"])
def test_replay_stops_what_the_rules_stop(ties: str) -> None:
    replay = load_replay()
    curves = [
        ({50: 0.70, 100: 0.80}, 0.85, 100.0),  # first at the rung: goes on
        ({50: 0.60, 100: 0.70}, 0.80, 200.0),  # worse and larger at step 50: dominated, only the best 1 of 2 go on
        # smallest, so on the front at step 50 with the first trial, 1 place for 2: "keep" lets both go on (then
        # the baseline rule stops it at step 100); split by hypervolume contribution it adds 0.01 x 50, the first
        # trial 0.19 x 120, so it stops at the rung; "adaptive" keeps like "keep" (3 trials at the rung, it splits
        # from SPLIT_FROM x 2 = 6)
        ({50: 0.51, 100: 0.51}, 0.51, 50.0),
        ({50: 0.75, 100: 0.82}, 0.86, 100.0),  # dominates the first: goes on
    ]
    steps, complete = replay(curves, total=150, rungs=[50], reduction_factor=2, baseline=0.5, margin=0.02,
                             patience=2, ties=ties)
    assert steps == 150 + 50 + (50 if ties == "hypervolume" else 100) + 150
    assert complete == [(0.85, 100.0), (0.86, 100.0)]


def test_best_so_far_judges_a_dipping_curve_by_its_best_evaluation() -> None:
    replay = load_replay()
    curves = [
        ({50: 0.60, 100: 0.70}, 0.80, 100.0),
        ({50: 0.75, 100: 0.65}, 0.84, 100.0),  # dips at the rung (step 100): 0.65 is dominated, its best 0.75 is not
    ]
    args = dict(total=150, rungs=[100], reduction_factor=2, baseline=0.5, margin=0.02, patience=2)
    assert replay(curves, **args)[1] == [(0.80, 100.0)]
    assert replay(curves, **args, best_so_far=True)[1] == [(0.80, 100.0), (0.84, 100.0)]


def test_median_replay_stops_a_trial_below_the_median_of_no_larger_complete_trials() -> None:
    from elalora_auto.search.settings import PruningSettings

    replay_median = load_module().replay_median
    peers = [({50: 0.70, 100: 0.80}, 0.85, 100.0), ({50: 0.72, 100: 0.82}, 0.86, 100.0),
             ({50: 0.74, 100: 0.84}, 0.87, 100.0)]
    curves = peers + [
        ({50: 0.60, 100: 0.70}, 0.75, 100.0),  # below the median 0.82 of 3 peers at step 100: stops there
        ({50: 0.60, 100: 0.70}, 0.75, 50.0),  # the same curve, smaller than every peer: nothing to compare, goes on
    ]
    args = dict(total=150, baseline=0.5, margin=0.02, settings=PruningSettings(rule="median"))
    steps, complete = replay_median(curves, every=50, **args)
    assert steps == 3 * 150 + 100 + 150
    assert complete == [(0.85, 100.0), (0.86, 100.0), (0.87, 100.0), (0.75, 50.0)]
    # evaluated every 100 steps, the step-100 evaluation is the trial's first, inside the warm-up: nothing stops
    assert replay_median(curves, every=100, **args)[0] == 5 * 150


def study(arm: str, rows: list[dict]) -> dict:
    return {"config": "sst2-minilm", "arm": arm, "seed": 42, "trials": len(rows), "total_steps": 150,
            "baseline": 0.5, "rows": rows}


def test_results_file_gives_the_unpruned_curves_in_trial_order(tmp_path: Path) -> None:
    module = load_module()
    rows = [{"number": 1, "state": "COMPLETE", "metric": 0.8, "trainable_params": 200.0,
             "curve": {"50": 0.6, "100": 0.7, "150": 0.8}},
            {"number": 0, "state": "COMPLETE", "metric": 0.85, "trainable_params": 100.0,
             "curve": {"50": 0.7, "100": 0.8, "150": 0.85}},
            {"number": 2, "state": "FAIL", "metric": None, "trainable_params": None, "curve": {}}]
    results = tmp_path / "mf.jsonl"
    results.write_text(json.dumps(study("halving", rows[:1])) + "\n" + json.dumps(study("unpruned", rows)) + "\n")
    studies = module.results_curves(results)
    assert list(studies) == ["mf-sst2-minilm-unpruned-t3-s42"]
    curves, total, baseline = studies["mf-sst2-minilm-unpruned-t3-s42"]
    assert (total, baseline) == (150, 0.5)
    assert curves == [({50: 0.7, 100: 0.8, 150: 0.85}, 0.85, 100.0), ({50: 0.6, 100: 0.7, 150: 0.8}, 0.8, 200.0)]


def test_results_rows_without_curves_name_the_journal_instead(tmp_path: Path) -> None:
    module = load_module()
    results = tmp_path / "mf.jsonl"
    results.write_text(json.dumps(study("unpruned", [{"number": 0, "state": "COMPLETE", "metric": 0.8,
                                                      "trainable_params": 1.0}])) + "\n")
    with pytest.raises(SystemExit, match="--journal"):
        module.results_curves(results)
