"""The outer search: settings, storage, the study, the pruning rule and the worker loop.

Storage (`open_storage`):
- Default: an Optuna JournalStorage file, WORKDIR/optuna-journal.log. It needs no server; it is append-only, so
  a crash loses at most the line being written and a restart replays the log (the study survives); several
  processes on one machine share it through a file lock; and, unlike SQLite, `enqueue_trial` stays correct
  with parallel workers (a waiting trial is popped by exactly one of them).
- `--storage postgresql://...` (any SQLAlchemy URL) for many workers on many machines: RDBStorage with a
  heartbeat, so a trial whose worker died is marked FAIL after the grace period and re-queued once by
  RetryHeartbeatStaleTrialCallback. Optuna checks for such stale trials at the start of every trial of every
  live worker (`fail_stale_trials`), so a surviving worker picks up the dead one's trial. The timing is the
  study setting `heartbeat: {interval_s, grace_s}`, stored with the study so that every worker uses the same
  values (a worker whose grace period were shorter than another's heartbeat interval would fail live trials).
  The `search` command creates the study (several workers creating one study at once on a fresh database
  collide); `worker` only loads it.

Trial budget: `--trials N` means the study ends with N trials in it (complete, pruned or failed; a trial
re-queued after its worker died counts once, one stopped by Ctrl-C not at all). Optuna's MaxTrialsCallback
counts only finished trials after each one, which lets parallel workers overshoot; hence the count below. Every worker counts the study's trials, running and waiting ones
included, before it starts another, so resuming, or adding workers, never runs more than N.

Pruning (`PruningRule`). Optuna cannot prune multi-objective studies (`report`/`should_prune` raise), so the
default Pareto mode uses this rule over the primary metric at each periodic evaluation, stored per trial as
the user attr "intermediate" ({step: value}):
1. Baseline rule (both modes): a trial whose metric stays within two standard errors of the majority-class
   baseline (the metric of always predicting the most frequent eval label; 0.02 for non-accuracy metrics)
   for `baseline_patience` consecutive evaluations has learned nothing and is stopped.
2. Median rule: after `n_warmup_evals` evaluations of the trial, and once `n_startup_trials` comparable complete
   trials have a value at the same step, a trial below their median is stopped. In single-objective mode this is
   Optuna's MedianPruner (via trial.report / should_prune) with the same settings, every complete trial being
   comparable. In Pareto mode the same rule runs here over the stored intermediate values, and only complete
   trials that are NO LARGER (trainable parameters) than this one are comparable: a trial is stopped only when
   smaller trials already do better at this point, i.e. when it is on its way to being dominated. A small trial
   that is weaker than bigger ones may still land on the front's low-cost end, so it is never stopped for that.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from elalora_auto.errors import ConfigError, UserError
from elalora_auto.events import Event, Listener, emit, with_context
from elalora_auto.search.pareto import hypervolume, knee, pareto_front
from elalora_auto.search.space import SearchSpace, read_yaml, resolve_resource

OBJECTIVES = ("pareto", "metric")
JOURNAL_FILE = "optuna-journal.log"
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
MAX_CONSECUTIVE_USER_ERRORS = 3
INTERRUPTED = "interrupted (Ctrl-C)"


@dataclass
class PruningSettings:
    n_startup_trials: int = 3
    n_warmup_evals: int = 1
    baseline_patience: int = 2


@dataclass
class HeartbeatSettings:
    """RDBStorage heartbeat: each running trial records one every `interval_s`; a trial silent for `grace_s`
    is failed and re-queued by the next worker that starts a trial. Unused by the journal file storage."""

    interval_s: int = HEARTBEAT_INTERVAL_S
    grace_s: int = GRACE_PERIOD_S

    def validate(self) -> None:
        for name in ("interval_s", "grace_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"heartbeat.{name}: expected a positive whole number of seconds, got {value!r}")
        if self.grace_s <= self.interval_s:
            raise ConfigError(f"heartbeat.grace_s ({self.grace_s}) must be larger than heartbeat.interval_s "
                              f"({self.interval_s}), or live trials are failed between two heartbeats")


@dataclass
class SearchSettings:
    """Every option of `search`; a study YAML (`--config`) holds any of them, flags override the file.

    Stored in the study's user attrs at creation, so `worker` needs only the study name and storage.
    """

    task: str | None = None
    model: str = "minilm"
    method: str = "elalora"
    space: str | None = None  # a built-in name or a .yaml path; default: the method's name
    trials: int = 20
    data_dir: str | None = None
    custom: dict[str, Any] | None = None  # tasks.custom_task keyword arguments (but name: it is `task`)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    batch_size: int = 16
    max_length: int = 128
    eval_every: int | None = None  # default: a quarter of the run (three intermediate evaluations)
    objective: str = "pareto"
    max_params: int | None = None
    timeout: float | None = None
    seed: int = 42
    device: str = "auto"
    study: str | None = None
    storage: str | None = None
    workdir: str = "elalora_runs"
    tracking_uri: str | None = None
    no_tracking: bool = False
    trial0: dict[str, Any] = field(default_factory=dict)  # overrides of the space defaults for trial 0
    pruning: PruningSettings = field(default_factory=PruningSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)

    @classmethod
    def from_sources(cls, config: str | None, overrides: Mapping[str, Any]) -> "SearchSettings":
        """The study file (a path or a built-in name like `demo`), then the non-None flags on top."""
        data: dict[str, Any] = {}
        if config is not None:
            path = resolve_resource(config, "studies")
            loaded = read_yaml(path)
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path.name}: expected a mapping of search options")
            data = loaded
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown search option {unknown[0]!r} (valid: {', '.join(sorted(known))})")
        data = dict(data)
        pruning = data.get("pruning") or {}
        try:
            data["pruning"] = pruning if isinstance(pruning, PruningSettings) else PruningSettings(**pruning)
        except TypeError:
            raise ConfigError(f"pruning: valid keys are {', '.join(f.name for f in dataclasses.fields(PruningSettings))}") from None
        heartbeat = data.get("heartbeat") or {}
        try:
            if not isinstance(heartbeat, (HeartbeatSettings, dict)):
                raise TypeError
            data["heartbeat"] = heartbeat if isinstance(heartbeat, HeartbeatSettings) else HeartbeatSettings(**heartbeat)
        except TypeError:
            raise ConfigError("heartbeat: expected a mapping with the keys "
                              f"{', '.join(f.name for f in dataclasses.fields(HeartbeatSettings))}") from None
        data["heartbeat"].validate()
        settings = cls(**data)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.task:
            raise UserError("no task: pass --task NAME (e.g. sst2) or set task: in the --config file")
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective {self.objective!r}: choose pareto or metric")
        if self.trials < 1:
            raise UserError(f"--trials must be at least 1, got {self.trials}")
        if self.max_steps is not None and self.epochs is not None:
            raise UserError("give --max-steps or --epochs, not both")
        if self.max_params is not None and self.objective != "metric":
            raise UserError("--max-params caps a single-objective search: add --objective metric "
                            "(the Pareto front already shows every size)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def study_name(self) -> str:
        model = "minilm" if self.model == "minilm" else Path(self.model.rstrip("/")).name
        return self.study or f"{self.task}-{model}-{self.method}"


# ---------------------------------------------------------------------------------------------------- storage
def storage_uri(settings_storage: str | None, workdir: str | Path) -> str:
    """The storage as a URI for messages and events (the journal file as its path)."""
    return settings_storage or str((Path(workdir) / JOURNAL_FILE).resolve())


def open_storage(uri: str | None, workdir: str | Path, create: bool = True,
                 heartbeat: HeartbeatSettings | None = None) -> Any:
    """JournalStorage on WORKDIR/optuna-journal.log by default (or a given *.log path), else RDBStorage with
    `heartbeat`'s timing (default 60 s / 180 s; pass the study's own to run trials)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    heartbeat = heartbeat or HeartbeatSettings()
    if uri is None or "://" not in uri:
        path = Path(uri) if uri else Path(workdir) / JOURNAL_FILE
        if not path.exists() and not create:
            raise UserError(f"no study storage at {path}; run `elalora-auto search` first or pass --storage/--workdir")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat, retry
            return RDBStorage(
                _with_installed_driver(uri),
                heartbeat_interval=heartbeat.interval_s,
                grace_period=heartbeat.grace_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except ImportError as exc:
        raise UserError(f"storage {_redact(uri)}: missing driver ({exc}); for PostgreSQL: pip install psycopg2-binary") from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError, ...; optuna wraps none of them
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open storage {_redact(uri)}: {first}") from None


def _with_installed_driver(uri: str) -> str:
    """postgresql:// with whichever PostgreSQL driver is installed (SQLAlchemy 2.1 assumes psycopg 3; this
    project's `postgres` extra installs psycopg2)."""
    import importlib.util

    scheme, sep, rest = uri.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2{sep}{rest}"
    return uri


def _redact(uri: str) -> str:
    """Hide a password in a database URL before printing it."""
    scheme, sep, rest = uri.partition("://")
    if "@" not in rest:
        return uri
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':')[0]}:***{at}{host}" if ":" in creds else uri


