"""The typed trial outcome round-trips through every plain form it is stored in (result.json, the tracker's spool,
trials.csv), and files written by older versions of the tool still load: studies resume across versions."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from elalora_auto.events import Event
from elalora_auto.records import Ending, RankPoint, RoundRecord, StudyRow, TrialSummary
from elalora_auto.search.attrs import summary_of_result, summary_of_trial
from elalora_auto.spec import TrialResult
from elalora_auto.tracking.payload import from_record, to_record
from elalora_auto.trial_output import read_result

Q, V = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"
ELALORA_ROUND = {"round": 1, "step": 6, "b": 2, "moved": 1, "cut": 0, "pool_size": 4, "pool_short": True,
                 "pruned": [[Q, 1]], "grown": [[V, 1]], "total_rank": 8, "adapter_params": 1200}


def _result(state: Ending = Ending.PRUNED) -> TrialResult:
    return TrialResult(
        metrics={"accuracy": 0.7}, primary=0.7, primary_metric="accuracy", trainable_params=1200,
        rank_map={Q: 3, V: 5}, rank_history=[RoundRecord.from_dict(ELALORA_ROUND),
                                             RoundRecord(step=9, total_rank=8, changed={Q: (4, 3), V: (4, 5)})],
        eval_history=[{"step": 6, "metrics": {"accuracy": 0.7}}], train_loss_history=[{"step": 6, "loss": 0.4}],
        wall_time_s=2.0, setup_time_s=0.5, train_time_s=1.2, eval_time_s=0.3, examples_per_s=80.0, steps=12,
        steps_done=9, intermediate_values={6: 0.7}, rank_evolution=[RankPoint(0, {Q: 4, V: 4}), RankPoint(6, {Q: 3, V: 5})],
        device="cpu", state=state, reason="below the median at step 6")


def test_a_result_round_trips_through_json_and_keeps_its_types() -> None:
    result = _result()
    back = TrialResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back == result
    assert back.state is Ending.PRUNED and isinstance(back.rank_history[0], RoundRecord)
    assert back.rank_history[0].pruned == ((Q, 1),) and back.rank_history[1].changed == {Q: (4, 3), V: (4, 5)}
    assert back.rank_evolution[1] == RankPoint(6, {Q: 3, V: 5}) and back.intermediate_values == {6: 0.7}
    assert back.rank_points()[-1] == (9, {Q: 3, V: 5})  # extended to the last step taken


def test_a_round_record_keeps_the_shape_its_method_gave_it() -> None:
    assert RoundRecord.from_dict(ELALORA_ROUND).to_dict() == ELALORA_ROUND
    peft = {"step": 4, "total_rank": 7, "changed": {Q: [4, 3]}}
    assert RoundRecord.from_dict(peft).to_dict() == peft
    with pytest.raises(TypeError):
        RoundRecord.from_dict({"step": 4})  # a round without its total rank is not a round


def test_a_result_json_of_an_older_version_still_loads(tmp_path) -> None:
    """As the first versions wrote it: `status`, no eval_time_s, none of the fields added for pruned trials."""
    old = {"metrics": {"accuracy": 0.81}, "primary": 0.81, "primary_metric": "accuracy", "trainable_params": 2048,
           "rank_map": {Q: 4, V: 6}, "rank_history": [ELALORA_ROUND], "eval_history": [{"step": 12, "metrics":
           {"accuracy": 0.81}}], "train_loss_history": [{"step": 10, "loss": 0.3}], "wall_time_s": 3.0,
           "setup_time_s": 1.0, "train_time_s": 2.0, "examples_per_s": 64.0, "steps": 12, "status": "COMPLETE"}
    (tmp_path / "result.json").write_text(json.dumps(old))
    result = read_result(tmp_path)
    assert result.state is Ending.COMPLETE and result.reason is None and result.eval_time_s == 0.0
    assert result.rank_history == [RoundRecord.from_dict(ELALORA_ROUND)] and result.rank_evolution == []
    assert result.trainable_params == 2048 and result.steps_done == 0 and result.device is None
    assert TrialResult.from_dict({**old, "status": "FAIL"}).state is Ending.FAIL
    assert read_result(tmp_path / "missing") is None and read_result(None) is None


def test_a_result_ends_in_its_own_terms_only() -> None:
    """Optuna's state never equals an Ending: a result given one would read as no ending at all downstream."""
    with pytest.raises(TypeError, match="records.Ending"):
        _result(TrialState.COMPLETE)
    with pytest.raises(ValueError, match=r"expected one of \['COMPLETE', 'PRUNED', 'FAIL'\]"):
        TrialResult.from_dict({**_result().to_dict(), "state": "RUNNING"})
    assert Ending.named("FAIL") is Ending.FAIL and Ending.named(Ending.PRUNED) is Ending.PRUNED


def test_events_reach_the_tracker_typed_from_its_spool_records_old_and_new() -> None:
    result = _result(Ending.COMPLETE)
    finished = Event("trial_finished", 3, {"study": object(), "study_name": "s", "trial_number": 3,
                                           "state": Ending.COMPLETE, "result": result, "output_dir": None})
    record = json.loads(json.dumps(to_record(finished, 7)))  # what the spool file holds
    assert "study" not in record["data"] and record["data"]["state"] == "COMPLETE"
    back = from_record(record)
    assert back.data["result"] == result and back.data["state"] is Ending.COMPLETE
    round_event = from_record(json.loads(json.dumps(to_record(
        Event("round", 6, {"record": RoundRecord.from_dict(ELALORA_ROUND), "rank_map": {Q: 3}}), 8))))
    assert round_event.data["record"] == RoundRecord.from_dict(ELALORA_ROUND)
    old = {"kind": "trial_end", "step": 12, "t_ms": 1, "data": {"result": {**result.to_dict(), "status": "PRUNED"}}}
    del old["data"]["result"]["state"]
    assert from_record(old).data["result"].state is Ending.PRUNED  # an older version's spool file
    old_round = {"kind": "round", "step": 4, "t_ms": 1,
                 "data": {"record": {"changed": {Q: [4, 3]}, "total_rank": 7}, "rank_map": {Q: 3}}}
    assert from_record(old_round).data["record"] == RoundRecord(4, 7, changed={Q: (4, 3)})


def test_a_study_row_and_a_trials_summary_read_one_source_each() -> None:
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("trainable_params", 500)  # an older worker's attributes: no device, no steps
    trial.set_user_attr("rank_summary", {"min": 2, "mean": 3.0, "max": 4, "total": 12})
    trial.set_user_attr("prune_reason", "below the median at step 4")
    trial.report(0.6, 4)
    study.tell(trial, state=TrialState.PRUNED)
    summary = summary_of_trial(study.trials[0])
    assert (summary.trainable_params, summary.reason, summary.device) == (500, "below the median at step 4", None)
    assert summary.intermediate_values == {4: 0.6} and summary.rank_summary["total"] == 12
    from_folder = summary_of_result(_result())
    assert from_folder.rank_summary == {"min": 3, "mean": 4.0, "max": 5, "total": 8} and from_folder.steps_done == 9
    row = StudyRow(number=0, state=TrialState.PRUNED, metric=None, trainable_params=500, method="elalora",
                   params={"r_init": 4}, reached=TrialSummary(reason="pruned", intermediate_values={4: 0.6}))
    flat = row.to_dict()
    assert flat["state"] == "PRUNED" and flat["reason"] == "pruned" and flat["trainable_params"] == 500
    assert not row.complete
    assert json.loads(json.dumps(row.to_dict()))["params"] == {"r_init": 4}
