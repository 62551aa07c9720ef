"""The trial's write step, for every ending: what a trial folder holds and what the `trial_end` event carries.

A trial ends COMPLETE, PRUNED (the reporter raised optuna.TrialPruned) or FAIL (any other exception). Each
ending leaves the same record, so a pruned trial is as visible as a complete one:

  config.yaml        the re-runnable TrialSpec                                      every ending
  result.json        TrialResult: state, reason, metrics, intermediate values,       every ending
                     trainable_params, rank_map, rank_history, timings, device, memory
  rank_map.json      the ranks when the trial ended (the final ones, or where a       once the adapter exists
  rank_heatmap.png   pruned/failed trial stopped)
  rank_evolution.png each matrix's rank against the step                            once a round moved a rank
  adapter/           stock PEFT LoRA (the adapter's export_lora)                      COMPLETE only
                     (a two-stage trial's: its stage-2 LoRA with rank_pattern)

Adapters are kept for complete trials only: a pruned or failed one was stopped before its schedule ended (its
ranks and weights are half-way), `export` accepts complete trials only, and on a GPU study the skipped
adapters are most of the disk a study would use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from elalora_auto.events import Event, Listener, emit
from elalora_auto.records import Ending
from elalora_auto.spec import TrialResult, TrialSpec

RESULT_FILE = "result.json"


def ending_of(exc: BaseException) -> tuple[Ending, str]:
    """(state, reason) of a trial stopped by `exc`: optuna.TrialPruned (the search's reporter) is PRUNED, anything
    else FAIL. Optuna is imported here, on a trial's failure only: a trial outside a search needs none of it."""
    import optuna

    if isinstance(exc, optuna.TrialPruned):
        return Ending.PRUNED, str(exc) or "pruned by the search's pruner"
    return Ending.FAIL, (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0]


def device_name(device: Any) -> str:
    """"cpu", or the CUDA device's name (e.g. "NVIDIA H200")."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device.type)


def peak_memory_mb(device: Any) -> float | None:
    """Peak accelerator memory since the trial's setup reset it, in MiB; None on CPU (see TrialResult)."""
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def read_result(trial_dir: str | Path | None) -> TrialResult | None:
    """A trial folder's result.json (any version's) as a TrialResult; None without a folder or before the trial
    ended (the file is written last)."""
    path = None if trial_dir is None else Path(trial_dir) / RESULT_FILE
    if path is None or not path.is_file():
        return None
    return TrialResult.from_dict(json.loads(path.read_text()))


def write_trial_output(out: Path, spec: TrialSpec, result: TrialResult, adapter: Any | None) -> None:
    """The trial folder for `result.state` (the table in the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    spec.to_yaml(out / "config.yaml")
    if result.rank_map:
        from elalora_auto import plots

        (out / "rank_map.json").write_text(json.dumps(result.rank_map, indent=1, sort_keys=True))
        when = ("final rank per matrix" if result.state == Ending.COMPLETE
                else f"rank per matrix, {result.state.name.lower()} at step {result.steps_done}")
        plots.rank_heatmap(result.rank_map, out / "rank_heatmap.png", when)
        if len(result.rank_evolution) > 1:
            plots.rank_evolution(result.rank_points(), out / "rank_evolution.png")
    if result.state == Ending.COMPLETE and adapter is not None:
        adapter.export_lora(out / "adapter", base_model_name_or_path=spec.model)
    # Last: a result.json means the folder is whole (readers take its presence as "this trial ended").
    (out / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2))


def finish_trial(spec: TrialSpec, result: TrialResult, adapter: Any | None, output_dir: str | Path | None,
                 listeners: Iterable[Listener], failing: BaseException | None = None) -> None:
    """Write the folder (with `output_dir`) and emit `trial_end` {result: the TrialResult itself, output_dir}.

    While `failing` propagates, an error of the write step is attached to it as a note instead of replacing it:
    the trial's own error is the one the search must record.
    """
    try:
        if output_dir is not None:
            write_trial_output(Path(output_dir), spec, result, adapter)
    except Exception as exc:
        if failing is None:
            raise
        failing.add_note(f"writing the trial folder {output_dir} failed too: {type(exc).__name__}: {exc}")
    emit(list(listeners), Event("trial_end", result.steps_done, {
        "result": result, "output_dir": None if output_dir is None else str(output_dir)}))