def load_study(name: str | None, storage: Any) -> Any:
    """An existing study; with no name, the only study in the storage."""
    import optuna

    names = optuna.get_all_study_names(storage=storage)
    if name is None:
        if len(names) != 1:
            raise UserError(f"pass --study NAME; studies in this storage: {', '.join(names) or 'none'}")
        name = names[0]
    if name not in names:
        raise UserError(f"no study {name!r} in this storage (studies: {', '.join(names) or 'none'}); "
                        "create it with `elalora-auto search`")
    return optuna.load_study(study_name=name, storage=storage)


# ---------------------------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    """What every trial of a study shares, checked once before the study is created or joined."""

    settings: SearchSettings
    space: SearchSpace
    task: Any  # tasks.TaskSpec
    model_path: str
    model_type: str
    total_steps: int
    eval_every: int
    primary_metric: str
    baseline: float | None  # the majority-class value of the primary metric
    baseline_margin: float

    @property
    def multi(self) -> bool:
        return self.settings.objective == "pareto"


def prepare(settings: SearchSettings) -> Prepared:
    """Validate everything a trial would trip over (task, data, space, modules, model) and size the run.

    Runs before the study is touched, so a bad input leaves the storage as it was.
    """
    import numpy as np

    from elalora_auto.tasks import compute_metrics, custom_task, get_task, load_task_data
    from elalora_auto.trial import TrainingSettings

    space = SearchSpace.load(settings.space or settings.method)
    if space.method != settings.method:
        raise UserError(f"the space {space.source} is for {space.method}, but --method is {settings.method}; "
                        f"pass --method {space.method} or another --space")
    training_fields = {f.name for f in dataclasses.fields(TrainingSettings)}
    bad = [p.name for p in space.params if p.section == "training_params" and p.name not in training_fields]
    if bad:
        raise ConfigError(f"{space.source}: training_params.{bad[0]}: not a training setting "
                          f"(valid: {', '.join(sorted(training_fields))})")
    task = custom_task(name=settings.task, **settings.custom) if settings.custom else get_task(settings.task)
    data = load_task_data(task, data_dir=settings.data_dir, max_train_samples=settings.max_train_samples,
                          max_eval_samples=settings.max_eval_samples, seed=0)
    if len(data.train) == 0 or not data.evals:
        raise UserError(f"task {task.name}: no training rows or no evaluation split found")
    from elalora_auto.trial import resolve_model

    model_path = resolve_model(settings.model)
    model_type = check_target_modules(model_path, task.num_labels, space)
    if settings.max_steps is not None:
        total_steps = int(settings.max_steps)
    else:
        total_steps = max(1, math.ceil((settings.epochs or 1.0) * len(data.train) / settings.batch_size))
    if total_steps < 4:
        raise UserError(f"a run of {total_steps} steps is too short for a schedule; use --max-steps 4 or more")
    eval_every = settings.eval_every or max(1, total_steps // 4)

    first_split = next(iter(data.evals.values()))
    labels = np.asarray(first_split["label"])
    baseline, margin = None, 0.02
    if not task.is_regression:
        majority = np.bincount(labels.astype(int), minlength=task.num_labels).argmax()
        baseline = compute_metrics(task, np.full_like(labels, majority), labels)[task.primary_metric]
        if task.primary_metric == "accuracy":
            margin = max(margin, 2 * math.sqrt(baseline * (1 - baseline) / len(labels)))
    return Prepared(settings, space, task, model_path, model_type, total_steps, eval_every,
                    task.primary_metric, baseline, margin)


def check_target_modules(model_path: str, num_labels: int, space: SearchSpace) -> str:
    """Every module name of every set must exist in the model (checked on a weightless 'meta' copy).

    Returns the model_type, which picks the space's module aliases.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from elalora_auto.method.config import ElaLoraConfig

    try:
        config = AutoConfig.from_pretrained(model_path, num_labels=num_labels)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {model_path!r} ({type(exc).__name__}); pass --model PATH to a local "
                        "model folder, or --model minilm") from None
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    for set_name in space.module_sets:
        try:
            ElaLoraConfig(target_modules=space.module_names(set_name, config.model_type)).match_targets(model)
        except ConfigError as exc:
            raise ConfigError(f"{space.source}: module_sets.{set_name}: {exc} in {config.model_type} "
                              f"(add module_aliases.{config.model_type})") from None
    return config.model_type


# ---------------------------------------------------------------------------------------------- the study
def create_or_load_study(prepared: Prepared, storage: Any) -> tuple[Any, bool]:
    """The study, created with its settings and trial 0 on first use; on later runs loaded as it is.

    Trial 0 is enqueued only at creation, so resuming never runs the default configuration twice.
    """
    import optuna

    settings = prepared.settings
    name = settings.study_name
    if name in optuna.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        stored = study.user_attrs.get("settings", {})
        for key in ("task", "model", "method", "objective"):
            if stored.get(key) != getattr(settings, key):
                raise UserError(f"study {name!r} exists with {key}={stored.get(key)!r}, not {getattr(settings, key)!r}; "
                                "pass another --study name")
        if isinstance(storage, optuna.storages.RDBStorage) and stored.get("heartbeat", dataclasses.asdict(
                HeartbeatSettings())) != dataclasses.asdict(settings.heartbeat):
            raise UserError(f"study {name!r} exists with heartbeat={stored.get('heartbeat')!r}, not "
                            f"{dataclasses.asdict(settings.heartbeat)!r}: its workers must share one timing; "
                            "set heartbeat: to the stored values or pass another --study name")
        if stored.get("trials") != settings.trials:
            study.set_user_attr("settings", {**stored, "trials": settings.trials})
        return study, False
    directions = ["maximize", "minimize"] if prepared.multi else ["maximize"]
    default = prepared.space.default_params(settings.trial0)
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([prepared.primary_metric, "trainable_params"][: len(directions)])
    study.set_user_attr("settings", {**settings.to_dict(), "primary_metric": prepared.primary_metric,
                                     "baseline": prepared.baseline})
    study.enqueue_trial(default, user_attrs={"origin": "default (authors' configuration)"})
    return study, True


def counted_trials(study: Any) -> int:
    """Trials toward the budget: all states, running and waiting included; a re-queued trial counts once and
    a trial stopped by Ctrl-C not at all (the resumed run replaces it)."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.number not in retried and t.user_attrs.get("fail_reason") != INTERRUPTED for t in trials)


def recover_orphans(study: Any) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process on this host is gone (a crash, a kill -9).

    RDBStorage finds those by heartbeat; the journal file has none, so the worker's host:pid recorded on each
    trial decides. Trials of live processes, or of other hosts, are left alone.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    host, recovered = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:  # another worker (or Optuna's heartbeat check) may fail the same orphan first
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker process {pid} died")
            failed = study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if failed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the retry callback is marked experimental
                RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study._storage.get_trial(trial._trial_id))
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


