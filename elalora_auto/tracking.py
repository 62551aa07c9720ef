"""MLflow tracking as a listener: one experiment and parent run per study, one child run per trial.

Tracking listens, it never steers: every failure inside the tracker is logged as a warning and swallowed,
so a broken or slow MLflow store can never fail a trial. Runs are addressed by explicit ids through
`MlflowClient` (never MLflow's global active-run stack), so several studies, threads and worker processes
can share one store. Parent and child runs are found again by tags before anything is created, which is what
makes resumed studies and several workers attach to the same runs instead of duplicating them.

Metrics and params are logged inline (batched; milliseconds). Figures and artifact uploads (rank heatmap and
evolution per trial, the study's Pareto front and Optuna plots, a front trial's adapter) are rendered on one
background thread, so the next trial starts while the last one is drawn; `flush()` waits for them, and the
study's end always does.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from elalora_auto.events import Event, Listener

log = logging.getLogger(__name__)

TAG_STUDY = "elalora.study"
TAG_ROLE = "elalora.role"
TAG_TRIAL = "elalora.trial"
TAG_STATE = "elalora.state"
TAG_REASON = "elalora.reason"
TAG_HOST = "elalora.host"
# Optuna's final trial state -> MLflow's terminal run status.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
_RACE_WINDOW_S = 0.5  # paid once per process and study, only when the parent run is new
_FLUSH_AT = 500  # buffered step metrics before a log_batch; MLflow accepts 1000 per call


def default_tracking_uri(workdir: str | Path) -> str:
    """The store that needs no server: an SQLite file in the workdir (absolute, so any cwd finds it)."""
    return f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifacts beside an SQLite store (WORKDIR/mlartifacts); remote stores choose their own.

    MLflow would otherwise default an SQLite store's artifacts to ./mlruns under whatever cwd a worker has.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


@dataclass
class _TrialRun:
    run_id: str
    metrics: list[Any] = field(default_factory=list)  # buffered mlflow Metric objects
    rank_history: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _StudyRuns:
    experiment_id: str
    parent_run_id: str
    last_refresh: float = 0.0
    backend: Any = None  # the study's Optuna storage (from study_start): the report draws its peer studies


def make_listeners(settings: Any) -> list[Listener]:
    """The MLflow tracker unless `settings.no_tracking` (a SearchSettings): what the CLI and the demo hand to
    `search.run_search` / `join_study`."""
    if settings.no_tracking:
        return []
    return [MlflowTracker(settings.tracking_uri, workdir=settings.workdir, refresh_every_s=5.0)]


class MlflowTracker:
    """A `Listener` that mirrors a study into MLflow (see the module docstring for the guarantees).

    `refresh_every_s` throttles the parent run's study-wide plots (Pareto front, trial table, Optuna plots),
    which are redrawn when a trial finishes; the study's end always redraws them.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        workdir: str | Path = "elalora_runs",
        refresh_every_s: float = 0.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.tracking_uri = tracking_uri or default_tracking_uri(self.workdir)
        self.refresh_every_s = refresh_every_s
        self._client: Any = None
        self._studies: dict[str, _StudyRuns] = {}
        self._trials: dict[tuple[str, int], _TrialRun] = {}
        self._lock = threading.Lock()
        self._artifacts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-artifacts")
        self._pending: list[Future] = []
        self._refresh_queued: set[str] = set()

    # -- listener -------------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        try:
            with self._lock:
                getattr(self, f"_on_{event.kind}")(event)
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a trial
            log.warning("MLflow tracking skipped a %s event: %s: %s", event.kind, type(exc).__name__, exc,
                        exc_info=log.isEnabledFor(logging.DEBUG))

    def flush(self) -> None:
        """Wait until every queued figure and artifact upload is done."""
        while self._pending:
            self._pending.pop(0).result()

    def _in_background(self, what: str, job: Any, *args: Any) -> None:
        """Queue slow artifact work off the training path; its failures are warnings, like any tracker error."""

        def run() -> None:
            try:
                job(*args)
            except Exception as exc:  # noqa: BLE001 - tracking must never fail a trial
                log.warning("MLflow tracking skipped %s: %s: %s", what, type(exc).__name__, exc)

        self._pending = [f for f in self._pending if not f.done()] + [self._artifacts.submit(run)]

    @property
    def client(self) -> Any:
        """Created on first use: opening a fresh SQLite store costs seconds, so `--help` never pays it."""
        if self._client is None:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            from mlflow import MlflowClient

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # -- study events ---------------------------------------------------------------------------------
    def _on_study_start(self, event: Event) -> None:
        runs = self.study_runs(event.data["study_name"])
        runs.backend = event.data.get("backend")
        settings = event.data.get("settings") or {}
        params = {f"study.{k}": v for k, v in _flatten(settings).items()}
        params["study.storage"] = event.data.get("storage")
        self._log_params(runs.parent_run_id, params)

    def _on_trial_finished(self, event: Event) -> None:
        data = event.data
        name, number, state = data["study_name"], int(data["trial_number"]), data["state"]
        trial = self._trials.pop((name, number), None) or _TrialRun(self.trial_run_id(name, number))
        self._flush(trial)
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        values = data.get("values") or []
        self.client.log_batch(
            trial.run_id,
            metrics=[Metric(f"objective_{i}", float(v), now, 0) for i, v in enumerate(values)],
            params=[],
            tags=[RunTag(TAG_STATE, state)] + ([RunTag(TAG_REASON, str(data["reason"])[:5000])] if data.get("reason") else []),
        )
        self._log_params(trial.run_id, {f"params.{k}": v for k, v in (data.get("params") or {}).items()})
        self.client.set_terminated(trial.run_id, status=RUN_STATUS.get(state, "FAILED"))
        study = data.get("study")
        if state == "COMPLETE" and study is not None and data.get("output_dir"):
            self._in_background("the adapter", self._log_adapter_if_on_front, study, name, number, trial.run_id,
                                Path(data["output_dir"]))
        runs = self.study_runs(name)
        if study is not None and name not in self._refresh_queued \
                and time.monotonic() - runs.last_refresh >= self.refresh_every_s:
            self._refresh_queued.add(name)  # one queued refresh at a time: it reads the latest study anyway
            self._in_background("the study plots", self._queued_refresh, study, name)

    def _on_study_end(self, event: Event) -> None:
        name = event.data["study_name"]
        self.flush()
        self.refresh_study(event.data["study"], name)
        self.client.set_terminated(self.study_runs(name).parent_run_id, status="FINISHED")

    # -- trial events ---------------------------------------------------------------------------------
    def _on_trial_start(self, event: Event) -> None:
        data = event.data
        key = (data["study_name"], int(data["trial_number"]))
        trial = self._trials[key] = _TrialRun(self.trial_run_id(*key))
        spec = data.get("spec") or {}
        params = {k: v for k, v in spec.items() if not isinstance(v, dict)}
        for section, values in spec.items():
            if isinstance(values, dict):
                params.update({f"{section}.{k}": v for k, v in _flatten(values).items()})
        params["seed"] = (spec.get("training") or {}).get("seed")
        self._log_params(trial.run_id, params)
        self._metric(trial, "trainable_params", data.get("trainable_params"), event.step)
        if data.get("rank_map"):
            trial.rank_history.append((event.step, dict(data["rank_map"])))
            self._metric(trial, "total_rank", sum(data["rank_map"].values()), event.step)

    def _on_train_step(self, event: Event) -> None:
        trial = self._trial(event)
        names = {"loss": "train_loss", "lr": "learning_rate", "total_rank": "total_rank",
                 "trainable_params": "trainable_params"}
        for key, metric in names.items():
            self._metric(trial, metric, event.data.get(key), event.step)
        if len(trial.metrics) >= _FLUSH_AT:
            self._flush(trial)

    def _on_eval(self, event: Event) -> None:
        trial = self._trial(event)
        for key, value in (event.data.get("metrics") or {}).items():
            self._metric(trial, f"eval_{key}", value, event.step)
        self._metric(trial, "eval_primary", event.data.get("primary"), event.step)
        self._flush(trial)  # evals are rare and what a user watches live

    def _on_round(self, event: Event) -> None:
        trial = self._trial(event)
        record = dict(event.data.get("record") or {})
        trial.rounds.append({"step": event.step, **record})
        if event.data.get("rank_map"):
            trial.rank_history.append((event.step, dict(event.data["rank_map"])))

    def _on_trial_end(self, event: Event) -> None:
        trial = self._trial(event)
        result = event.data.get("result") or {}
        for key, value in (result.get("metrics") or {}).items():
            self._metric(trial, f"final_{key}", value, event.step)
        for key in ("primary", "trainable_params", "wall_time_s", "examples_per_s"):
            self._metric(trial, f"final_{key}" if key in ("primary", "trainable_params") else key,
                         result.get(key), event.step)
        rank_map = result.get("rank_map") or (trial.rank_history[-1][1] if trial.rank_history else {})
        if rank_map:
            self._metric(trial, "final_total_rank", sum(rank_map.values()), event.step)
        self._flush(trial)
        if not rank_map:
            return
        history = list(trial.rank_history)
        if not history or history[-1][0] != event.step:
            history.append((event.step, dict(rank_map)))
        rounds = list(trial.rounds) or [{"step": s, "total_rank": sum(r.values())} for s, r in history]
        self._in_background("the rank artifacts", self._log_rank_artifacts, trial.run_id, dict(rank_map), history,
                            rounds)

    def _log_rank_artifacts(self, run_id: str, rank_map: dict[str, int], history: list[tuple[int, dict[str, int]]],
                            rounds: list[dict[str, Any]]) -> None:
        from elalora_auto import plots

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "rank_map.json").write_text(json.dumps(rank_map, indent=1, sort_keys=True))
            plots.rank_heatmap(rank_map, out / "rank_heatmap.png")
            plots.rank_evolution(history, out / "rank_evolution.png")
            plots.write_csv(rounds, out / "rank_rounds.csv")
            self.client.log_artifacts(run_id, tmp, "ranks")

    # -- runs -----------------------------------------------------------------------------------------
    def study_runs(self, study_name: str) -> _StudyRuns:
        """The study's experiment and parent run, found by name and tags, created when missing."""
        if study_name not in self._studies:
            experiment_id = self._experiment_id(study_name)
            self._studies[study_name] = _StudyRuns(experiment_id, self._parent_run_id(experiment_id, study_name))
        return self._studies[study_name]

    def trial_run_id(self, study_name: str, number: int) -> str:
        """The trial's child run; looked up by study and trial number first, so resuming never duplicates."""
        runs = self.study_runs(study_name)
        found = self._find_runs(runs.experiment_id, {TAG_STUDY: study_name, TAG_ROLE: "trial", TAG_TRIAL: str(number)})
        if found:
            return found[0].info.run_id
        tags = {
            TAG_STUDY: study_name,
            TAG_ROLE: "trial",
            TAG_TRIAL: str(number),
            TAG_STATE: "RUNNING",
            TAG_HOST: f"{socket.gethostname()}:{os.getpid()}",
            "mlflow.parentRunId": runs.parent_run_id,
        }
        return self.client.create_run(runs.experiment_id, tags=tags, run_name=f"trial-{number}").info.run_id

    def _experiment_id(self, study_name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is not None:
            return experiment.experiment_id
        root = artifact_root_for(self.tracking_uri)
        location = f"{root}/{_safe_name(study_name)}" if root else None
        try:
            return self.client.create_experiment(study_name, artifact_location=location, tags={TAG_STUDY: study_name})
        except MlflowException:  # another worker created it between our lookup and create
            experiment = self.client.get_experiment_by_name(study_name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _parent_run_id(self, experiment_id: str, study_name: str) -> str:
        """Find or create the one parent run; after a racing create, the oldest wins and the others go."""
        tags = {TAG_STUDY: study_name, TAG_ROLE: "parent"}
        found = self._find_runs(experiment_id, tags)
        if found:
            return found[0].info.run_id
        mine = self.client.create_run(experiment_id, tags=tags, run_name=study_name).info.run_id
        time.sleep(_RACE_WINDOW_S)  # let concurrent creators land, so all of them see the same candidates
        oldest = self._find_runs(experiment_id, tags)[0].info.run_id
        if oldest != mine:
            self.client.delete_run(mine)
        return oldest

    def _find_runs(self, experiment_id: str, tags: Mapping[str, str]) -> list[Any]:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return list(self.client.search_runs([experiment_id], filter_string=query,
                                            order_by=["attributes.start_time ASC", "attributes.run_id ASC"], max_results=10))

    def _trial(self, event: Event) -> _TrialRun:
        key = (event.data["study_name"], int(event.data["trial_number"]))
        if key not in self._trials:  # a trial event without trial_start (e.g. tracker attached late)
            self._trials[key] = _TrialRun(self.trial_run_id(*key))
        return self._trials[key]

    # -- logging helpers ------------------------------------------------------------------------------
    @staticmethod
    def _metric(trial: _TrialRun, name: str, value: Any, step: int) -> None:
        if value is None:
            return
        from mlflow.entities import Metric

        trial.metrics.append(Metric(name, float(value), _now_ms(), int(step)))

    def _flush(self, trial: _TrialRun) -> None:
        while trial.metrics:
            batch, trial.metrics = trial.metrics[:1000], trial.metrics[1000:]
            self.client.log_batch(trial.run_id, metrics=batch)

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params are write-once in MLflow: only the ones not yet on the run are sent (resume-safe)."""
        from mlflow.entities import Param

        have = self.client.get_run(run_id).data.params
        new = [Param(str(k)[:250], _param_value(v)) for k, v in params.items() if v is not None and str(k)[:250] not in have]
        for i in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[i:i + 100])

    def _log_adapter_if_on_front(self, study: Any, name: str, number: int, run_id: str, output_dir: Path) -> None:
        from elalora_auto.results import study_rows

        adapter = output_dir / "adapter"
        rows = study_rows(study, self.workdir / "trials" / name)
        if adapter.is_dir() and any(row["number"] == number and row["on_front"] for row in rows):
            self.client.log_artifacts(run_id, str(adapter), "adapter")

    # -- study-wide artifacts -------------------------------------------------------------------------
    def _queued_refresh(self, study: Any, study_name: str) -> None:
        self._refresh_queued.discard(study_name)
        self.refresh_study(study, study_name)

    def refresh_study(self, study: Any, study_name: str) -> None:
        """Redraw the parent run's Pareto front, trial table and Optuna plots from the study's storage."""
        from elalora_auto.results import write_study_report

        runs = self.study_runs(study_name)
        with tempfile.TemporaryDirectory() as tmp:
            rows = write_study_report(study, Path(tmp), self.workdir / "trials" / study_name, runs.backend)
            self.client.log_artifacts(runs.parent_run_id, tmp)
        from mlflow.entities import Metric

        now = _now_ms()
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        front = sum(row["on_front"] for row in rows)
        metrics = [Metric(f"trials_{state.lower()}", n, now, 0) for state, n in counts.items()]
        self.client.log_batch(runs.parent_run_id, metrics=metrics + [Metric("pareto_size", front, now, 0)])
        runs.last_refresh = time.monotonic()


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return text[:6000]


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _now_ms() -> int:
    return int(time.time() * 1000)
