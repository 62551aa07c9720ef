"""Pruning: the baseline rule, then the median rule or successive-halving rungs, in both objective modes.

Every periodic evaluation of the primary metric is an Optuna intermediate value of its trial in both modes
(optuna-dashboard's intermediate-value and learning-curve plots read them): single-objective through
`trial.report`; Pareto mode through the storage's public `set_trial_intermediate_value`, because Optuna's
`report`/`should_prune` raise for multi-objective studies. So the Pareto mode runs the rules here
(`PruningRule`) over those values; the single-objective mode runs them as an Optuna pruner (`BaselinePruner`
around Optuna's own MedianPruner or SuccessiveHalvingPruner).
1. Baseline rule (`median` and `halving`): a trial whose metric stays within two standard errors of the
   majority-class baseline (the metric of always predicting the most frequent eval label; 0.02 for non-accuracy
   metrics) for `baseline_patience` consecutive evaluations has learned nothing and is stopped.
2. `median`: after `n_warmup_evals` evaluations of the trial, and once `n_startup_trials` comparable complete
   trials have a value at the same step, a trial below their median is stopped. Single objective: Optuna's
   MedianPruner, every complete trial being comparable. Pareto mode: only complete trials that are NO LARGER
   (trainable parameters) than this one are comparable: a trial is stopped only when smaller trials already do
   better at this point, i.e. when it is on its way to being dominated. A small trial that is weaker than bigger
   ones may still land on the front's low-cost end, so it is never stopped for that.
3. `halving` (multi-fidelity): rungs at `min_steps * reduction_factor**k` optimizer steps. At a rung, the trial
   goes on only if it is among the best 1/reduction_factor of all trials that reached that rung so far (any state;
   the first ones always go on). Single objective: Optuna's SuccessiveHalvingPruner (asynchronous successive
   halving) on the metric. Pareto mode: "best" is the non-dominated rank of (metric at the rung, trainable
   parameters at the rung) among those trials: whole fronts fill the quota, and the front that overflows it goes
   on whole (`rung_ties: keep`) or only up to the quota, by each point's hypervolume contribution
   (`rung_ties: hypervolume`), or whole until the rung holds `SPLIT_FROM` x reduction_factor trials and split
   from then on (`rung_ties: adaptive`, the default: a rung's first trials are TPE's random start-up, their front
   is thin and its small end is still learning, so a strict quota there loses it). Either way a small trial on
   the rung's front can go on even if bigger ones score more.
4. `none`: values are recorded, nothing is stopped.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from elalora_auto.search.attrs import PRUNE_REASON, TRAINABLE_PARAMS
from elalora_auto.search.pareto import front_ranks, hypervolume, reference_point
from elalora_auto.search.settings import PruningSettings

RUNG_SIZES = "rung_sizes"  # trial user attr: {rung step: trainable parameters there}, for the Pareto rung rule
# A pruned Pareto-mode trial is marked infeasible under this constraint name. Optuna's TPESampler ranks pruned
# trials by their last intermediate value through `study.direction`, which raises for a multi-objective study:
# every Pareto search with a pruned trial crashed once TPE's startup trials were done. As infeasible points (what
# they are as front candidates) TPE counts them among the bad trials without reading their values.
PRUNED = "pruned"
SPLIT_FROM = 3  # `rung_ties: adaptive` splits a rung's overflowing front once it holds this many x reduction_factor


def splits_front(rung_ties: str, n_points: int, reduction_factor: int) -> bool:
    """Whether a rung of `n_points` trials splits the front that overflows its quota (`PruningSettings.rung_ties`)."""
    return rung_ties == "hypervolume" or (rung_ties == "adaptive" and n_points >= SPLIT_FROM * reduction_factor)


def baseline_reason(values: Sequence[float], step: int, settings: PruningSettings, baseline: float | None,
                    margin: float) -> str | None:
    """Why a trial stuck at the majority-class baseline for `baseline_patience` evaluations stops, else None."""
    patience = settings.baseline_patience
    if baseline is None or len(values) < patience or any(v > baseline + margin for v in values[-patience:]):
        return None
    return (f"stuck at the majority-class baseline {baseline:.4f} (+{margin:.4f}) for {patience} evaluations "
            f"(last {values[-1]:.4f} at step {step})")


def median_reason(values: Sequence[float], step: int, size: int, peers: Sequence[float],
                  settings: PruningSettings) -> str | None:
    """The Pareto median rule: why a trial stops, `peers` being the values at `step` of the complete trials no
    larger than it (`size` trainable parameters), else None. Pure, so bench/rung_replay.py replays the same rule."""
    if len(values) <= settings.n_warmup_evals or len(peers) < settings.n_startup_trials:
        return None
    median = statistics.median(peers)
    if values[-1] >= median:
        return None
    return (f"{values[-1]:.4f} at step {step} is below the median {median:.4f} "
            f"of {len(peers)} complete trials no larger than this one ({size:,} parameters)")


def rung_cutoff(points: Sequence[tuple[float, float]], reduction_factor: int,
                reference: tuple[float, float] | None = None) -> tuple[list[int], int, list[bool]]:
    """At a Pareto rung, (metric, size) points: their non-dominated ranks, the quota (the best 1/reduction_factor,
    at least one) and which points go on.

    Whole fronts fill the quota, best first. The front that overflows it is split by each point's hypervolume
    contribution within that front, bounded by `reference` (a metric floor and a size ceiling), so no more than the
    quota goes on; ties on size then favour the smaller adapter. Without a `reference` the whole front goes on
    (`rung_ties: keep`).
    """
    ranks = front_ranks(points)
    kept = max(1, len(points) // reduction_factor)
    cutoff = sorted(ranks)[kept - 1]
    if reference is None:
        return ranks, kept, [rank <= cutoff for rank in ranks]
    tied = [i for i, rank in enumerate(ranks) if rank == cutoff]
    room = kept - sum(rank < cutoff for rank in ranks)
    whole = hypervolume([points[i] for i in tied], reference)
    gain = {i: whole - hypervolume([points[j] for j in tied if j != i], reference) for i in tied}
    chosen = set(sorted(tied, key=lambda i: (-gain[i], points[i][1], -points[i][0]))[:room])
    return ranks, kept, [rank < cutoff or i in chosen for i, rank in enumerate(ranks)]


def rung_of(step: int, rungs: Sequence[int]) -> int | None:
    """The index of the last rung at or before `step` (None before the first)."""
    reached = [k for k, rung in enumerate(rungs) if rung <= step]
    return reached[-1] if reached else None


class BaselinePruner(optuna.pruners.BasePruner):
    """The single-objective pruner: the baseline rule, then Optuna's MedianPruner (after the warm-up evaluations)
    or SuccessiveHalvingPruner (at the rungs), as `settings.rule` says.

    `reasons` keeps, per trial number, why `prune` said yes (a pruner sees frozen trials and cannot annotate
    them); the worker reads it in the same process and stores it as the trial's `prune_reason`.
    """

    def __init__(self, settings: PruningSettings, baseline: float | None, margin: float,
                 rungs: Sequence[int] = ()) -> None:
        self.settings, self.baseline, self.margin, self.rungs = settings, baseline, margin, list(rungs)
        self._inner: optuna.pruners.BasePruner
        if settings.rule == "halving":
            self._inner = optuna.pruners.SuccessiveHalvingPruner(
                min_resource=self.rungs[0], reduction_factor=settings.reduction_factor, min_early_stopping_rate=0)
        else:
            self._inner = optuna.pruners.MedianPruner(n_startup_trials=settings.n_startup_trials, n_warmup_steps=0)
        self.reasons: dict[int, str] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        steps = sorted(trial.intermediate_values)
        if not steps:
            return False
        values = [trial.intermediate_values[s] for s in steps]
        reason = baseline_reason(values, steps[-1], self.settings, self.baseline, self.margin)
        if reason is None:
            reason = self._inner_reason(study, trial, steps[-1], values)
        if reason is not None:
            self.reasons[trial.number] = reason
        return reason is not None

    def _inner_reason(self, study: optuna.Study, trial: FrozenTrial, step: int, values: list[float]) -> str | None:
        if self.settings.rule == "halving":
            if not self._inner.prune(study, trial):
                return None
            rung = rung_of(step, self.rungs)
            return (f"not among the best 1/{self.settings.reduction_factor} of the trials at rung {rung} "
                    f"(step {self.rungs[rung or 0]}): {values[-1]:.4f}")
        if len(values) > self.settings.n_warmup_evals and self._inner.prune(study, trial):
            return f"below the median of earlier trials at step {step} ({values[-1]:.4f})"
        return None


@dataclass
class PruningRule:
    """What the worker calls at each evaluation; `check` records the value and raises optuna.TrialPruned.

    Single objective: reports to Optuna, whose pruner (`pruner()`, set on the study) decides. Pareto: the value
    goes to `storage` (the backend the study was opened with; ids from its public lookups), and the baseline
    rule and the size-aware median or rung rule run here over the trials' intermediate values. `rungs` are the
    halving rule's rung steps (`PruningSettings.rungs`).
    """

    settings: PruningSettings
    multi: bool
    baseline: float | None
    margin: float
    storage: Any = None  # needed in Pareto mode only
    rungs: Sequence[int] = ()
    _pruner: BaselinePruner | None = field(default=None, init=False, repr=False)

    def pruner(self) -> optuna.pruners.BasePruner:
        """The pruner the study must carry while this rule checks its trials."""
        if self.multi or self.settings.rule == "none":
            return optuna.pruners.NopPruner()
        if self._pruner is None:
            self._pruner = BaselinePruner(self.settings, self.baseline, self.margin, self.rungs)
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
            reason = self._pruner.reasons.pop(trial.number, None) if trial.should_prune() and self._pruner else None
        if reason is not None:
            trial.set_user_attr(PRUNE_REASON, reason)
            if self.multi:  # Optuna's TPE cannot rank pruned multi-objective trials by their values (see PRUNED)
                trial.set_constraint(PRUNED, 1.0)
            raise optuna.TrialPruned(reason)

    def _pareto_reason(self, trial: optuna.Trial, step: int, values: list[float], size: int) -> str | None:
        if self.settings.rule == "none":
            return None
        reason = baseline_reason(values, step, self.settings, self.baseline, self.margin)
        if reason is not None:
            return reason
        if self.settings.rule == "halving":
            return self._rung_reason(trial, step, values[-1], size)
        if len(values) <= self.settings.n_warmup_evals:  # spares the trial listing; median_reason checks it too
            return None
        peers = [t.intermediate_values[step]
                 for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if step in t.intermediate_values and t.user_attrs.get(TRAINABLE_PARAMS, math.inf) <= size]
        return median_reason(values, step, size, peers, self.settings)

    def _rung_reason(self, trial: optuna.Trial, step: int, value: float, size: int) -> str | None:
        """At a rung: go on if the trial is among the best 1/reduction_factor there (`rung_cutoff`)."""
        if step not in self.rungs:
            return None
        sizes = {**trial.user_attrs.get(RUNG_SIZES, {}), str(step): size}
        trial.set_user_attr(RUNG_SIZES, sizes)
        points = [(value, float(size))] + [
            (t.intermediate_values[step], float(t.user_attrs[RUNG_SIZES][str(step)]))
            for t in trial.study.get_trials(deepcopy=False)
            if t.number != trial.number and step in t.intermediate_values
            and str(step) in t.user_attrs.get(RUNG_SIZES, {})]
        split = splits_front(self.settings.rung_ties, len(points), self.settings.reduction_factor)
        ranks, kept, goes_on = rung_cutoff(points, self.settings.reduction_factor,
                                           reference_point(points, self.baseline) if split else None)
        if goes_on[0]:
            return None
        order = "by front, then by hypervolume contribution" if split else "by front"
        return (f"at rung {self.rungs.index(step)} (step {step}), {value:.4f} with {size:,} parameters is on "
                f"non-dominated front {ranks[0] + 1} of {len(points)} trials; only the best {kept} "
                f"(1/{self.settings.reduction_factor}, {order}) go on")