@dataclass
class PruningRule:
    """See the module docstring. `check` records the value and raises optuna.TrialPruned to stop the trial."""

    settings: PruningSettings
    multi: bool
    baseline: float | None
    margin: float

    def check(self, trial: Any, step: int, value: float, size: int) -> None:
        """`value` is the primary metric at `step`; `size` the trial's current trainable-parameter count."""
        from optuna.trial import TrialState

        history = {**trial.user_attrs.get("intermediate", {}), str(step): value}
        trial.set_user_attr("intermediate", history)
        values = list(history.values())
        patience = self.settings.baseline_patience
        if self.baseline is not None and len(values) >= patience and all(
                v <= self.baseline + self.margin for v in values[-patience:]):
            self._prune(trial, f"stuck at the majority-class baseline {self.baseline:.4f} (+{self.margin:.4f}) "
                               f"for {patience} evaluations (last {value:.4f} at step {step})")
        if len(values) <= self.settings.n_warmup_evals:
            return
        if not self.multi:
            trial.report(value, step)
            if trial.should_prune():
                self._prune(trial, f"below the median of earlier trials at step {step} ({value:.4f})")
            return
        peers = [t.user_attrs["intermediate"][str(step)]
                 for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if str(step) in t.user_attrs.get("intermediate", {})
                 and t.user_attrs.get("trainable_params", math.inf) <= size]
        if len(peers) >= self.settings.n_startup_trials and value < statistics.median(peers):
            self._prune(trial, f"{value:.4f} at step {step} is below the median {statistics.median(peers):.4f} "
                               f"of {len(peers)} complete trials no larger than this one ({size:,} parameters)")

    @staticmethod
    def _prune(trial: Any, reason: str) -> None:
        import optuna

        trial.set_user_attr("prune_reason", reason)
        raise optuna.TrialPruned(reason)


