"""From a finished study to things a user keeps: the trial table, the report folder, and one exported trial.

An export is the trial's stock PEFT LoRA adapter (loadable with no code of this project installed), the
re-runnable TrialSpec YAML that `elalora-auto train --config` reads, and a short model card. Trial rows are
read from the Optuna storage (the source of truth), so `report` and `export` work with or without MLflow.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from elalora_auto.errors import UserError

REPORT_FILES = ("pareto_front.png", "pareto_front.html", "trials.csv", "optuna_history.html",
                "optuna_importance.html")


# -- reading a study ------------------------------------------------------------------------------------
def study_settings(study: Any) -> dict[str, Any]:
    """The search settings stored on the study at creation (task, model, method, ...); {} when absent."""
    attrs = study.user_attrs
    settings = attrs.get("settings", attrs)
    return dict(settings) if isinstance(settings, Mapping) else {}


def metric_name(study: Any) -> str:
    """Name of the optimised metric: Optuna's metric names when set, else the settings, else 'metric'."""
    names = getattr(study, "metric_names", None)
    if names and names[0]:
        return str(names[0])
    settings = study_settings(study)
    return str(settings.get("metric") or settings.get("primary_metric") or "metric")


def study_rows(study: Any, trials_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per trial: number, state, metric, trainable_params, method, params, reason, on_front.

    Multi-objective studies carry (metric, trainable parameters) as their values; single-objective ones
    keep the parameter count in the trial's user attrs or, failing that, its result.json.
    """
    default_method = str(study_settings(study).get("method", "elalora"))
    rows = []
    for trial in study.get_trials(deepcopy=False):
        values = list(trial.values or [])
        metric = values[0] if values else None
        count = values[1] if len(values) > 1 else trial.user_attrs.get("trainable_params")
        if count is None and values and trials_dir is not None:
            count = _result_json(Path(trials_dir) / str(trial.number)).get("trainable_params")
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "metric": metric,
            "trainable_params": count,
            "method": str(trial.params.get("method", default_method)),
            "params": dict(trial.params),
            "reason": trial.user_attrs.get("fail_reason") or trial.user_attrs.get("prune_reason"),
            "on_front": False,
        })
    complete = [row for row in rows if row["state"] == "COMPLETE" and None not in (row["metric"], row["trainable_params"])]
    for i in _front_indices(complete):
        complete[i]["on_front"] = True
    return rows


def baseline_rows(study: Any) -> list[dict[str, Any]]:
    """Complete trials of the other studies in the same storage for the same task (LoRA/AdaLoRA peers)."""
    import optuna

    task = study_settings(study).get("task")
    if task is None:
        return []
    storage = study._storage  # the storage the study was loaded from; Optuna exposes no public accessor
    rows = []
    for name in optuna.get_all_study_names(storage=storage):
        if name == study.study_name:
            continue
        other = optuna.load_study(study_name=name, storage=storage)
        if study_settings(other).get("task") == task:
            rows += [{**row, "on_front": False, "method": f"{row['method']} ({name})"}
                     for row in study_rows(other) if row["state"] == "COMPLETE" and row["trainable_params"]]
    return rows


def _front_indices(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of the non-dominated rows (max metric, min parameters), by the search's own Pareto code."""
    from elalora_auto.search.pareto import pareto_front

    return pareto_front(_points(rows))


def _points(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    return [(float(row["metric"]), float(row["trainable_params"])) for row in rows]


def _result_json(trial_dir: Path) -> dict[str, Any]:
    path = trial_dir / "result.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# -- the report folder ----------------------------------------------------------------------------------
def write_study_report(study: Any, out: str | Path, trials_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Write the Pareto front (PNG, HTML), the trial table, Optuna's plots and an index.html into `out`."""
    from elalora_auto import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = study_rows(study, trials_dir)
    name = metric_name(study)
    drawn = [row for row in rows if row["state"] == "COMPLETE" and row["trainable_params"]] + baseline_rows(study)
    plots.pareto_png(drawn, out / "pareto_front.png", name)
    plots.pareto_html(drawn, out / "pareto_front.html", name)
    plots.write_csv([{k: v for k, v in row.items() if k != "params"} | row["params"] for row in rows],
                    out / "trials.csv")
    complete = [row for row in rows if row["state"] == "COMPLETE"]
    written = ["pareto_front.png", "pareto_front.html", "trials.csv"]
    if complete:
        multi = len(study.directions) > 1
        target = (lambda t: t.values[0]) if multi else None
        plots.optuna_history_html(study, out / "optuna_history.html", target, name)
        written.append("optuna_history.html")
        # Importance evaluators look for what drives LOW targets: hand them the negated metric.
        sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
        if plots.optuna_importance_html(study, out / "optuna_importance.html", lambda t: sign * t.values[0], name):
            written.append("optuna_importance.html")
    (out / "index.html").write_text(_index_html(study.study_name, name, rows, written))
    return rows


def _index_html(study_name: str, metric: str, rows: Sequence[Mapping[str, Any]], files: Sequence[str]) -> str:
    front = sorted((row for row in rows if row["on_front"]), key=lambda row: row["trainable_params"])
    table = "".join(
        f"<tr><td>{row['number']}</td><td>{row['metric']:.4f}</td><td>{int(row['trainable_params']):,}</td>"
        f"<td>{html.escape(_params_line(row['params']))}</td></tr>" for row in front
    )
    links = "".join(f'<li><a href="{f}">{f}</a></li>' for f in files)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study_name)}</title></head><body>"
        f"<h1>Study {html.escape(study_name)}</h1><img src='pareto_front.png' alt='Pareto front'>"
        f"<h2>Pareto front</h2><table border='1' cellpadding='4'><tr><th>trial</th><th>{html.escape(metric)}</th>"
        f"<th>trainable params</th><th>hyperparameters</th></tr>{table}</table><h2>Files</h2><ul>{links}</ul>"
        "</body></html>"
    )


