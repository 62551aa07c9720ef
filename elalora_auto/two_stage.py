"""Two-stage trials (ElaLoRA's `retrain: lora`, issue 27.3): ElaLoRA finds the rank map, a stock PEFT LoRA with that
`rank_pattern` retrains from scratch, and that LoRA is the trial's result and its exported adapter.

`trial.run_trial` runs the stages; this module holds what passes between them, on the trial's own objects:
- stage 1 is the ElaLoRA run `trial.setup_trial` builds from the configuration's `adapters.RetrainPlan`:
  round(search_fraction x the trial's steps) steps, its schedule scaled with them, the trial's seed and data. Its
  events carry `stage: "search"` (the tracker logs them as `search_*` metrics); no pruning reporter sees them,
  as its metric is another model's, not the objective.
- stage 2 is the TrialSpec `retrain_spec` writes: a `--method lora` trial with stage 1's final ranks as its
  rank_pattern, the trial's full steps and training settings, re-seeded, so it is exactly that LoRA trial run on its
  own (tests/test_two_stage.py checks it). Its evaluations are the trial's: the pruner sees them at stage 2's steps,
  where a one-stage trial's adapter has trained as long, at the same point of the same learning-rate schedule.
- the TrialResult is stage 2's, with stage 1 as `search_stage`; `steps` and `steps_done` count both stages.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from elalora_auto.records import RoundRecord
from elalora_auto.spec import SearchStage, TrialSpec

if TYPE_CHECKING:
    from elalora_auto.adapters import RetrainPlan

SEARCH = "search"  # the `stage` of stage 1's events


def retrain_spec(spec: TrialSpec, plan: RetrainPlan, rank_map: Mapping[str, int]) -> TrialSpec:
    """Stage 2: the LoRA trial of stage 1's final `rank_map` (modules at rank 0 left out), the trial's heads, its
    full run (`plan.total_steps`) and every other setting of `spec`."""
    params = plan.retrain_params(rank_map)
    if "modules_to_save" in spec.params:
        params["modules_to_save"] = spec.params["modules_to_save"]
    training = dataclasses.replace(spec.training, max_steps=plan.total_steps, epochs=None)
    return dataclasses.replace(spec, method=plan.method, params=params, training=training)


def search_record(setup: Any, out: Any) -> SearchStage:
    """Stage 1 as recorded (`setup`: its trial.TrialSetup; `out`: the trial.LoopOutcome it filled)."""
    return SearchStage(
        method=setup.adapter.method, steps=setup.total_steps, steps_done=out.steps_done,
        primary=out.metrics.get(setup.primary_key), metrics=dict(out.metrics),
        trainable_params=setup.adapter.num_trainable_parameters(), rank_map=setup.adapter.rank_map(),
        eval_history=list(out.eval_history), train_loss_history=list(out.loss_history))


def after_search(out: Any, rounds: Iterable[RoundRecord]) -> Any:
    """The trial's LoopOutcome for stage 2: stage 1's costs (time, examples, steps) and rank evolution carried, its
    measurements (now in the SearchStage) cleared, its `rounds` kept for the trial's rank history."""
    return dataclasses.replace(out, metrics={}, eval_history=[], loss_history=[], rank_maps=list(out.rank_maps),
                               search_rounds=list(rounds))


def rank_map_of(adapter: Any, search: SearchStage | None) -> dict[str, int]:
    """The trial's rank map: its adapter's, and for a two-stage trial every matrix stage 1 adapted (those it left at
    rank 0, which stage 2 does not target, at 0), so it reads as an ElaLoRA trial's map does."""
    ranks = adapter.rank_map()
    return ranks if search is None else {**dict.fromkeys(search.rank_map, 0), **ranks}


def planned_steps(setup: Any, search: SearchStage | None) -> int:
    """The trial's planned optimizer steps, both stages: `setup` is stage 1's (its plan names stage 2's length) or
    stage 2's (after `search`), or a one-stage trial's."""
    if setup.retrain is not None:
        return setup.total_steps + setup.retrain.total_steps
    return setup.total_steps + (search.steps if search is not None else 0)
