"""MlflowTracker fed with real events from a real Optuna study into a real SQLite MLflow store."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from elalora_auto.events import Event, emit, with_context
from elalora_auto.records import Ending, RoundRecord
from elalora_auto.spec import TrialResult
from elalora_auto.tracking import MlflowTracker

optuna.logging.set_verbosity(optuna.logging.WARNING)
NAMES = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]


def _run_trial(tracker: MlflowTracker, study: optuna.Study, workdir: Path, outcome: str) -> optuna.trial.FrozenTrial:
    """Drive one trial through the event contract, the way search + run_trial emit it."""
    trial = study.ask()
    r = trial.suggest_int("r_init", 2, 8)
    lr = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    name = study.study_name
    listeners = with_context([tracker], trial_number=trial.number, study_name=name)
    spec = {"task": "sst2", "model": "tiny", "method": "elalora", "params": {"r_init": r},
            "training": {"learning_rate": lr, "seed": 42, "max_steps": 20}}
    ranks = {n: r for n in NAMES}
    emit(listeners, Event("trial_start", 0, {"spec": spec, "trainable_params": 100 * r, "rank_map": ranks}))
    for step in range(1, 21):
        emit(listeners, Event("train_step", step, {"loss": 1.0 / step, "lr": lr, "total_rank": sum(ranks.values()),
                                                  "trainable_params": 100 * r}))
        if step == 10:
            ranks = {**ranks, NAMES[0]: r + 1, NAMES[1]: r - 1}
            record = RoundRecord(step, sum(ranks.values()), pruned=((NAMES[1], 1),), grown=((NAMES[0], 1),))
            emit(listeners, Event("round", step, {"record": record, "rank_map": ranks}))
    accuracy = 0.5 + r / 20
    emit(listeners, Event("eval", 20, {"metrics": {"accuracy": accuracy}, "primary": accuracy}))
    out = workdir / "trials" / name / str(trial.number)
    reason = None
    if outcome == "COMPLETE":
        result = TrialResult(metrics={"accuracy": accuracy}, primary=accuracy, primary_metric="accuracy",
                             trainable_params=100 * r, rank_map=ranks, rank_history=[], eval_history=[],
                             train_loss_history=[], wall_time_s=1.0, setup_time_s=0.0, train_time_s=1.0,
                             eval_time_s=0.0, examples_per_s=10.0, steps=20, steps_done=20)
        emit(listeners, Event("trial_end", 20, {"result": result, "output_dir": str(out)}))
        (out / "adapter").mkdir(parents=True)
        (out / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        values = [accuracy, 100 * r]
        study.tell(trial, values)
    else:  # stopped before its ending was written (a killed process): the tracker has only the events it saw
        values, result = None, None
        reason = "median rule at step 10" if outcome == "PRUNED" else "NonFiniteLossError: loss nan at step 3"
        study.tell(trial, state=getattr(optuna.trial.TrialState, "FAIL" if outcome == "FAIL" else outcome))
    frozen = study.trials[trial.number]
    emit([tracker], Event("trial_finished", 0, {
        "study": study, "study_name": name, "trial_number": trial.number, "state": Ending[frozen.state.name],
        "reason": reason, "params": frozen.params, "values": values, "result": result, "output_dir": str(out),
        "origin": "default (authors' configuration)" if trial.number == 0 else None}))
    return frozen


def _children(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], "tags.`elalora.role` = 'trial'")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One study of five trials (3 complete, 1 pruned, 1 failed), tracked from study_start to study_end."""
    workdir = tmp_path_factory.mktemp("work")
    tracker = MlflowTracker(workdir=workdir)
    study = optuna.create_study(study_name="s1", directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("settings", {"task": "sst2", "method": "elalora", "trials": 5})
    tracker(Event("study_start", 0, {"study": study, "study_name": "s1", "storage": "memory",
                                     "settings": {"task": "sst2", "trials": 5}}))
    trials = [_run_trial(tracker, study, workdir, outcome)
              for outcome in ("COMPLETE", "PRUNED", "COMPLETE", "FAIL", "COMPLETE")]
    tracker(Event("study_end", 0, {"study": study, "study_name": "s1"}))
    return workdir, tracker, study, trials


def test_every_trial_has_one_run_with_its_state_values_and_reason(tracked):
    workdir, tracker, study, trials = tracked
    assert (workdir / "mlflow.db").is_file()
    runs = {int(run.data.tags["elalora.trial"]): run for run in _children(tracker.client, "s1")}
    assert sorted(runs) == [t.number for t in trials]
    parent = tracker.study_runs("s1").parent_run_id
    for trial in trials:
        run = runs[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[trial.state.name]
        assert run.data.tags["elalora.state"] == trial.state.name
        assert run.data.tags.get("elalora.origin") == ("default (authors' configuration)" if trial.number == 0 else None)
        assert run.data.params["params.r_init"] == str(trial.params["r_init"])
        assert run.data.params["task"] == "sst2" and run.data.params["seed"] == "42"
        if trial.state.name == "COMPLETE":
            assert [run.data.metrics["objective_0"], run.data.metrics["objective_1"]] == pytest.approx(trial.values)
            assert run.data.metrics["final_primary"] == pytest.approx(trial.values[0])
        else:
            assert "elalora.reason" in run.data.tags
    history = tracker.client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, 21))


