"""What the search keeps on each Optuna trial besides its values: the attribute names in one place, the worker's
write and the one typed reader.

The attributes travel with the storage to every machine that opens the study; a trial's folder (result.json) stays
on the machine that ran it. So a trial's outcome is read from its folder when this machine has it, else from
these attributes (`summary_of_trial`): one source per trial, never a field-by-field mix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elalora_auto.records import TrialSummary, rank_summary
from elalora_auto.spec import TrialResult

FAIL_REASON = "fail_reason"  # the worker (an exception), recover_orphans (a dead process), Ctrl-C
PRUNE_REASON = "prune_reason"  # the pruning rule, or a space constraint before the trial trained
OUTPUT_DIR = "output_dir"
TRAINABLE_PARAMS = "trainable_params"  # also the Pareto median rule's peer filter (search.pruning)
ORIGIN = "origin"  # why the study enqueued the trial (trial 0, an anchor; a re-run keeps it); none on a draw


def summary_of_result(result: TrialResult) -> TrialSummary:
    return TrialSummary(result.trainable_params, result.reason, rank_summary(result.rank_map),
                        dict(result.intermediate_values), result.steps_done, result.device, result.peak_memory_mb,
                        result.examples_per_s, result.wall_time_s)


def summary_of_trial(trial: Any) -> TrialSummary:
    """From an Optuna trial's attributes (any version's: older workers wrote fewer of them) and the values it
    reported. A trial has at most one of the two reasons: each is written by the one party that ended it."""
    attrs = trial.user_attrs
    return TrialSummary(attrs.get(TRAINABLE_PARAMS), attrs.get(FAIL_REASON) or attrs.get(PRUNE_REASON),
                        dict(attrs.get("rank_summary") or {}), dict(trial.intermediate_values),
                        attrs.get("steps_done"), attrs.get("device"), attrs.get("peak_memory_mb"),
                        attrs.get("examples_per_s"), attrs.get("wall_time_s"))


def output_dir(trial: Any) -> Path | None:
    """Where the worker said it wrote the trial's folder (on its own machine)."""
    folder = trial.user_attrs.get(OUTPUT_DIR)
    return None if folder is None else Path(folder)


def summary_attrs(result: TrialResult, out: Path) -> dict[str, Any]:
    """The attributes the worker sets on a complete trial, for every machine that reads the study."""
    return {"primary": result.primary, TRAINABLE_PARAMS: result.trainable_params,
            "rank_summary": rank_summary(result.rank_map), OUTPUT_DIR: str(out),
            "wall_time_s": round(result.wall_time_s, 2), "steps_done": result.steps_done, "device": result.device,
            "peak_memory_mb": result.peak_memory_mb, "examples_per_s": result.examples_per_s}
