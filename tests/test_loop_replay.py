"""bench/loop_replay.py on the tiny model: the project's loop replays a transformers.Trainer run loss for loss
(an evaluation and an epoch's end inside the run, so their random draws are replayed too), and a planted
difference in either the settings or the random stream makes the check fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "loop_replay.py"
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT)}


def replay(workdir: Path, steps: int, *extra: str) -> tuple[int, list[str]]:
    """(exit code, printed lines) of a replay on the demo's tiny BERT, with an evaluation every 20 steps."""
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--steps", str(steps), "--eval-every", "20",
                          "--workdir", str(workdir), *extra], capture_output=True, text=True, env=ENV, timeout=600)
    return run.returncode, run.stdout.strip().splitlines()


@pytest.mark.slow
def test_replay_matches_every_loss(tmp_path: Path) -> None:
    code, lines = replay(tmp_path, 56)  # past the 800-row set's epoch end (50 batches of 16)
    assert code == 0, lines
    assert lines[-1] == "largest difference: 0.000e+00"
    assert "steps: Trainer 56, loop 56" in lines[-3]


@pytest.mark.slow
@pytest.mark.parametrize("plant", ["learning_rate=6e-4", "training.trainer_rng=false"])
def test_planted_difference_fails(tmp_path: Path, plant: str) -> None:
    code, lines = replay(tmp_path, 24, "--plant", plant)
    assert code == 1, lines
    worst = float(lines[-1].removeprefix("largest difference: "))
    assert worst > 1e-6 and lines[0].startswith("first step over 1e-06:")
