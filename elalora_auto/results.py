"""The one reader of a study, finished or running: rows, the front, its knee and hypervolume, the summary table,
the report folder. `status`, `report`, `export`, the demo and the MLflow tracker all read a study through here,
so they can never show different fronts.

A row is one trial as a dict (the shape `plots` draws): number, state, metric, trainable_params, method,
params, reason, feasible, rank_summary, output_dir, on_front, knee. The metric and the size come from the
trial's values (Pareto studies hold (metric, trainable parameters); single-objective ones hold the metric and
keep the size in the user attr `trainable_params`, or failing that in the trial's result.json). A trial that
breaks a constraint (`--max-params`) is infeasible and never on the front.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from elalora_auto.search.pareto import hypervolume, knee, pareto_front

# Hyperparameters worth a column in the terminal table (the rest are in trials.csv).
KEY_PARAMS = ("r_init", "r_target", "b", "k", "lora_alpha", "target_modules", "learning_rate")


# -- opening a study --------------------------------------------------------------------------------------
def open_study(study_name: str | None, workdir: str | Path = "elalora_runs",
               storage: str | None = None) -> tuple[Any, Any]:
    """(study, storage backend) from `storage`, or from the workdir's journal that `search` writes by default."""
    from elalora_auto.search.storage import load_study, open_storage

    backend = open_storage(storage, workdir, create=False)
    return load_study(study_name, backend), backend


def load_study(study_name: str | None, workdir: str | Path = "elalora_runs", storage: str | None = None) -> Any:
    """The study alone (see `open_study`)."""
    return open_study(study_name, workdir, storage)[0]


def study_settings(study: Any) -> dict[str, Any]:
    """The search settings stored on the study at creation (task, model, method, ...); {} when absent."""
    settings = study.user_attrs.get("settings", {})
    return dict(settings) if isinstance(settings, Mapping) else {}


def metric_name(study: Any) -> str:
    """Name of the optimised metric: Optuna's metric names when set, else the settings, else 'metric'."""
    names = study.metric_names
    if names and names[0]:
        return str(names[0])
    return str(study_settings(study).get("primary_metric") or "metric")


