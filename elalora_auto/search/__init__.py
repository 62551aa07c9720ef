"""The outer search over adapter hyperparameters: `run_search` and `join_study` as plain functions.

The CLI parses flags into SearchSettings, builds the listeners (the MLflow tracker) and calls these; the demo
does the same, so both go through one path (plan -> storage -> study -> worker loop). The search imports no
listener of its own and prints no summary: reading a study's results is `elalora_auto.results`.

Modules, lowest first: space (YAML -> suggestions), settings, storage, plan (checks before the study is
touched), study (creation, budget, orphans), pruning, worker (the trial loop), pareto (front, knee, hypervolume).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from elalora_auto.events import Listener
from elalora_auto.search.settings import SearchSettings, settings_for_worker

__all__ = ["SearchSettings", "ListenerFactory", "run_search", "join_study"]

Print = Callable[[str], None]
ListenerFactory = Callable[[SearchSettings], Iterable[Listener]]
Slot = tuple[str, Mapping[str, str]]  # a worker process: its label and its extra environment (launcher)


def run_search(settings: SearchSettings, listeners: Iterable[Listener] = (), echo: Print = print,
               progress: bool = True, create_only: bool = False, slots: Sequence[Slot] = (),
               before_launch: Callable[[], None] | None = None, keep_budget: bool = False) -> Any:
    """Validate, create (or resume) the study and run this process's trials. Returns the study.

    `create_only` stops after creating the study: the first step of a many-worker run, so that the workers
    (`join_study`) only ever load it. With `slots` (`launcher.worker_slots`), this process runs no trial: it
    starts one `worker` process per slot on the study and waits for them (`listeners` are then unused: each
    worker builds its own); `before_launch` runs first, once the study exists (the CLI creates the workers'
    MLflow store there, so that they never race on creating it). `keep_budget`: a resumed study keeps its stored
    trial budget instead of taking `settings.trials` (`search` without --trials).
    """
    from elalora_auto.search.plan import plan_study
    from elalora_auto.search.storage import open_storage, resolve_storage, storage_uri, trial_gate
    from elalora_auto.search.study import create_or_load_study
    from elalora_auto.search.worker import Worker

    plan = plan_study(settings)
    storage = open_storage(settings.storage, settings.workdir, heartbeat=settings.heartbeat)
    study, created = create_or_load_study(plan, storage, keep_budget=keep_budget)
    label = storage_uri(settings.storage, settings.workdir)
    objective = f"Pareto: {plan.primary_metric} vs trainable parameters" if plan.multi else plan.primary_metric
    budget = study.user_attrs["settings"]["trials"]
    kept = " (the study's budget; --trials N changes it)" if keep_budget and not created else ""
    echo(f"{'created' if created else 'resuming'} study {study.study_name} in {label}: {plan.task.name}, "
         f"{settings.method}, {plan.total_steps} steps per trial, {budget} trials{kept} ({objective})")
    if create_only:
        echo(f"start workers with: elalora-auto worker --study {study.study_name}"
             f"{' --storage URL' if resolve_storage(settings.storage) else ' --workdir ' + str(settings.workdir)}")
        return study
    if slots:
        from elalora_auto.search.launcher import launch_workers

        if before_launch is not None:
            before_launch()
        launch_workers(study.study_name, settings, slots, echo)
        return study
    # salt 0 only where this process created the study (why: worker.sampler_seed)
    gate = trial_gate(settings.storage, settings.workdir, storage, study.study_name)
    Worker(plan, study, storage, label, gate, listeners, progress=progress, echo=echo,
           salt=0 if created else None).run()
    return study


def join_study(study_name: str, storage: str | None, overrides: Mapping[str, Any],
               make_listeners: ListenerFactory | None = None, echo: Print = print, progress: bool = True) -> Any:
    """`worker`: load an existing study and run trials with the settings stored in it.

    `make_listeners` receives those settings (the tracking URI may come from the study), like `run_search`'s
    caller builds its listeners from its own settings.
    """
    from elalora_auto.search.plan import plan_study
    from elalora_auto.search.storage import load_study, open_storage, resolve_storage, storage_uri, trial_gate
    from elalora_auto.search.worker import Worker

    workdir, storage = overrides.get("workdir") or "elalora_runs", resolve_storage(storage)
    backend = open_storage(storage, workdir, create=False)
    study = load_study(study_name, backend)
    settings = settings_for_worker(study, {**overrides, "storage": storage})
    if storage is not None and "://" in storage:  # reopen with the study's heartbeat timing, shared by its workers
        backend = open_storage(storage, workdir, create=False, heartbeat=settings.heartbeat)
        study = load_study(study.study_name, backend)
    plan = plan_study(settings)
    echo(f"worker joined study {study.study_name} ({settings.trials} trials in all)")
    listeners = list(make_listeners(settings)) if make_listeners is not None else []
    Worker(plan, study, backend, storage_uri(storage, settings.workdir), trial_gate(storage, workdir, backend,
           study.study_name), listeners, progress=progress, echo=echo).run()
    return study
