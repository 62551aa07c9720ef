"""The trial loop of one worker process: ask Optuna, build a TrialSpec, run it, tell Optuna, emit study events.

`Worker` holds what the loop shares between Optuna's objective and its callback (the results of this
process's trials, the run of user errors), so neither is a closure over mutable dicts. The listeners (e.g. the
MLflow tracker) are handed in by the caller; the search builds none of its own.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import optuna

from elalora_auto.errors import UserError
from elalora_auto.events import Event, Listener, emit, with_context
from elalora_auto.search.plan import StudyPlan
from elalora_auto.search.pruning import PruningRule
from elalora_auto.search.study import INTERRUPTED, counted_trials, recover_orphans

MAX_CONSECUTIVE_USER_ERRORS = 3
USER_ERRORS = ("UserError", "ConfigError", "DataError")


def _rank_summary(rank_map: Mapping[str, int]) -> dict[str, float]:
    ranks = list(rank_map.values()) or [0]
    return {"min": min(ranks), "mean": round(sum(ranks) / len(ranks), 2), "max": max(ranks), "total": sum(ranks)}


def _failure_types() -> tuple[type[BaseException], ...]:
    """What fails one trial but not the study: divergence, out of memory, a bad sampled config or data."""
    import torch

    from elalora_auto.trial import NonFiniteLossError

    return NonFiniteLossError, torch.OutOfMemoryError, UserError


def _has_waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


class Worker:
    """Runs trials until the study holds its budget of them (or the timeout passes).

    `storage` is the backend the study was opened with (orphan recovery uses its public methods). `seed` seeds
    the sampler (the `search` process; extra workers leave it None so they do not propose the same
    configurations as each other).
    """

    def __init__(self, plan: StudyPlan, study: optuna.Study, storage: Any, storage_label: str,
                 listeners: Iterable[Listener] = (), progress: bool = False, seed: int | None = None,
                 echo: Callable[[str], None] = print) -> None:
        self.plan, self.study, self.storage, self.storage_label = plan, study, storage, storage_label
        self.listeners, self.progress, self.echo = list(listeners), progress, echo
        settings = plan.settings
        self.rule = PruningRule(settings.pruning, plan.multi, plan.baseline, plan.baseline_margin)
        study.pruner = self.rule.pruner()
        study.sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        self.budget = int(study.user_attrs.get("settings", {}).get("trials", settings.trials))
        self.trials_dir = Path(settings.workdir) / "trials" / study.study_name
        self.failures = _failure_types()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.results: dict[int, dict[str, Any]] = {}  # this process's finished trials, until `finished` reports them
        self.user_errors: list[str] = []  # consecutive trials failed by bad input

    def run(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from `finished` instead
        study, settings = self.study, self.plan.settings
        recover_orphans(study, self.storage)
        emit(self.listeners, Event("study_start", 0, {"study": study, "study_name": study.study_name,
                                                      "storage": self.storage_label, "backend": self.storage,
                                                      "settings": settings.to_dict()}))
        deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
        try:
            while _has_waiting(study) or counted_trials(study) < self.budget:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                study.optimize(self.objective, n_trials=1, catch=self.failures, callbacks=[self.finished])
                if len(self.user_errors) >= MAX_CONSECUTIVE_USER_ERRORS:
                    raise UserError(f"{len(self.user_errors)} trials in a row failed with: {self.user_errors[-1]}")
        finally:
            emit(self.listeners, Event("study_end", 0, {"study": study, "study_name": study.study_name}))

    def trial_spec(self, trial: optuna.Trial) -> Any:
        """The TrialSpec of this Optuna trial: the space's suggestions on top of the study's settings."""
        from elalora_auto.trial import DataSettings, TrainingSettings, TrialSpec

        plan, settings = self.plan, self.plan.settings
        method_params, overrides = plan.space.suggest(
            trial, {"total_steps": plan.total_steps, "model_type": plan.model_type})
        training = TrainingSettings(max_steps=plan.total_steps, batch_size=settings.batch_size,
                                    eval_every=plan.eval_every, max_length=settings.max_length,
                                    seed=settings.seed, device=settings.device)
        return TrialSpec(
            task=plan.task.name, model=plan.model_path, method=plan.space.method, params=method_params,
            training=dataclasses.replace(training, **overrides),
            data=DataSettings(data_dir=settings.data_dir, max_train_samples=settings.max_train_samples,
                              max_eval_samples=settings.max_eval_samples,
                              cache_dir=str(Path(settings.workdir) / "cache")),
            custom=settings.custom,
        )

    def objective(self, trial: optuna.Trial) -> Any:
        from elalora_auto.trial import run_trial

        trial.set_user_attr("worker", self.worker_id)
        spec = self.trial_spec(trial)
        out = self.trials_dir / str(trial.number)
        try:
            result = run_trial(spec, reporter=lambda step, value, size: self.rule.check(trial, step, value, size),
                               listeners=with_context(self.listeners, trial_number=trial.number,
                                                      study_name=self.study.study_name),
                               output_dir=out, progress=self.progress)
        except self.failures as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", INTERRUPTED)
            raise
        self.results[trial.number] = {**result.to_dict(), "output_dir": str(out)}
        for key, value in (("primary", result.primary), ("trainable_params", result.trainable_params),
                           ("rank_summary", _rank_summary(result.rank_map)), ("output_dir", str(out)),
                           ("wall_time_s", round(result.wall_time_s, 2))):
            trial.set_user_attr(key, value)
        if self.plan.multi:
            return result.primary, result.trainable_params
        if self.plan.settings.max_params is not None:
            trial.set_constraint("max_params", result.trainable_params - self.plan.settings.max_params)
        return result.primary

    def finished(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Optuna's callback after each trial: the `trial_finished` event, one line, the user-error count."""
        reason = frozen.user_attrs.get("fail_reason") or frozen.user_attrs.get("prune_reason")
        result = self.results.pop(frozen.number, None)
        emit(self.listeners, Event("trial_finished", frozen.number, {
            "study": study, "study_name": study.study_name, "trial_number": frozen.number,
            "state": frozen.state.name, "reason": reason, "params": dict(frozen.params),
            "values": list(frozen.values) if frozen.values is not None else None, "result": result,
            "output_dir": result["output_dir"] if result else None}))
        if result is not None:
            self.echo(f"trial {frozen.number}: {self.plan.primary_metric} {result['primary']:.4f}, "
                      f"{result['trainable_params']:,} trainable parameters, {len(result['rank_history'])} rank "
                      f"rounds, {result['wall_time_s']:.1f} s")
        else:
            self.echo(f"trial {frozen.number}: {frozen.state.name.lower()} ({reason})")
        fail_reason = frozen.user_attrs.get("fail_reason")
        if frozen.state.name == "FAIL" and isinstance(fail_reason, str) and fail_reason.startswith(USER_ERRORS):
            self.user_errors.append(fail_reason)
        else:
            self.user_errors.clear()
