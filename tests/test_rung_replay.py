"""bench/rung_replay.py: the replay applies the search's own rung and baseline rules in study order."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_replay():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("rung_replay", ROOT / "bench" / "rung_replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.replay


def test_replay_stops_what_the_rules_stop() -> None:
    replay = load_replay()
    curves = [
        ({50: 0.70, 100: 0.80}, 0.85, 100.0),  # first at the rung: goes on
        ({50: 0.60, 100: 0.70}, 0.80, 200.0),  # worse and larger at step 50: dominated, only the best 1 of 2 go on
        ({50: 0.51, 100: 0.51}, 0.51, 50.0),   # smallest, so on the front at step 50; then stuck at the baseline
        ({50: 0.75, 100: 0.82}, 0.86, 100.0),  # dominates the first: goes on
    ]
    steps, complete = replay(curves, total=150, rungs=[50], reduction_factor=2, baseline=0.5, margin=0.02,
                             patience=2)
    assert steps == 150 + 50 + 100 + 150
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