def test_every_trial_state_carries_its_rank_artifacts_and_size(tracked):
    workdir, tracker, study, trials = tracked
    runs = {int(run.data.tags["elalora.trial"]): run for run in _children(tracker.client, "s1")}
    front = {t.number for t in study.best_trials}
    for trial in trials:  # complete, pruned and failed alike
        run = runs[trial.number]
        paths = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "ranks")}
        assert paths == {"ranks/rank_map.json", "ranks/rank_heatmap.png", "ranks/rank_evolution.png",
                         "ranks/rank_rounds.csv"}, trial.state
        assert int(run.data.params["trainable_params"]) == 100 * trial.params["r_init"]
        adapter = tracker.client.list_artifacts(run.info.run_id, "adapter")
        # A trial's adapter is logged when it is on the front at the time it finishes.
        if trial.number in front:
            assert [a.path for a in adapter] == ["adapter/adapter_config.json"]
    artifacts = Path(tracker.client.get_run(runs[1].info.run_id).info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(workdir / "mlartifacts")
    assert json.loads((artifacts / "ranks" / "rank_map.json").read_text())[NAMES[0]] == trials[1].params["r_init"] + 1


def test_parent_run_has_study_plots_steps_by_trial_and_a_final_state(tracked):
    workdir, tracker, study, trials = tracked
    parent = tracker.client.get_run(tracker.study_runs("s1").parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["elalora.outcome"].startswith("complete")
    assert parent.data.params["study.task"] == "sst2"
    names = {a.path for a in tracker.client.list_artifacts(parent.info.run_id)}
    assert names == {"pareto_front.png", "trials.csv", "study_plots.html"}
    metrics = parent.data.metrics
    assert metrics["trials_complete"] == 3 and metrics["trials_running"] == 0
    assert metrics["pareto_size"] == len(study.best_trials)
    history = tracker.client.get_metric_history(parent.info.run_id, "trial_trainable_params")
    assert sorted(m.step for m in history) == [t.number for t in trials]
    page = (Path(parent.info.artifact_uri.removeprefix("file://")) / "study_plots.html").read_text()
    assert page.count('class="plotly-graph-div"') >= 2
    assert 'src="plotly' not in page and page.count("plotly.js v") == 1  # the bundle inlined exactly once
    experiment = tracker.client.get_experiment_by_name("s1")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "pareto_front.png" in experiment.tags["mlflow.note.content"]


def test_a_trial_left_running_by_a_dead_process_is_reconciled_on_the_next_start(tmp_path):
    study = optuna.create_study(study_name="s2", sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("settings", {"trials": 3})
    first = MlflowTracker(workdir=tmp_path)
    first(Event("study_start", 0, {"study": study, "study_name": "s2", "storage": "memory", "settings": {}}))
    asked = [study.ask() for _ in range(2)]  # two trials start; their process dies before either finishes
    for trial in asked:
        first(Event("trial_start", 0, {"study_name": "s2", "trial_number": trial.number,
                                       "spec": {"task": "sst2", "training": {"seed": 1}}, "trainable_params": 40,
                                       "rank_map": {NAMES[0]: 4}}))
    assert first.flush()
    asked[0].set_user_attr("fail_reason", "interrupted (Ctrl-C)")  # what Ctrl-C leaves in Optuna
    study.tell(asked[0], state=optuna.trial.TrialState.FAIL)
    again = MlflowTracker(workdir=tmp_path)
    again(Event("study_start", 0, {"study": study, "study_name": "s2", "storage": "memory", "settings": {}}))
    assert again.flush()
    runs = {int(r.data.tags["elalora.trial"]): r for r in _children(again.client, "s2")}
    assert runs[0].info.status == "KILLED" and runs[0].data.tags["elalora.reason"] == "interrupted (Ctrl-C)"
    assert runs[1].info.status == "RUNNING"  # Optuna still runs it (another worker, as far as we know)
    again(Event("study_end", 0, {"study": study, "study_name": "s2"}))
    parent = again.client.get_run(again.study_runs("s2").parent_run_id)
    assert parent.info.status == "RUNNING"  # trial 1 is still running somewhere
    study.tell(asked[1], state=optuna.trial.TrialState.FAIL)  # its worker died: no reason recorded
    again(Event("study_end", 0, {"study": study, "study_name": "s2"}))
    parent = again.client.get_run(again.study_runs("s2").parent_run_id)
    assert parent.info.status == "KILLED" and "stopped at 1 of 3" in parent.data.tags["elalora.outcome"]
    assert again.client.get_run(runs[1].info.run_id).info.status == "KILLED"


def test_resuming_reuses_the_parent_and_child_runs(tracked):
    workdir, tracker, study, trials = tracked
    again = MlflowTracker(workdir=workdir)  # a new process attaching to the same store
    again(Event("study_start", 0, {"study": study, "study_name": "s1", "storage": "memory", "settings": {}}))
    done = trials[0]
    again(Event("trial_finished", 0, {"study": study, "study_name": "s1", "trial_number": done.number,
                                      "state": Ending[done.state.name], "reason": None, "params": done.params,
                                      "values": done.values, "result": None, "output_dir": None}))
    assert again.study_runs("s1").parent_run_id == tracker.study_runs("s1").parent_run_id
    numbers = [int(run.data.tags["elalora.trial"]) for run in _children(tracker.client, "s1")]
    assert sorted(numbers) == [t.number for t in trials]
    experiment = tracker.client.get_experiment_by_name("s1")
    assert len(tracker.client.search_runs([experiment.experiment_id], "tags.`elalora.role` = 'parent'")) == 1


def test_trial_runs_sort_by_name_in_trial_order_and_old_names_are_renamed(tmp_path):
    """MLflow's sort by run name (the `ui` link's view) is text order: trial-0002 before trial-0010, where
    trial-10 came before trial-2. A run named before the padding is renamed when its trial is next touched."""
    tracker = MlflowTracker(workdir=tmp_path)
    for number in (10, 2, 1):
        tracker.trial_run_id("names", number)
    runs = tracker.study_runs("names")
    old = tracker.client.search_runs([runs.experiment_id], "tags.`elalora.trial` = '1'")[0].info.run_id
    tracker.client.update_run(old, name="trial-1")
    assert tracker.trial_run_id("names", 1) == old and tracker.client.get_run(old).info.run_name == "trial-0001"
    ordered = tracker.client.search_runs([runs.experiment_id], "tags.`elalora.role` = 'trial'",
                                         order_by=["attributes.run_name ASC"])
    assert [run.info.run_name for run in ordered] == ["trial-0001", "trial-0002", "trial-0010"]


def test_concurrent_workers_agree_on_one_parent(tracked):
    workdir = tracked[0]
    trackers = [MlflowTracker(workdir=workdir) for _ in range(3)]
    threads = [threading.Thread(target=t.study_runs, args=("race",)) for t in trackers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({t.study_runs("race").parent_run_id for t in trackers}) == 1
    experiment = trackers[0].client.get_experiment_by_name("race")
    assert len(trackers[0].client.search_runs([experiment.experiment_id], "tags.`elalora.role` = 'parent'")) == 1


def test_a_store_that_cannot_open_keeps_the_events_and_never_reaches_the_trial(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    tracker = MlflowTracker(tracking_uri=f"sqlite:///{blocker}/mlflow.db", workdir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="elalora_auto.tracking"):
        tracker(Event("trial_start", 0, {"study_name": "x", "trial_number": 0, "spec": {}}))
        assert not tracker.flush(timeout_s=60)
    assert "the MLflow store is not answering" in caplog.text
    spooled = [json.loads(line) for line in tracker.spool.path.read_text().splitlines()]
    assert [r["kind"] for r in spooled] == ["trial_start"]
