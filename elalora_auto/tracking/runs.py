"""The MLflow side of a study: its experiment, its parent run and one child run per trial, found by tags.

Runs are addressed by explicit ids through `MlflowClient` (never MLflow's global active-run stack), so several
studies, threads and worker processes share one store. Parent and child runs are looked up by tags before
anything is created: resumed studies and extra workers attach to the same runs instead of duplicating them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

from elalora_auto.tracking.store import artifact_root_for, open_client

TAG_STUDY = "elalora.study"
TAG_ROLE = "elalora.role"
TAG_TRIAL = "elalora.trial"
TAG_STATE = "elalora.state"
TAG_REASON = "elalora.reason"
TAG_HOST = "elalora.host"
TAG_ORIGIN = "elalora.origin"  # a trial the study enqueued (trial 0, an anchor), not the sampler's draw
NOTE = "mlflow.note.content"  # the description MLflow's UI shows for an experiment or a run
_RACE_WINDOW_S = 0.5  # paid once per process and study, only when the parent run is new


@dataclass
class StudyRuns:
    experiment_id: str
    parent_run_id: str
    last_refresh: float = 0.0


class RunIndex:
    """Finds or creates the runs of studies in one store; the client is opened (and the store prepared) on
    first use, so building a tracker costs nothing and a dead store fails inside the tracker's own thread."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self._studies: dict[str, StudyRuns] = {}
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = open_client(self.tracking_uri)
        return self._client

    def study_runs(self, study_name: str) -> StudyRuns:
        """The study's experiment and parent run, found by name and tags, created when missing."""
        with self._lock:
            if study_name not in self._studies:
                experiment_id = self._experiment_id(study_name)
                self._studies[study_name] = StudyRuns(experiment_id, self._parent_run_id(experiment_id, study_name))
            return self._studies[study_name]

    def trial_run_id(self, study_name: str, number: int) -> str:
        """The trial's child run; looked up by study and trial number first, so resuming never duplicates."""
        runs = self.study_runs(study_name)
        found = self.find_runs(runs.experiment_id, {TAG_STUDY: study_name, TAG_ROLE: "trial", TAG_TRIAL: str(number)})
        if found:
            if found[0].info.run_name != trial_run_name(number):  # named before names were padded: renamed once
                self.client.update_run(found[0].info.run_id, name=trial_run_name(number))
            return found[0].info.run_id
        tags = {
            TAG_STUDY: study_name,
            TAG_ROLE: "trial",
            TAG_TRIAL: str(number),
            TAG_STATE: "RUNNING",
            TAG_HOST: f"{socket.gethostname()}:{os.getpid()}",
            "mlflow.parentRunId": runs.parent_run_id,
        }
        return self.client.create_run(runs.experiment_id, tags=tags, run_name=trial_run_name(number)).info.run_id

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
        found = self.find_runs(experiment_id, tags)
        if found:
            return found[0].info.run_id
        mine = self.client.create_run(experiment_id, tags=tags, run_name=study_name).info.run_id
        time.sleep(_RACE_WINDOW_S)  # let concurrent creators land, so all of them see the same candidates
        oldest = self.find_runs(experiment_id, tags)[0].info.run_id
        if oldest != mine:
            self.client.delete_run(mine)
        return oldest

    def find_runs(self, experiment_id: str, tags: Mapping[str, str], status: str | None = None) -> list[Any]:
        query = " and ".join([f"tags.`{k}` = '{v}'" for k, v in tags.items()]
                             + ([f"attributes.status = '{status}'"] if status else []))
        return list(self.client.search_runs([experiment_id], filter_string=query, max_results=5000,
                                            order_by=["attributes.start_time ASC", "attributes.run_id ASC"]))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params are write-once in MLflow: only the ones not yet on the run are sent (resume-safe)."""
        from mlflow.entities import Param

        have = self.client.get_run(run_id).data.params
        new = [Param(str(k)[:250], param_value(v)) for k, v in params.items()
               if v is not None and str(k)[:250] not in have]
        for i in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[i:i + 100])


def trial_run_name(number: int) -> str:
    """`trial-0007`: zero-padded, so MLflow's sort by run name (the `ui` link's view) reads trial-0002 before
    trial-0010 (in numeric order up to 9,999 trials)."""
    return f"trial-{number:04d}"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return text[:6000]


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
