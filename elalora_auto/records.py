"""The typed records that cross module boundaries on a trial's way to tracking and export: how a trial ended
(`Ending`), a rank round (`RoundRecord`), the ranks at one step (`RankPoint`) and one trial of a study as its readers
see it (`StudyRow`).

They sit in the lowest layer, so the adapters (which make rounds) and the plots (which draw rows) can share them
with the trial, the results and the tracker. The trial's whole outcome is `spec.TrialResult`, built from these.
Each record has one `to_dict` (JSON: result.json, the tracker's spool file, CSV rows) and, where older files must
still load, one `from_dict`.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # a study's rows carry Optuna's state (results reads it from the trials); nothing here needs Optuna
    from optuna.trial import TrialState


class Ending(enum.Enum):
    """How a trial ended: `TrialResult.state` and `trial_finished`'s state. Our own, not Optuna's TrialState, so the
    trial's data (spec, trial, the tracker's spool) loads without Optuna; the worker maps Optuna's finished state
    onto it (`search.worker`). JSON holds the name."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"

    @classmethod
    def named(cls, name: str | Ending) -> Ending:
        """From its name (as result.json and the spool hold it); ValueError naming the valid ones."""
        if isinstance(name, cls):
            return name
        try:
            return cls[str(name)]
        except KeyError:
            raise ValueError(f"unknown trial ending {name!r}; expected one of {[e.name for e in cls]}") from None


@dataclass(frozen=True)
class RoundRecord:
    """One round that moved ranks, whatever the method. Each method fills its own fields and leaves the rest None:
    ElaLoRA (the method's round dict): round, b, moved, cut, pool_size, pool_short, pruned, grown, adapter_params;
    AdaLoRA and EVA: changed {matrix: (rank before, rank after)}."""

    step: int
    total_rank: int
    changed: Mapping[str, tuple[int, int]] | None = None
    pruned: tuple[tuple[str, int], ...] | None = None  # (matrix, components removed), by matrix name
    grown: tuple[tuple[str, int], ...] | None = None  # (matrix, components added)
    round: int | None = None
    b: int | None = None  # the round's budget: components it may move
    moved: int | None = None
    cut: int | None = None  # components cut by a shrinking budget (final_budget < 1)
    pool_size: int | None = None
    pool_short: bool | None = None  # fewer than b moved, or the budget not yet reached
    adapter_params: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields the method filled (the shape the round had as a dict: rank_rounds.csv, result.json)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        """From a method's round dict or result.json; keys a later version added are dropped (a log, not a
        setting: an older reader shows what it knows)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("pruned", "grown"):
            if values.get(name) is not None:
                values[name] = tuple((str(m), int(n)) for m, n in values[name])
        if values.get("changed") is not None:
            values["changed"] = {str(m): (int(a), int(b)) for m, (a, b) in values["changed"].items()}
        return cls(**values)


@dataclass(frozen=True)
class RankPoint:
    """The ranks of every matrix at one optimizer step (the start, then after each round that moved one)."""

    step: int
    rank_map: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "rank_map": dict(self.rank_map)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankPoint:
        return cls(int(data["step"]), {str(k): int(v) for k, v in data["rank_map"].items()})


@dataclass(frozen=True)
class TrialSummary:
    """What a trial reached, as a study's readers show it: built from its result.json or, where this machine lacks
    its folder, from the attributes the worker set on its Optuna trial (`search.attrs`): one source per trial."""

    trainable_params: int | None = None
    reason: str | None = None  # why it did not complete; None when it did
    rank_summary: Mapping[str, float] = field(default_factory=dict)  # min, mean, max, total
    intermediate_values: Mapping[int, float] = field(default_factory=dict)  # step -> primary metric
    steps_done: int | None = None
    device: str | None = None
    peak_memory_mb: float | None = None
    examples_per_s: float | None = None
    wall_time_s: float | None = None


@dataclass(frozen=True)
class StudyRow:
    """One trial of a study as `results.study_rows` reads it (what `status`, `report`, `export`, the plots and the
    tracker show): state, parameters, constraints and metric from Optuna's record, the size from its values (Pareto
    studies) or from what it reached (`reached`)."""

    number: int
    state: TrialState
    metric: float | None
    trainable_params: int | None
    method: str
    params: Mapping[str, Any]
    reached: TrialSummary = field(default_factory=TrialSummary)
    feasible: bool = True
    schedule_steps: Mapping[str, int] = field(default_factory=dict)  # {name: steps} for fractions of the run
    output_dir: str | None = None
    on_front: bool = False
    knee: bool = False

    @property
    def complete(self) -> bool:
        return self.state.name == "COMPLETE"

    def to_dict(self) -> dict[str, Any]:
        """Plain values, what it reached beside the rest (the state by name): trials.csv, a benchmark's line."""
        reached = {f.name: getattr(self.reached, f.name) for f in dataclasses.fields(self.reached)}
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "reached"}
        return _plain({**own, **reached, "trainable_params": self.trainable_params})


def changed_ranks(step: int, before: Mapping[str, int], after: Mapping[str, int]) -> RoundRecord:
    """The round of a method that reports ranks only (AdaLoRA's masking, EVA's redistribution): what moved."""
    return RoundRecord(step, sum(after.values()),
                       changed={k: (before[k], after[k]) for k in after if before[k] != after[k]})


def rank_summary(rank_map: Mapping[str, int]) -> dict[str, float]:
    """min, mean, max and total of the ranks ({} without any)."""
    ranks = list(rank_map.values())
    if not ranks:
        return {}
    return {"min": min(ranks), "mean": round(sum(ranks) / len(ranks), 2), "max": max(ranks), "total": sum(ranks)}


def _plain(value: Any) -> Any:
    """JSON-ready: states by name, tuples as lists, mappings as dicts."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