# -- rows and the front -----------------------------------------------------------------------------------
def study_rows(study: Any, trials_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per trial (see the module docstring), with `on_front` and `knee` marked."""
    default_method = str(study_settings(study).get("method", "elalora"))
    rows = [_row(trial, default_method, trials_dir) for trial in study.get_trials(deepcopy=False)]
    candidates = [row for row in rows if _on_front_candidate(row)]
    points = [point(row) for row in candidates]
    best = knee(points)
    for i in pareto_front(points):
        candidates[i]["on_front"] = True
        candidates[i]["knee"] = i == best
    return rows


def _row(trial: Any, default_method: str, trials_dir: str | Path | None) -> dict[str, Any]:
    values = list(trial.values or [])
    size = values[1] if len(values) > 1 else trial.user_attrs.get("trainable_params")
    if size is None and values and trials_dir is not None:
        size = trial_result(Path(trials_dir) / str(trial.number)).get("trainable_params")
    return {
        "number": trial.number,
        "state": trial.state.name,
        "metric": values[0] if values else None,
        "trainable_params": None if size is None else int(size),
        "method": str(trial.params.get("method", default_method)),
        "params": dict(trial.params),
        "reason": trial.user_attrs.get("fail_reason") or trial.user_attrs.get("prune_reason"),
        "feasible": all(v <= 0 for v in trial.constraints.values()),
        "rank_summary": dict(trial.user_attrs.get("rank_summary") or {}),
        "output_dir": trial.user_attrs.get("output_dir"),
        "on_front": False,
        "knee": False,
    }


def _on_front_candidate(row: Mapping[str, Any]) -> bool:
    return row["state"] == "COMPLETE" and row["feasible"] and None not in (row["metric"], row["trainable_params"])


def complete_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Complete, feasible trials with both a metric and a size: the ones a user may pick."""
    return [row for row in rows if _on_front_candidate(row)]


def front(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The front rows, cheapest first."""
    return sorted((row for row in rows if row["on_front"]), key=lambda row: row["trainable_params"])


def knee_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((row for row in rows if row["knee"]), None)


def point(row: Mapping[str, Any]) -> tuple[float, float]:
    """(metric, trainable parameters): a row as the Pareto code sees it."""
    return float(row["metric"]), float(row["trainable_params"])


def front_hypervolume(study: Any, rows: Sequence[Mapping[str, Any]]) -> tuple[float, tuple[float, float]]:
    """The front's hypervolume and its reference: (the majority-class baseline, 1.1 x the largest front size)."""
    on_front = front(rows)
    baseline = study_settings(study).get("baseline")
    reference = (baseline if baseline is not None else min(r["metric"] for r in on_front) - 1e-9,
                 max(r["trainable_params"] for r in on_front) * 1.1)
    return hypervolume([point(r) for r in on_front], reference), reference


def peer_rows(study: Any, storage: Any | None) -> list[dict[str, Any]]:
    """Complete trials of the other studies in `storage` for the same task (LoRA/AdaLoRA peers)."""
    import optuna

    task = study_settings(study).get("task")
    if task is None or storage is None:
        return []
    rows = []
    for name in optuna.get_all_study_names(storage=storage):
        if name == study.study_name:
            continue
        other = optuna.load_study(study_name=name, storage=storage)
        if study_settings(other).get("task") == task:
            rows += [{**row, "on_front": False, "knee": False, "method": f"{row['method']} ({name})"}
                     for row in study_rows(other) if row["state"] == "COMPLETE" and row["trainable_params"]]
    return rows


def trial_result(trial_dir: str | Path) -> dict[str, Any]:
    """A trial's result.json as written by run_trial ({} when the trial wrote none)."""
    path = Path(trial_dir) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# -- text -------------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A hyperparameter for people: floats to three significant digits, the rest as they are."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def params_line(params: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """'k=v, ...' sorted by name; only `keys` when given."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in sorted(params.items()) if keys is None or k in keys)


def summary_table(study: Any, rows: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Trials by state, then the front as a table (the knee marked with *), then its hypervolume."""
    rows = study_rows(study) if rows is None else rows
    metric = metric_name(study)
    states = Counter(row["state"] for row in rows)
    lines = [f"study {study.study_name}: {len(rows)} trials ("
             + ", ".join(f"{s}: {n}" for s, n in sorted(states.items())) + ")"]
    on_front = front(rows)
    if not on_front:
        return "\n".join(lines + ["no complete trial yet"])
    lines.append(f"Pareto front ({metric} up, trainable parameters down; * = knee):")
    lines.append(f"  {'trial':>5}  {metric[:12]:>12}  {'trainable params':>16}  {'ranks min/mean/max':>18}  "
                 "hyperparameters")
    for row in on_front:
        ranks = row["rank_summary"]
        rank_text = f"{ranks.get('min', '-')}/{ranks.get('mean', '-')}/{ranks.get('max', '-')}" if ranks else "-"
        lines.append(f"{'*' if row['knee'] else ' '} {row['number']:>5}  {row['metric']:>12.4f}  "
                     f"{int(row['trainable_params']):>16,}  {rank_text:>18}  {params_line(row['params'], KEY_PARAMS)}")
    volume, reference = front_hypervolume(study, rows)
    lines.append(f"hypervolume {volume:.4g} (reference: {metric} {reference[0]:.4f}, {reference[1]:,.0f} parameters)")
    return "\n".join(lines)


# -- the report folder ------------------------------------------------------------------------------------
def write_study_report(study: Any, out: str | Path, trials_dir: str | Path | None = None,
                       storage: Any | None = None) -> list[dict[str, Any]]:
    """Write the Pareto front (PNG, HTML, with the peers of `storage`), the trial table, Optuna's plots and an
    index.html into `out`; returns the rows."""
    from elalora_auto import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = study_rows(study, trials_dir)
    name = metric_name(study)
    drawn = [row for row in rows if row["state"] == "COMPLETE" and row["trainable_params"]] + peer_rows(study, storage)
    plots.pareto_png(drawn, out / "pareto_front.png", name)
    plots.pareto_html(drawn, out / "pareto_front.html", name)
    plots.write_csv([{k: v for k, v in row.items() if k not in ("params", "rank_summary")} | row["params"]
                     for row in rows], out / "trials.csv")
    written = ["pareto_front.png", "pareto_front.html", "trials.csv"]
    if any(row["state"] == "COMPLETE" for row in rows):
        multi = len(study.directions) > 1
        plots.optuna_history_html(study, out / "optuna_history.html", (lambda t: t.values[0]) if multi else None, name)
        written.append("optuna_history.html")
        # Importance evaluators look for what drives LOW targets: hand them the negated metric.
        sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
        if plots.optuna_importance_html(study, out / "optuna_importance.html", lambda t: sign * t.values[0], name):
            written.append("optuna_importance.html")
    (out / "index.html").write_text(_index_html(study.study_name, name, rows, written))
    return rows


def _index_html(study_name: str, metric: str, rows: Sequence[Mapping[str, Any]], files: Sequence[str]) -> str:
    table = "".join(
        f"<tr><td>{row['number']}</td><td>{row['metric']:.4f}</td><td>{int(row['trainable_params']):,}</td>"
        f"<td>{html.escape(params_line(row['params']))}</td></tr>" for row in front(rows)
    )
    links = "".join(f'<li><a href="{f}">{f}</a></li>' for f in files)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study_name)}</title></head><body>"
        f"<h1>Study {html.escape(study_name)}</h1><img src='pareto_front.png' alt='Pareto front'>"
        f"<h2>Pareto front</h2><table border='1' cellpadding='4'><tr><th>trial</th><th>{html.escape(metric)}</th>"
        f"<th>trainable params</th><th>hyperparameters</th></tr>{table}</table><h2>Files</h2><ul>{links}</ul>"
        "</body></html>"
    )