def front_table(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    """The Pareto front as aligned text for the terminal."""
    front = sorted((row for row in rows if row["on_front"]), key=lambda row: row["trainable_params"])
    lines = [f"{'trial':>5}  {metric:>12}  {'trainable params':>16}  hyperparameters"]
    lines += [f"{row['number']:>5}  {row['metric']:>12.4f}  {int(row['trainable_params']):>16,}  "
              f"{_params_line(row['params'])}" for row in front]
    return "\n".join(lines)


def _params_line(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


# -- opening a study ------------------------------------------------------------------------------------
def load_study(study_name: str, workdir: str | Path = "elalora_runs", storage: str | None = None) -> Any:
    """Load a study from `storage`, or from the workdir's local journal that `search` writes by default."""
    from elalora_auto.search import study as search_study

    return search_study.load_study(study_name, search_study.open_storage(storage, workdir, create=False))


# -- one exported trial ---------------------------------------------------------------------------------
def pick_trial(rows: Sequence[Mapping[str, Any]], trial: int | None = None, pick: str | None = None,
               max_params: float | None = None) -> Mapping[str, Any]:
    """The trial to export: a number, the best metric (optionally under a parameter cap), or the front's knee."""
    from elalora_auto.search.pareto import knee

    complete = [row for row in rows if row["state"] == "COMPLETE" and None not in (row["metric"], row["trainable_params"])]
    if trial is not None:
        for row in rows:
            if row["number"] == trial:
                if row in complete:
                    return row
                raise UserError(f"trial {trial} is {row['state']}, not COMPLETE; pick a complete trial (see `report`)")
        raise UserError(f"the study has no trial {trial}; see `elalora-auto report` for the trial numbers")
    if max_params is not None:
        complete = [row for row in complete if row["trainable_params"] <= max_params]
        if not complete:
            raise UserError(f"no complete trial has at most {max_params:,.0f} trainable parameters; raise --max-params")
    if not complete:
        raise UserError("the study has no complete trial yet; run more trials first")
    if pick == "knee":
        return complete[knee(_points(complete))]
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
    result = _result_json(trial_dir)
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
    from elalora_auto.trial import _resolve_task

    task = _resolve_task(spec)
    (out / "README.md").write_text(_model_card(study, row, rows, spec, result, task.num_labels))
    if merge:
        _merge(spec, task, out)
    return out


def _merge(spec: Any, task: Any, out: Path) -> None:
    """Fold the adapter into the base weights (PEFT's merge_and_unload) and save a plain transformers model."""
    import copy

    from peft import PeftModel

    from elalora_auto.trial import load_base_model, load_tokenizer

    problem = "regression" if task.is_regression else "single_label_classification"
    base, _ = load_base_model(spec.model, task.num_labels, problem)
    merged = PeftModel.from_pretrained(copy.deepcopy(base), out / "adapter").merge_and_unload()
    merged.save_pretrained(out / "merged")
    load_tokenizer(spec.model).save_pretrained(out / "merged")


def _model_card(study: Any, row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], spec: Any,
                result: Mapping[str, Any], num_labels: int) -> str:
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["trainable_params"])
    place = (f"on the Pareto front ({[r['number'] for r in front].index(row['number']) + 1} of {len(front)}, "
             "ordered by size)" if row["on_front"] else "not on the Pareto front (dominated)")
    metric = result.get("primary_metric") or metric_name(study)
    return f"""# {spec.method} adapter for {spec.task} on {spec.model}

Trial {row['number']} of the elalora-auto study `{study.study_name}`.

- task: {spec.task}
- {metric}: {row['metric']:.4f}
- trainable parameters: {int(row['trainable_params']):,}
- place: {place}
- hyperparameters: {_params_line(row['params'])}

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
