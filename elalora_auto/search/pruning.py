"""Pruning: the baseline rule and the median rule, in both objective modes.

Every periodic evaluation of the primary metric is an Optuna intermediate value of its trial in both modes
(optuna-dashboard's intermediate-value and learning-curve plots read them): single-objective through
`trial.report`; Pareto mode through the storage's public `set_trial_intermediate_value`, because Optuna's
`report`/`should_prune` raise for multi-objective studies. So the Pareto mode runs the rules here
(`PruningRule`) over those values; the single-objective mode runs them as an Optuna pruner.
1. Baseline rule (both modes): a trial whose metric stays within two standard errors of the majority-class
   baseline (the metric of always predicting the most frequent eval label; 0.02 for non-accuracy metrics)
   for `baseline_patience` consecutive evaluations has learned nothing and is stopped.
2. Median rule: after `n_warmup_evals` evaluations of the trial, and once `n_startup_trials` comparable complete
   trials have a value at the same step, a trial below their median is stopped. In single-objective mode both
   rules are one Optuna pruner (`BaselineMedianPruner`, reached through trial.report / should_prune; its median
   part is Optuna's MedianPruner), every complete trial being comparable. In Pareto mode only complete trials
   that are NO LARGER (trainable parameters) than this one are comparable: a trial is stopped only when smaller
   trials already do better at this point, i.e. when it is on its way to being dominated. A small trial that is
   weaker than bigger ones may still land on the front's low-cost end, so it is never stopped for that.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from elalora_auto.search.settings import PruningSettings


def baseline_reason(values: Sequence[float], step: int, settings: PruningSettings, baseline: float | None,
                    margin: float) -> str | None:
    """Why a trial stuck at the majority-class baseline for `baseline_patience` evaluations stops, else None."""
    patience = settings.baseline_patience
    if baseline is None or len(values) < patience or any(v > baseline + margin for v in values[-patience:]):
        return None
    return (f"stuck at the majority-class baseline {baseline:.4f} (+{margin:.4f}) for {patience} evaluations "
            f"(last {values[-1]:.4f} at step {step})")


class BaselineMedianPruner(optuna.pruners.BasePruner):
    """The single-objective pruner: the baseline rule, then Optuna's MedianPruner after the warm-up evaluations.

    `reasons` keeps, per trial number, why `prune` said yes (a pruner sees frozen trials and cannot annotate
    them); the worker reads it in the same process and stores it as the trial's `prune_reason`.
    """

    def __init__(self, settings: PruningSettings, baseline: float | None, margin: float) -> None:
        self.settings, self.baseline, self.margin = settings, baseline, margin
        self._median = optuna.pruners.MedianPruner(n_startup_trials=settings.n_startup_trials, n_warmup_steps=0)
        self.reasons: dict[int, str] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        steps = sorted(trial.intermediate_values)
        if not steps:
            return False
        values = [trial.intermediate_values[s] for s in steps]
        reason = baseline_reason(values, steps[-1], self.settings, self.baseline, self.margin)
        if reason is None and len(values) > self.settings.n_warmup_evals and self._median.prune(study, trial):
            reason = f"below the median of earlier trials at step {steps[-1]} ({values[-1]:.4f})"
        if reason is not None:
            self.reasons[trial.number] = reason
        return reason is not None


@dataclass
class PruningRule:
    """What the worker calls at each evaluation; `check` records the value and raises optuna.TrialPruned.

    Single objective: reports to Optuna, whose pruner (`pruner()`, set on the study) decides. Pareto: the value
    goes to `storage` (the backend the study was opened with; ids from its public lookups), and the baseline
    rule and the size-aware median rule run here over the trials' intermediate values.
    """

    settings: PruningSettings
    multi: bool
    baseline: float | None
    margin: float
    storage: Any = None  # needed in Pareto mode only
    _pruner: BaselineMedianPruner | None = field(default=None, init=False, repr=False)

    def pruner(self) -> optuna.pruners.BasePruner:
        """The pruner the study must carry while this rule checks its trials."""
        if self.multi:
            return optuna.pruners.NopPruner()
        if self._pruner is None:
            self._pruner = BaselineMedianPruner(self.settings, self.baseline, self.margin)
        return self._pruner

    def check(self, trial: optuna.Trial, step: int, value: float, size: int) -> None:
        """`value` is the primary metric at `step`; `size` the trial's current trainable-parameter count."""
        if self.multi:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                self.storage.get_study_id_from_name(trial.study.study_name), trial.number)
            self.storage.set_trial_intermediate_value(trial_id, step, value)
            history = self.storage.get_trial(trial_id).intermediate_values
            reason = self._pareto_reason(trial, step, [history[s] for s in sorted(history)], size)
        else:
            trial.report(value, step)
            reason = self.pruner().reasons.pop(trial.number, None) if trial.should_prune() else None
        if reason is not None:
            trial.set_user_attr("prune_reason", reason)
            raise optuna.TrialPruned(reason)

    def _pareto_reason(self, trial: optuna.Trial, step: int, values: list[float], size: int) -> str | None:
        reason = baseline_reason(values, step, self.settings, self.baseline, self.margin)
        if reason is not None or len(values) <= self.settings.n_warmup_evals:
            return reason
        peers = [t.intermediate_values[step]
                 for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if step in t.intermediate_values and t.user_attrs.get("trainable_params", math.inf) <= size]
        if len(peers) < self.settings.n_startup_trials or values[-1] >= statistics.median(peers):
            return None
        return (f"{values[-1]:.4f} at step {step} is below the median {statistics.median(peers):.4f} "
                f"of {len(peers)} complete trials no larger than this one ({size:,} parameters)")
