"""The outer search over adapter hyperparameters: `search`, `worker` and `status` as plain functions.

The CLI parses flags into SearchSettings and calls these; the demo calls them too, so both go through the
same path (prepare -> storage -> study -> worker loop -> summary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from elalora_auto.events import Listener
from elalora_auto.search.study import (
    SearchSettings,
    create_or_load_study,
    format_summary,
    load_study,
    open_storage,
    prepare,
    run_worker,
    settings_for_worker,
    storage_uri,
)

__all__ = ["SearchSettings", "make_listeners", "run_search", "join_study", "study_status"]

Print = Callable[[str], None]


def make_listeners(settings: SearchSettings) -> list[Listener]:
    """The MLflow tracker (one listener for study and trial events alike) unless --no-tracking."""
    if settings.no_tracking:
        return []
    try:
        from elalora_auto.tracking import MlflowTracker
    except ImportError:
        return []
    return [MlflowTracker(settings.tracking_uri, workdir=settings.workdir, refresh_every_s=5.0)]


def run_search(settings: SearchSettings, listeners: list[Listener] | None = None, echo: Print = print,
               progress: bool = True, create_only: bool = False) -> Any:
    """Validate, create (or resume) the study, run this process's trials, print the front. Returns the study.

    `create_only` stops after creating the study: the first step of a many-worker run, so that the workers
    (`join_study`) only ever load it.
    """
    prepared = prepare(settings)
    storage = open_storage(settings.storage, settings.workdir, heartbeat=settings.heartbeat)
    study, created = create_or_load_study(prepared, storage)
    label = storage_uri(settings.storage, settings.workdir)
    echo(f"{'created' if created else 'resuming'} study {study.study_name} in {label}: {prepared.task.name}, "
         f"{settings.method}, {prepared.total_steps} steps per trial, {settings.trials} trials "
         f"({'Pareto: ' + prepared.primary_metric + ' vs trainable parameters' if prepared.multi else prepared.primary_metric})")
    if create_only:
        echo(f"start workers with: elalora-auto worker --study {study.study_name}"
             f"{' --storage URL' if settings.storage else ' --workdir ' + str(settings.workdir)}")
        return study
    run_worker(prepared, study, label, make_listeners(settings) if listeners is None else listeners,
               progress=progress, seed=settings.seed, echo=echo)
    echo(format_summary(study))
    echo(f"trial outputs: {Path(settings.workdir) / 'trials' / study.study_name}/<trial>/ (adapter/, config.yaml, "
         f"result.json)")
    return study


def join_study(study_name: str, storage: str | None, overrides: Mapping[str, Any], echo: Print = print,
               progress: bool = True) -> Any:
    """`worker`: load an existing study and run trials with the settings stored in it."""
    workdir = overrides.get("workdir") or "elalora_runs"
    backend = open_storage(storage, workdir, create=False)
    study = load_study(study_name, backend)
    settings = settings_for_worker(study, {**overrides, "storage": storage})
    if storage is not None and "://" in storage:  # reopen with the study's heartbeat timing, shared by its workers
        study = load_study(study.study_name, open_storage(storage, workdir, create=False, heartbeat=settings.heartbeat))
    prepared = prepare(settings)
    echo(f"worker joined study {study.study_name} ({settings.trials} trials in all)")
    run_worker(prepared, study, storage_uri(storage, settings.workdir), make_listeners(settings), progress=progress,
               echo=echo)
    echo(format_summary(study))
    return study


def study_status(study_name: str | None, storage: str | None, workdir: str) -> str:
    """Trials by state and the Pareto front so far."""
    return format_summary(load_study(study_name, open_storage(storage, workdir, create=False)))
