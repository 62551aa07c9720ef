"""The one study reader: rows from values and constraints alike, so status, report and export agree."""

from __future__ import annotations

import optuna
import pytest

from elalora_auto.errors import UserError
from elalora_auto.export import pick_trial
from elalora_auto.results import front, knee_row, study_rows, summary_table

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _capped_study() -> optuna.Study:
    """Single objective with --max-params 1000: trial 1 has the best metric but breaks the cap."""
    study = optuna.create_study(study_name="capped", direction="maximize")
    study.set_metric_names(["accuracy"])
    study.set_user_attr("settings", {"task": "sst2", "method": "elalora", "baseline": 0.5})
    for metric, size in ((0.80, 500), (0.95, 5000), (0.85, 900), (0.70, 800)):
        trial = study.ask()
        trial.set_user_attr("trainable_params", size)
        trial.set_user_attr("rank_summary", {"min": 2, "mean": 3.0, "max": 4, "total": 12})
        trial.set_constraint("max_params", size - 1000)
        study.tell(trial, metric)
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    return study


def test_the_front_applies_constraints_and_every_reader_agrees() -> None:
    study = _capped_study()
    rows = study_rows(study)
    assert [r["number"] for r in front(rows)] == [0, 2]  # trial 1 is infeasible, trial 3 dominated
    assert not rows[1]["feasible"] and not rows[1]["on_front"]
    assert knee_row(rows)["number"] in (0, 2)
    table = summary_table(study, rows)
    assert "5 trials (COMPLETE: 4, FAIL: 1)" in table and "hypervolume" in table
    body = [line for line in table.splitlines()[3:] if not line.startswith("hypervolume")]
    assert [int(line[1:7]) for line in body] == [0, 2]
    assert pick_trial(rows)["number"] == 2  # the best feasible trial, not the capped-out 0.95
    with pytest.raises(UserError, match="breaks the study's constraint"):
        pick_trial(rows, trial=1)


def test_an_empty_study_says_so() -> None:
    study = optuna.create_study(study_name="empty", directions=["maximize", "minimize"])
    assert summary_table(study).endswith("no complete trial yet")
