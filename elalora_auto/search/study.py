"""The study itself: created once with its settings, trial 0 and the anchors; the trial budget; orphan recovery.

Trial budget: `--trials N` means the study ends with N trials in it (complete, pruned or failed; a trial
re-queued after its worker died counts once; one stopped by Ctrl-C, or failed by the user's input
(UserError, ConfigError, DataError: a bad space value, data removed mid-study), not at all, so the corrected
resume still runs the full budget). Optuna's MaxTrialsCallback
counts only finished trials after each one, which lets parallel workers overshoot; hence `counted_trials`:
every worker counts the study's trials, running and waiting ones included, before it starts another, so
resuming, or adding workers, never runs more than N.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import warnings
from typing import Any

from elalora_auto.errors import UserError
from elalora_auto.search.attrs import FAIL_REASON, ORIGIN
from elalora_auto.search.plan import StudyPlan
from elalora_auto.search.settings import HeartbeatSettings
from elalora_auto.search.storage import MAX_RERUNS, redacted_settings

INTERRUPTED = "interrupted (Ctrl-C)"
USER_ERRORS = ("UserError", "ConfigError", "DataError")  # how a fail_reason caused by bad input starts


def create_or_load_study(plan: StudyPlan, storage: Any, keep_budget: bool = False) -> tuple[Any, bool]:
    """The study, created with its settings and trial 0 on first use; on later runs loaded as it is.

    A loaded study takes `settings.trials` as its new budget, unless `keep_budget` (the CLI without --trials):
    then it keeps the stored one, so resuming with the study file alone does not shrink a budget that an earlier
    `--trials` raised.

    Trial 0 and the space's anchors (as many as the budget holds) are enqueued only at creation, so resuming never
    runs them twice. Several processes starting at once on a fresh storage: one creates the study (Optuna refuses a
    second study of the same name), the others load it once its settings, written last, are there.
    """
    import optuna

    settings = plan.settings
    name = settings.study_name
    if name not in optuna.get_all_study_names(storage=storage):
        try:
            return _create(plan, storage), True
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another process created it a moment ago
    study = optuna.load_study(study_name=name, storage=storage)
    stored = {"sampler": "tpe", **_stored_settings(study)}  # a study from before `sampler` was TPE's
    for key in ("task", "model", "method", "objective", "sampler"):
        if stored.get(key) != getattr(settings, key):
            raise UserError(f"study {name!r} exists with {key}={stored.get(key)!r}, not {getattr(settings, key)!r}; "
                            f"pass --{key} {stored.get(key)} to resume it, or another --study name")
    if isinstance(storage, optuna.storages.RDBStorage) and stored.get("heartbeat", dataclasses.asdict(
            HeartbeatSettings())) != dataclasses.asdict(settings.heartbeat):
        raise UserError(f"study {name!r} exists with heartbeat={stored.get('heartbeat')!r}, not "
                        f"{dataclasses.asdict(settings.heartbeat)!r}: its workers must share one timing; "
                        "set heartbeat: to the stored values or pass another --study name")
    if not keep_budget and stored.get("trials") != settings.trials:
        study.set_user_attr("settings", {**stored, "trials": settings.trials})
    return study, False


def _create(plan: StudyPlan, storage: Any) -> Any:
    """A new study: metric names, trial 0, then the settings (their presence marks the study as ready)."""
    import optuna

    settings = plan.settings
    directions = ["maximize", "minimize"] if plan.multi else ["maximize"]
    default, *anchors = plan.space.start_params(settings.trial0)
    study = optuna.create_study(study_name=settings.study_name, storage=storage, directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([plan.primary_metric, "trainable_params"][: len(directions)])
    study.enqueue_trial(default, user_attrs={ORIGIN: "default (authors' configuration)"})
    for i, anchor in enumerate(anchors[: max(settings.trials - 1, 0)]):  # a waiting trial counts toward the budget
        study.enqueue_trial(anchor, user_attrs={ORIGIN: f"anchor {i + 1} of the space"}, skip_if_exists=True)
    study.set_user_attr("settings", {**redacted_settings(settings.to_dict()), "primary_metric": plan.primary_metric,
                                     "baseline": plan.baseline})
    return study


def _stored_settings(study: Any, wait_s: float = 30.0) -> dict[str, Any]:
    """The study's stored settings; a study created by another process this instant gets `wait_s` to have them."""
    deadline = time.monotonic() + wait_s
    while not study.user_attrs.get("settings") and time.monotonic() < deadline:
        time.sleep(0.2)
    stored = study.user_attrs.get("settings")
    if not stored:
        raise UserError(f"study {study.study_name!r} has no stored settings; it was not created by "
                        "elalora-auto search (pass another --study name)")
    return dict(stored)


def counted_trials(study: Any) -> int:
    """Trials toward the budget: all states, running and waiting included; a re-queued trial counts once, and
    trials stopped by Ctrl-C or failed by the user's input not at all (the resumed run replaces them)."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.number not in retried and not not_counted(t.user_attrs.get(FAIL_REASON)) for t in trials)


def not_counted(fail_reason: Any) -> bool:
    """Whether a trial that failed for this reason leaves the budget alone (Ctrl-C, or the user's input)."""
    return isinstance(fail_reason, str) and (fail_reason == INTERRUPTED or fail_reason.startswith(USER_ERRORS))


def recover_orphans(study: Any, storage: Any) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process on this host is gone (a crash, a kill -9).

    `storage` is the backend this process opened the study with (its public methods address trials by id).
    RDBStorage finds those by heartbeat; the journal file has none, so the worker's host:pid recorded on each
    trial decides. Trials of live processes, or of other hosts, are left alone.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    host, recovered = socket.gethostname(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:  # another worker (or Optuna's heartbeat check) may fail the same orphan first
            storage.set_trial_user_attr(trial_id, FAIL_REASON, f"worker process {pid} died")
            failed = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if failed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the retry callback is marked experimental
                RetryHeartbeatStaleTrialCallback(max_retry=MAX_RERUNS)(study, storage.get_trial(trial_id))
            recovered.append(trial.number)
    return recovered


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