def make_pruner(prepared: Prepared) -> Any:
    """Optuna's MedianPruner for single-objective studies; multi-objective ones prune by PruningRule alone."""
    import optuna

    if prepared.multi:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=prepared.settings.pruning.n_startup_trials,
                                       n_warmup_steps=0)


def _rank_summary(rank_map: Mapping[str, int]) -> dict[str, float]:
    ranks = list(rank_map.values()) or [0]
    return {"min": min(ranks), "mean": round(sum(ranks) / len(ranks), 2), "max": max(ranks), "total": sum(ranks)}


def _failure_types() -> tuple[type[BaseException], ...]:
    """What fails one trial but not the study: divergence, out of memory, a bad sampled config or data."""
    import torch

    from elalora_auto.trial import NonFiniteLossError

    return NonFiniteLossError, torch.OutOfMemoryError, UserError


def run_worker(prepared: Prepared, study: Any, storage_label: str, listeners: Iterable[Listener] = (),
               progress: bool = False, seed: int | None = None, echo: Callable[[str], None] = print) -> None:
    """Run trials until the study holds `trials` of them (or the timeout passes), emitting study events.

    `seed` seeds the sampler (the `search` process; extra workers leave it None so they do not propose the
    same configurations as each other).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from `finished` instead

    from elalora_auto.trial import DataSettings, TrainingSettings, TrialSpec, run_trial

    settings, listeners = prepared.settings, list(listeners)
    study.pruner = make_pruner(prepared)
    study.sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    budget = int(study.user_attrs.get("settings", {}).get("trials", settings.trials))
    rule = PruningRule(settings.pruning, prepared.multi, prepared.baseline, prepared.baseline_margin)
    trials_dir = Path(settings.workdir) / "trials" / study.study_name
    failures = _failure_types()
    results: dict[int, dict[str, Any]] = {}
    user_errors: list[str] = []
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> Any:
        trial.set_user_attr("worker", worker)
        method_params, overrides = prepared.space.suggest(
            trial, {"total_steps": prepared.total_steps, "model_type": prepared.model_type})
        training = TrainingSettings(max_steps=prepared.total_steps, batch_size=settings.batch_size,
                                    eval_every=prepared.eval_every, max_length=settings.max_length,
                                    seed=settings.seed, device=settings.device)
        spec = TrialSpec(
            task=prepared.task.name, model=prepared.model_path, method=prepared.space.method, params=method_params,
            training=dataclasses.replace(training, **overrides),
            data=DataSettings(data_dir=settings.data_dir, max_train_samples=settings.max_train_samples,
                              max_eval_samples=settings.max_eval_samples,
                              cache_dir=str(Path(settings.workdir) / "cache")),
            custom=settings.custom,
        )
        out = trials_dir / str(trial.number)
        try:
            result = run_trial(spec, reporter=lambda step, value, size: rule.check(trial, step, value, size),
                               listeners=with_context(listeners, trial_number=trial.number,
                                                      study_name=study.study_name),
                               output_dir=out, progress=progress)
        except failures as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", INTERRUPTED)
            raise
        results[trial.number] = {**result.to_dict(), "output_dir": str(out)}
        for key, value in (("primary", result.primary), ("trainable_params", result.trainable_params),
                           ("rank_summary", _rank_summary(result.rank_map)), ("output_dir", str(out)),
                           ("wall_time_s", round(result.wall_time_s, 2))):
            trial.set_user_attr(key, value)
        if not prepared.multi:
            if settings.max_params is not None:
                trial.set_constraint("max_params", result.trainable_params - settings.max_params)
            return result.primary
        return result.primary, result.trainable_params

    def finished(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        reason = frozen.user_attrs.get("fail_reason") or frozen.user_attrs.get("prune_reason")
        result = results.pop(frozen.number, None)
        emit(listeners, Event("trial_finished", frozen.number, {
            "study": study, "study_name": study.study_name, "trial_number": frozen.number,
            "state": frozen.state.name, "reason": reason, "params": dict(frozen.params),
            "values": list(frozen.values) if frozen.values is not None else None, "result": result,
            "output_dir": result["output_dir"] if result else None}))
        if result is not None:
            echo(f"trial {frozen.number}: {prepared.primary_metric} {result['primary']:.4f}, "
                 f"{result['trainable_params']:,} trainable parameters, {len(result['rank_history'])} rank rounds, "
                 f"{result['wall_time_s']:.1f} s")
        else:
            echo(f"trial {frozen.number}: {frozen.state.name.lower()} ({reason})")
        if frozen.state.name == "FAIL" and isinstance(frozen.user_attrs.get("fail_reason"), str) \
                and frozen.user_attrs["fail_reason"].startswith(("UserError", "ConfigError", "DataError")):
            user_errors.append(frozen.user_attrs["fail_reason"])
        else:
            user_errors.clear()

    recover_orphans(study)
    emit(listeners, Event("study_start", 0, {"study": study, "study_name": study.study_name,
                                             "storage": storage_label, "settings": settings.to_dict()}))
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    try:
        while _has_waiting(study) or counted_trials(study) < budget:
            if deadline is not None and time.monotonic() >= deadline:
                break
            study.optimize(objective, n_trials=1, catch=failures, callbacks=[finished])
            if len(user_errors) >= MAX_CONSECUTIVE_USER_ERRORS:
                raise UserError(f"{len(user_errors)} trials in a row failed with: {user_errors[-1]}")
    finally:
        emit(listeners, Event("study_end", 0, {"study": study, "study_name": study.study_name}))


def _has_waiting(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


# ---------------------------------------------------------------------------------------------- summaries
def front_rows(study: Any) -> list[dict[str, Any]]:
    """Complete (and, with --max-params, feasible) trials on the (metric, trainable parameters) front."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "primary" not in t.user_attrs or any(v > 0 for v in t.constraints.values()):
            continue
        rows.append({"number": t.number, "metric": float(t.user_attrs["primary"]),
                     "trainable_params": int(t.user_attrs["trainable_params"]),
                     "rank_summary": t.user_attrs.get("rank_summary", {}), "params": dict(t.params),
                     "output_dir": t.user_attrs.get("output_dir")})
    points = [(r["metric"], float(r["trainable_params"])) for r in rows]
    best_knee = knee(points)
    front = []
    for i in pareto_front(points):
        front.append({**rows[i], "knee": i == best_knee})
    return front


