"""MLflow tracking: a listener that mirrors studies into an MLflow store without ever making a trial wait.

Modules, lowest first: store (URIs, bounded HTTP calls, `prepare_store`), spool (the durable queue between
the training thread and MLflow), runs (experiment, parent and child runs by tags), artifacts (rank maps, the
parent's report, reconciled states), models (front adapters as MLflow models, the registry), tracker (the
listener).
"""

from __future__ import annotations

from typing import Any

from elalora_auto.events import Listener
from elalora_auto.tracking.runs import TAG_HOST, TAG_REASON, TAG_ROLE, TAG_STATE, TAG_STUDY, TAG_TRIAL
from elalora_auto.tracking.store import artifact_root_for, default_tracking_uri, prepare_store

__all__ = ["MlflowTracker", "make_listeners", "prepare_store", "default_tracking_uri", "artifact_root_for",
           "RUN_STATUS", "TAG_HOST", "TAG_REASON", "TAG_ROLE", "TAG_STATE", "TAG_STUDY", "TAG_TRIAL"]


def __getattr__(name: str) -> Any:
    """The tracker loads on first use: `ui` and the `--tracking-uri` checks need only the store's helpers, and the
    tracker brings the spool, psutil, subprocess and the trial's data (about 65 ms more per start on a busy
    2-core machine; no Optuna since a trial's ending is `records.Ending`)."""
    if name in ("MlflowTracker", "RUN_STATUS"):
        from elalora_auto.tracking import tracker

        return getattr(tracker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_listeners(settings: Any) -> list[Listener]:
    """The MLflow tracker unless `settings.no_tracking` (a SearchSettings): what the CLI and the demo hand to
    `search.run_search` / `join_study`."""
    from elalora_auto.tracking.tracker import MlflowTracker

    if settings.no_tracking:
        return []
    return [MlflowTracker(settings.tracking_uri, workdir=settings.workdir, refresh_every_s=5.0)]
