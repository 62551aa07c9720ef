"""The one study reader: rows from values and constraints alike, so status, report and export agree."""

from __future__ import annotations

import optuna
import pytest

from elalora_auto.errors import UserError
from elalora_auto.export import pick_trial
from elalora_auto.records import Ending
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
    assert [r.number for r in front(rows)] == [0, 2]  # trial 1 is infeasible, trial 3 dominated
    assert not rows[1].feasible and not rows[1].on_front
    assert knee_row(rows).number == 2  # a two-point front has no bend: the best metric is the knee
    table = summary_table(study, rows)
    assert "5 trials (COMPLETE: 4, FAIL: 1)" in table and "hypervolume" in table
    body = [line for line in table.splitlines()[3:] if not line.startswith("hypervolume")]
    assert [int(line[1:7]) for line in body] == [0, 2]
    assert pick_trial(rows).number == 2  # the best feasible trial, not the capped-out 0.95
    with pytest.raises(UserError, match="breaks the study's constraint"):
        pick_trial(rows, trial=1)


def test_an_empty_study_says_so() -> None:
    study = optuna.create_study(study_name="empty", directions=["maximize", "minimize"])
    assert summary_table(study).endswith("no complete trial yet")


def _ended(folder, state: str, size: int, t_init_steps: int) -> None:
    """A trial folder as run_trial writes it for `state` (no adapter: none is needed to read a study)."""
    from elalora_auto.spec import TrialResult, TrialSpec
    from elalora_auto.trial_output import write_trial_output

    spec = TrialSpec(task="sst2", model="m", method="elalora", params={"t_init": t_init_steps, "r_init": 4})
    result = TrialResult(
        metrics={"accuracy": 0.6}, primary=0.6, primary_metric="accuracy", trainable_params=size,
        rank_map={"bert.encoder.layer.0.attention.self.query": 3, "bert.encoder.layer.1.attention.self.query": 5},
        rank_history=[], eval_history=[], train_loss_history=[], wall_time_s=1.0, setup_time_s=0.1,
        train_time_s=0.8, eval_time_s=0.1, examples_per_s=100.0, steps=150, steps_done=60,
        intermediate_values={30: 0.55, 60: 0.6}, device="cpu", state=Ending[state],
        reason=None if state == "COMPLETE" else "below the median at step 60")
    write_trial_output(folder, spec, result, None)


def test_pruned_trials_keep_what_they_reached_and_schedules_read_in_steps(tmp_path) -> None:
    from elalora_auto.results import csv_row, params_line

    study = optuna.create_study(study_name="p", directions=["maximize", "minimize"])
    study.set_user_attr("settings", {"task": "sst2", "method": "elalora"})
    for number, (t_init, state) in enumerate(((0.08, "COMPLETE"), (0.1, "PRUNED"))):
        study.enqueue_trial({"t_init": t_init})
        trial = study.ask()
        trial.suggest_float("t_init", 0.02, 0.3)
        _ended(tmp_path / str(number), state, 1000 * (number + 1), round(t_init * 150))
        if state == "COMPLETE":
            study.tell(trial, [0.6, 1000])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    done, pruned = study_rows(study, tmp_path)
    assert pruned.state.name == "PRUNED" and pruned.trainable_params == 2000  # from its folder: no values
    assert pruned.reached.rank_summary["total"] == 8 and pruned.reached.intermediate_values == {30: 0.55, 60: 0.6}
    assert pruned.reached.reason == "below the median at step 60" and pruned.reached.steps_done == 60
    assert done.schedule_steps == {"t_init": 12} and pruned.schedule_steps == {"t_init": 15}
    assert params_line(done.params, steps=done.schedule_steps) == "t_init=12 (fraction 0.08)"
    flat = csv_row(pruned)
    assert flat["t_init"] == 15 and flat["t_init_fraction"] == 0.1 and flat["ranks_total"] == 8
    assert summary_table(study, [done, pruned]).endswith(
        "ran on cpu: 2 trials, median 100 examples/s, peak memory not measured on CPU")