KEY_PARAMS = ("r_init", "r_target", "b", "k", "lora_alpha", "target_modules", "learning_rate")


def format_summary(study: Any) -> str:
    """Trials by state, then the Pareto front as a table (the knee marked with *), then its hypervolume
    against (the majority-class baseline, 1.1 x the largest front size)."""
    from collections import Counter

    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    metric = (study.metric_names or ["metric"])[0]
    lines = [f"study {study.study_name}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))]
    front = front_rows(study)
    if not front:
        return "\n".join(lines + ["no complete trial yet"])
    lines.append(f"Pareto front ({metric} up, trainable parameters down; * = knee):")
    lines.append(f"  {'trial':>5}  {metric[:12]:>12}  {'params':>10}  {'ranks min/mean/max':>18}  hyperparameters")
    for row in front:
        ranks = row["rank_summary"]
        rank_text = f"{ranks.get('min', '-')}/{ranks.get('mean', '-')}/{ranks.get('max', '-')}" if ranks else "-"
        keys = ", ".join(f"{k}={_short(v)}" for k, v in row["params"].items() if k in KEY_PARAMS)
        lines.append(f"{'*' if row['knee'] else ' '} {row['number']:>5}  {row['metric']:>12.4f}  "
                     f"{row['trainable_params']:>10,}  {rank_text:>18}  {keys}")
    baseline = study.user_attrs.get("settings", {}).get("baseline")
    reference = (baseline if baseline is not None else min(r["metric"] for r in front) - 1e-9,
                 max(r["trainable_params"] for r in front) * 1.1)
    points = [(r["metric"], float(r["trainable_params"])) for r in front]
    lines.append(f"hypervolume {hypervolume(points, reference):.4g} (reference: {metric} {reference[0]:.4f}, "
                 f"{reference[1]:,.0f} parameters)")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def settings_for_worker(study: Any, overrides: Mapping[str, Any]) -> SearchSettings:
    """The settings stored at creation, with this worker's local choices (device, workdir, tracking) on top."""
    stored = dict(study.user_attrs.get("settings") or {})
    if not stored:
        raise UserError(f"study {study.study_name!r} has no stored settings; it was not created by elalora-auto search")
    stored.pop("primary_metric", None)
    stored.pop("baseline", None)
    stored.update({k: v for k, v in overrides.items() if v is not None})
    return SearchSettings.from_dict(stored)

