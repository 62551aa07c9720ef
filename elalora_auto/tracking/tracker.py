"""MLflow tracking as a listener: one experiment and parent run per study, one child run per trial.

Tracking listens, it never steers, and it never makes a trial wait: the listener call turns the event into a
plain record and enqueues it (`spool.Spool`); a background thread sends it to MLflow, keeps it in a local spool
file while the store is down, and replays it when the store answers (or on the next start on this host).

Every trial's run ends with its state and reason, its rank map (JSON + heatmap), rank evolution, trainable
parameters, intermediate values, device, peak memory and throughput, whatever the state; a two-stage trial's
search stage beside them as `search_*` metrics (its events carry `stage`). A start reconciles
runs that a killed process left RUNNING with what Optuna says of their trials; the parent run ends FINISHED
when the study holds its budget and KILLED when it stopped short (interrupted, timed out).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elalora_auto.events import Event
from elalora_auto.records import Ending, RoundRecord
from elalora_auto.spec import TrialResult
from elalora_auto.tracking import artifacts, models
from elalora_auto.tracking.payload import LIVE_KEYS, from_record, to_record
from elalora_auto.tracking.runs import (TAG_ORIGIN, TAG_REASON, TAG_ROLE, TAG_STATE, TAG_STUDY, TAG_TRIAL, RunIndex,
                                        flatten)
from elalora_auto.tracking.spool import Record, Spool
from elalora_auto.workdir import Workdir

log = logging.getLogger(__name__)

# A trial's ending -> MLflow's terminal run status.
RUN_STATUS = {Ending.COMPLETE: "FINISHED", Ending.PRUNED: "KILLED", Ending.FAIL: "FAILED"}
_FLUSH_AT = 500  # buffered step metrics before a log_batch; MLflow accepts 1000 per call


@dataclass
class _TrialRun:
    run_id: str
    metrics: list[Any] = field(default_factory=list)  # buffered mlflow Metric objects
    rank_history: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    trainable_params: int | None = None
    ended: bool = False  # trial_end seen: its result's metrics are logged


class MlflowTracker:
    """A `Listener` that mirrors a study into MLflow (see the module docstring for the guarantees).

    `refresh_every_s` throttles the parent run's study-wide plots, redrawn when a trial finishes; the study's end
    always redraws them. `drain_timeout_s` bounds how long the study's end waits for a healthy store to take the
    backlog (a store that is down is not waited for: its events stay spooled).
    """

    def __init__(self, tracking_uri: str | None = None, workdir: str | Path = "elalora_runs",
                 refresh_every_s: float = 0.0, drain_timeout_s: float = 120.0) -> None:
        self.workdir = Workdir(workdir)
        self.tracking_uri = tracking_uri or self.workdir.tracking_uri()
        self.refresh_every_s, self.drain_timeout_s = refresh_every_s, drain_timeout_s
        self.runs = RunIndex(self.tracking_uri)
        self._trials: dict[tuple[str, int], _TrialRun] = {}
        self._live: dict[str, dict[str, Any]] = {}  # study name -> its live Optuna objects (study, backend)
        self.spool = Spool(self.workdir.spool, self._apply, self._probe)

    # -- the listener (training thread): enqueue only -------------------------------------------------
    def __call__(self, event: Event) -> None:
        try:
            live = {k: event.data[k] for k in LIVE_KEYS if event.data.get(k) is not None}
            if live and "study_name" in event.data:
                self._live.setdefault(str(event.data["study_name"]), {}).update(live)
            self.spool.put(to_record(event, _now_ms()))
            if event.kind == "study_end":
                self.flush()
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a trial
            log.warning("MLflow tracking skipped a %s event: %s: %s", event.kind, type(exc).__name__, exc)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until MLflow holds every event (True); False when the store is down or the wait timed out, the
        events then waiting in the spool file."""
        return self.spool.drain(self.drain_timeout_s if timeout_s is None else timeout_s)

    @property
    def client(self) -> Any:
        return self.runs.client

    def study_runs(self, study_name: str) -> Any:
        return self.runs.study_runs(study_name)

    def trial_run_id(self, study_name: str, number: int) -> str:
        return self.runs.trial_run_id(study_name, number)

    # -- the applier (background thread) --------------------------------------------------------------
    def _probe(self) -> None:
        self.client.search_experiments(max_results=1)

    def _apply(self, record: Record) -> None:
        getattr(self, f"_on_{record['kind']}")(from_record(record), record["t_ms"])

    def _study(self, name: str) -> Any:
        """The live Optuna study of this process (None when replaying another process's events)."""
        return self._live.get(name, {}).get("study")

    def _trial(self, data: dict[str, Any]) -> _TrialRun:
        key = (data["study_name"], int(data["trial_number"]))
        if key not in self._trials:  # a trial event without trial_start (e.g. tracker attached late)
            self._trials[key] = _TrialRun(self.trial_run_id(*key))
        return self._trials[key]

    def _metric(self, trial: _TrialRun, name: str, value: Any, step: int, t_ms: int) -> None:
        if value is None:
            return
        from mlflow.entities import Metric

        trial.metrics.append(Metric(name, float(value), int(t_ms), int(step)))

    def _flush(self, trial: _TrialRun) -> None:
        while trial.metrics:
            batch, trial.metrics = trial.metrics[:1000], trial.metrics[1000:]
            self.client.log_batch(trial.run_id, metrics=batch)

    # -- study events ---------------------------------------------------------------------------------
    def _on_study_start(self, event: Event, t_ms: int) -> None:
        data = event.data
        name = data["study_name"]
        runs = self.study_runs(name)
        params = {f"study.{k}": v for k, v in flatten(data["settings"]).items()}
        params["study.storage"] = data["storage"]
        self.runs.log_params(runs.parent_run_id, params)
        artifacts.describe_study(self.client, name, runs)
        if self.client.get_run(runs.parent_run_id).info.status != "RUNNING":
            self.client.update_run(runs.parent_run_id, status="RUNNING")  # resumed: the study runs again
        study = self._study(name)
        if study is not None:
            self._reconcile(study, name)

    def _on_trial_finished(self, event: Event, t_ms: int) -> None:
        data = event.data
        name, number, state = data["study_name"], int(data["trial_number"]), data["state"]
        result: TrialResult | None = data["result"]  # None: the trial stopped before its ending was written
        trial = self._trials.pop((name, number), None) or _TrialRun(self.trial_run_id(name, number))
        study = self._study(name)
        frozen = study.trials[number] if study is not None and number < len(study.trials) else None
        for step, value in sorted((frozen.intermediate_values if frozen else {}).items()):
            self._metric(trial, "intermediate_value", value, step, t_ms)
        values = data["values"] or []
        for i, value in enumerate(values):
            self._metric(trial, f"objective_{i}", value, 0, t_ms)
        self._flush(trial)
        from mlflow.entities import RunTag

        tags = [RunTag(TAG_STATE, state.name)] + ([RunTag(TAG_REASON, str(data["reason"])[:5000])] if data["reason"] else [])
        tags += [RunTag(TAG_ORIGIN, str(data["origin"]))] if data.get("origin") else []
        self.client.log_batch(trial.run_id, tags=tags)
        self.runs.log_params(trial.run_id, {f"params.{k}": v for k, v in data["params"].items()})
        if not trial.ended and result is not None:  # its trial_end went to another tracker, or none saw it
            self._log_result(trial, result, event.step, t_ms)
        size = self._log_ranks(trial, number, result, event.step)
        self.client.set_terminated(trial.run_id, status=RUN_STATUS[state])
        runs = self.study_runs(name)
        artifacts.log_trial_on_parent(self.client, runs.parent_run_id, number, state.name,
                                      values[0] if values else None, values[1] if len(values) > 1 else size, t_ms)
        if study is None:
            return
        if state is Ending.COMPLETE and data["output_dir"]:
            artifacts.log_adapter_if_on_front(self.client, study, number, trial.run_id, Path(data["output_dir"]),
                                              self.workdir.trials(name))
        if time.monotonic() - runs.last_refresh >= self.refresh_every_s:
            self._refresh(study, name, number)

    def _on_study_end(self, event: Event, t_ms: int) -> None:
        name = event.data["study_name"]
        study = self._study(name)
        for key in [key for key in self._trials if key[0] == name]:
            self._flush(self._trials.pop(key))  # trials this process started and never finished (Ctrl-C)
        if study is None:
            return
        self._reconcile(study, name)
        trials = study.get_trials(deepcopy=False)
        self._refresh(study, name, max((t.number for t in trials), default=0))
        runs = self.study_runs(name)
        status, note = artifacts.parent_outcome(study)
        if status is not None:
            from mlflow.entities import RunTag

            self.client.log_batch(runs.parent_run_id, tags=[RunTag("elalora.outcome", note)])
            self.client.set_terminated(runs.parent_run_id, status=status)
        models.log_front_models(self.client, study, runs.experiment_id, self.workdir.trials(name))  # slowest

    def _refresh(self, study: Any, name: str, step: int) -> None:
        runs = self.study_runs(name)
        backend = self._live.get(name, {}).get("backend")
        artifacts.refresh_study(self.client, study, runs, self.workdir.trials(name), backend, step)
        runs.last_refresh = time.monotonic()

    def _reconcile(self, study: Any, name: str) -> None:
        """Trial runs left RUNNING (a killed or interrupted process) whose Optuna trial is over or gone get its
        final status, state and reason; runs of trials Optuna still runs are left alone."""
        runs = self.study_runs(name)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        stale = self.runs.find_runs(runs.experiment_id, {TAG_STUDY: name, TAG_ROLE: "trial"}, status="RUNNING")
        for run in stale:
            trial = trials.get(int(run.data.tags.get(TAG_TRIAL, -1)))
            if trial is not None and not trial.state.is_finished():
                continue
            status, state, reason = artifacts.final_state(trial)
            from mlflow.entities import RunTag

            self.client.log_batch(run.info.run_id, tags=[RunTag(TAG_STATE, state), RunTag(TAG_REASON, reason)])
            self.client.set_terminated(run.info.run_id, status=status)

    # -- trial events ---------------------------------------------------------------------------------
    def _on_trial_start(self, event: Event, t_ms: int) -> None:
        data = event.data
        key = (data["study_name"], int(data["trial_number"]))
        trial = self._trials[key] = _TrialRun(self.trial_run_id(*key))
        spec = data["spec"]  # TrialSpec.to_dict: the re-runnable YAML's shape
        params = {k: v for k, v in spec.items() if not isinstance(v, dict)}
        for section, values in spec.items():
            if isinstance(values, dict):
                params.update({f"{section}.{k}": v for k, v in flatten(values).items()})
        params["seed"] = spec["training"]["seed"]
        self.runs.log_params(trial.run_id, params)
        trial.trainable_params = data["trainable_params"]
        self._metric(trial, "trainable_params", trial.trainable_params, event.step, t_ms)
        if data["rank_map"]:
            trial.rank_history.append((event.step, dict(data["rank_map"])))
            self._metric(trial, "total_rank", sum(data["rank_map"].values()), event.step, t_ms)

    def _on_train_step(self, event: Event, t_ms: int) -> None:
        trial, prefix = self._trial(event.data), _stage_prefix(event)
        names = {"loss": "train_loss", "lr": "learning_rate", "total_rank": "total_rank",
                 "trainable_params": "trainable_params"}
        for key, metric in names.items():
            self._metric(trial, prefix + metric, event.data[key], event.step, t_ms)
        if not prefix:
            trial.trainable_params = event.data["trainable_params"]
        if len(trial.metrics) >= _FLUSH_AT:
            self._flush(trial)

    def _on_eval(self, event: Event, t_ms: int) -> None:
        trial, prefix = self._trial(event.data), _stage_prefix(event)
        for key, value in event.data["metrics"].items():
            self._metric(trial, f"{prefix}eval_{key}", value, event.step, t_ms)
        self._metric(trial, f"{prefix}eval_primary", event.data["primary"], event.step, t_ms)
        self._flush(trial)  # evals are rare and what a user watches live

    def _on_round(self, event: Event, t_ms: int) -> None:
        trial = self._trial(event.data)
        trial.rounds.append(event.data["record"])
        if event.data["rank_map"]:
            trial.rank_history.append((event.step, dict(event.data["rank_map"])))

    def _on_trial_end(self, event: Event, t_ms: int) -> None:
        trial = self._trial(event.data)
        self._log_result(trial, event.data["result"], event.step, t_ms)
        trial.ended = True

    def _log_result(self, trial: _TrialRun, result: TrialResult, step: int, t_ms: int) -> None:
        for key, value in result.metrics.items():
            self._metric(trial, f"final_{key}", value, step, t_ms)
        for name, value in (("final_primary", result.primary), ("final_trainable_params", result.trainable_params),
                            ("wall_time_s", result.wall_time_s), ("examples_per_s", result.examples_per_s),
                            ("peak_memory_mb", result.peak_memory_mb)):
            self._metric(trial, name, value, step, t_ms)
        search = result.search_stage  # a two-stage trial's stage 1 (ElaLoRA finding the rank map), beside it
        if search is not None:
            for name, value in {**{f"final_{k}": v for k, v in search.metrics.items()}, "final_primary": search.primary,
                                "trainable_params": search.trainable_params, "steps": search.steps_done}.items():
                self._metric(trial, f"search_{name}", value, search.steps_done, t_ms)
        self._flush(trial)

    def _log_ranks(self, trial: _TrialRun, number: int, result: TrialResult | None, step: int) -> int | None:
        """The trial's final rank map, rank evolution and size: from its result, or (a trial stopped before its
        ending was written) from the events seen. Returns the size."""
        if result is not None:
            rank_map, size, rounds = result.rank_map, result.trainable_params, result.rank_history
        else:
            rank_map = trial.rank_history[-1][1] if trial.rank_history else {}
            size, rounds = trial.trainable_params, trial.rounds
        if size is not None:
            self.runs.log_params(trial.run_id, {"trainable_params": size})
        if result is not None and result.device:
            self.runs.log_params(trial.run_id, {"device": result.device})
        if not rank_map:
            return size
        history = list(trial.rank_history)
        if not history or history[-1][1] != rank_map:
            history.append((max(step, history[-1][0] if history else 0), dict(rank_map)))
        rows = [r.to_dict() for r in rounds] or [{"step": s, "total_rank": sum(r.values())} for s, r in history]
        artifacts.log_rank_artifacts(self.client, trial.run_id, number, dict(rank_map), history, rows)
        return size


def _stage_prefix(event: Event) -> str:
    """"search_" for the events of a two-stage trial's stage 1 (`two_stage.SEARCH`): its curves beside the trial's
    own, never mixed into them (both stages count their steps from 1)."""
    stage = event.data.get("stage")
    return f"{stage}_" if stage else ""


def _now_ms() -> int:
    return int(time.time() * 1000)
