"""One exported trial: what a user keeps from a study.

An export is the trial's stock PEFT LoRA adapter (loadable with no code of this project installed), the
re-runnable TrialSpec YAML that `elalora-auto train --config` reads, and a short model card. The trial is picked
from the rows of `elalora_auto.results` (read from the Optuna storage, the source of truth), so `export` works
with or without MLflow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from elalora_auto.errors import UserError
from elalora_auto.results import complete_rows, front, knee, metric_name, params_line, point, study_rows, trial_result

# -- one exported trial ---------------------------------------------------------------------------------
def pick_trial(rows: Sequence[Mapping[str, Any]], trial: int | None = None, pick: str | None = None,
               max_params: float | None = None) -> Mapping[str, Any]:
    """The trial to export: a number, the best metric (optionally under a parameter cap), or the front's knee."""
    complete = complete_rows(rows)
    if trial is not None:
        for row in rows:
            if row["number"] == trial:
                if row in complete:
                    return row
                if row["state"] == "COMPLETE":
                    raise UserError(f"trial {trial} breaks the study's constraint (--max-params); pick a feasible "
                                    "trial (see `report`)")
                raise UserError(f"trial {trial} is {row['state']}, not COMPLETE; pick a complete trial (see `report`)")
        raise UserError(f"the study has no trial {trial}; see `elalora-auto report` for the trial numbers")
    if max_params is not None:
        complete = [row for row in complete if row["trainable_params"] <= max_params]
        if not complete:
            raise UserError(f"no complete trial has at most {max_params:,.0f} trainable parameters; raise --max-params")
    if not complete:
        raise UserError("the study has no complete trial yet; run more trials first")
    if pick == "knee":
        return complete[knee([point(row) for row in complete])]
    return max(complete, key=lambda row: (row["metric"], -row["trainable_params"]))


def export_trial(study: Any, row: Mapping[str, Any], trial_dir: str | Path, out: str | Path,
                 merge: bool = False) -> Path:
    """Write out/adapter (stock PEFT LoRA), out/config.yaml (TrialSpec + rank map), out/README.md and,
    with `merge`, out/merged (the base model with the adapter folded in)."""
    from elalora_auto.trial import TrialSpec

    trial_dir, out = Path(trial_dir), Path(out)
    if not (trial_dir / "adapter" / "adapter_config.json").is_file():
        raise UserError(f"trial {row['number']} has no saved adapter in {trial_dir}; export needs the workdir the "
                        "search wrote (--workdir) on this machine")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(trial_dir / "adapter", out / "adapter", dirs_exist_ok=True)
    spec = TrialSpec.from_yaml(trial_dir / "config.yaml")
    result = trial_result(trial_dir)
    rank_map = result.get("rank_map") or {}
    # The rank map rides along as comments: TrialSpec rejects unknown keys, and `train --config` re-runs
    # the search from the same hyperparameters (ranks are an outcome of training, not an input).
    comments = "".join(f"#   {name}: {rank}\n" for name, rank in sorted(rank_map.items()))
    (out / "config.yaml").write_text(
        f"# elalora-auto trial {row['number']} of study {study.study_name}; re-run: elalora-auto train --config "
        f"config.yaml\n{spec.to_yaml()}# final rank map ({sum(rank_map.values())} in total):\n{comments}"
    )
    (out / "rank_map.json").write_text(json.dumps(rank_map, indent=1, sort_keys=True))
    rows = study_rows(study, trial_dir.parent)
    from elalora_auto.tasks import resolve_task

    task = resolve_task(spec.task, spec.custom)
    (out / "README.md").write_text(_model_card(study, row, rows, spec, result, task.num_labels))
    if merge:
        _merge(spec, task, out)
    return out


def _merge(spec: Any, task: Any, out: Path) -> None:
    """Fold the adapter into the base weights (PEFT's merge_and_unload) and save a plain transformers model."""
    import copy

    from peft import PeftModel

    from elalora_auto.trial import load_base_model, load_tokenizer

    base, _ = load_base_model(spec.model, task.num_labels, task.problem_type)
    merged = PeftModel.from_pretrained(copy.deepcopy(base), out / "adapter").merge_and_unload()
    merged.save_pretrained(out / "merged")
    load_tokenizer(spec.model).save_pretrained(out / "merged")


def _model_card(study: Any, row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], spec: Any,
                result: Mapping[str, Any], num_labels: int) -> str:
    on_front = front(rows)
    place = (f"on the Pareto front ({[r['number'] for r in on_front].index(row['number']) + 1} of {len(on_front)}, "
             "ordered by size)" if row["on_front"] else "not on the Pareto front (dominated)")
    metric = result.get("primary_metric") or metric_name(study)
    return f"""# {spec.method} adapter for {spec.task} on {spec.model}

Trial {row['number']} of the elalora-auto study `{study.study_name}`.

- task: {spec.task}
- {metric}: {row['metric']:.4f}
- trainable parameters: {int(row['trainable_params']):,}
- place: {place}
- hyperparameters: {params_line(row['params'])}

## Load it with stock PEFT (no elalora-auto needed)

```python
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

base = AutoModelForSequenceClassification.from_pretrained("{spec.model}", num_labels={num_labels})
model = PeftModel.from_pretrained(base, "adapter").eval()
tokenizer = AutoTokenizer.from_pretrained("{spec.model}")
```

`config.yaml` re-runs the trial: `elalora-auto train --config config.yaml`.
"""
