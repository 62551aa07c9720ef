"""The one reader of a study, finished or running: rows, the front, its knee and hypervolume, the summary table,
the report folder. `status`, `report`, `export`, the demo and the MLflow tracker all read a study through here,
so they can never show different fronts.

A row is one trial as a `records.StudyRow` (what `plots` draws). The metric comes from the trial's values, and
so does the size in Pareto studies (metric, trainable parameters). The rest of a trial's outcome (the size in
single-objective studies, the reason, ranks, steps, device) comes from one source per trial: its result.json when
this machine has its folder, else the attributes the worker set on it (`search.attrs`). A trial that
breaks a constraint (`--max-params`) is infeasible and never on the front.
"""

from __future__ import annotations

import dataclasses
import html
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from elalora_auto.records import StudyRow
from elalora_auto.search.attrs import output_dir, summary_of_result, summary_of_trial
from elalora_auto.search.pareto import hypervolume, knee, pareto_front, reference_point
from elalora_auto.trial_output import read_result

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
def study_rows(study: Any, trials_dir: str | Path | None = None) -> list[StudyRow]:
    """One row per trial (see the module docstring), with `on_front` and `knee` marked."""
    default_method = str(study_settings(study).get("method", "elalora"))
    rows = [_row(trial, default_method, trials_dir) for trial in study.get_trials(deepcopy=False)]
    candidates = [i for i, row in enumerate(rows) if _on_front_candidate(row)]
    points = [point(rows[i]) for i in candidates]
    best = knee(points)
    for j in pareto_front(points):
        rows[candidates[j]] = dataclasses.replace(rows[candidates[j]], on_front=True, knee=j == best)
    return rows


def _row(trial: Any, default_method: str, trials_dir: str | Path | None) -> StudyRow:
    """The metric and (Pareto studies) the size from the trial's values; the rest of its outcome from one
    source: its result.json when this machine has its folder, else what the worker put in its attributes."""
    values = list(trial.values or [])
    folder = _trial_folder(trial, trials_dir)
    result = read_result(folder)
    reached = summary_of_trial(trial) if result is None else summary_of_result(result)
    return StudyRow(
        number=trial.number, state=trial.state, metric=values[0] if values else None,
        trainable_params=int(values[1]) if len(values) > 1 else _size(reached.trainable_params),
        method=str(trial.params.get("method", default_method)), params=dict(trial.params), reached=reached,
        feasible=all(v <= 0 for v in trial.constraints.values()),
        schedule_steps=_schedule_steps(trial.params, folder), output_dir=None if folder is None else str(folder))


def _size(value: Any) -> int | None:
    return None if value is None else int(value)


def _trial_folder(trial: Any, trials_dir: str | Path | None) -> Path | None:
    """The trial's folder on this machine: under `trials_dir`, else where the worker said it wrote it."""
    for folder in (None if trials_dir is None else Path(trials_dir) / str(trial.number), output_dir(trial)):
        if folder is not None and folder.is_dir():
            return folder
    return None


def _schedule_steps(params: Mapping[str, Any], folder: Path | None) -> dict[str, int]:
    """{name: steps} for the parameters a space sampled as a fraction of the run (`of:`): Optuna holds the
    fraction, the trial's config.yaml the step count it ran with. Shown side by side (`params_line`)."""
    path = None if folder is None else folder / "config.yaml"
    if path is None or not path.is_file():
        return {}
    import yaml

    spec = yaml.safe_load(path.read_text()) or {}
    ran = {**(spec.get("training") or {}), **(spec.get("params") or {})}
    return {name: ran[name] for name, raw in params.items()
            if isinstance(raw, float) and isinstance(ran.get(name), int) and not isinstance(ran[name], bool)}


def _on_front_candidate(row: StudyRow) -> bool:
    return row.complete and row.feasible and None not in (row.metric, row.trainable_params)


def complete_rows(rows: Sequence[StudyRow]) -> list[StudyRow]:
    """Complete, feasible trials with both a metric and a size: the ones a user may pick."""
    return [row for row in rows if _on_front_candidate(row)]


def front(rows: Sequence[StudyRow]) -> list[StudyRow]:
    """The front rows, cheapest first."""
    return sorted((row for row in rows if row.on_front), key=lambda row: row.trainable_params)


def knee_row(rows: Sequence[StudyRow]) -> StudyRow | None:
    return next((row for row in rows if row.knee), None)


def point(row: StudyRow) -> tuple[float, float]:
    """(metric, trainable parameters): a row as the Pareto code sees it."""
    return float(row.metric), float(row.trainable_params)


def front_hypervolume(study: Any, rows: Sequence[StudyRow]) -> tuple[float, tuple[float, float]]:
    """The front's hypervolume and its reference: (the majority-class baseline, 1.1 x the largest front size)."""
    on_front = front(rows)
    points = [point(r) for r in on_front]
    reference = reference_point(points, study_settings(study).get("baseline"))
    return hypervolume(points, reference), reference


def peer_rows(study: Any, storage: Any | None) -> list[StudyRow]:
    """Complete trials of the other studies in `storage` for the same task (LoRA, AdaLoRA, EVA peers)."""
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
            rows += [dataclasses.replace(row, on_front=False, knee=False, method=f"{row.method} ({name})")
                     for row in study_rows(other) if row.complete and row.trainable_params]
    return rows


# -- text -------------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A hyperparameter for people: floats to three significant digits, the rest as they are."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def params_line(params: Mapping[str, Any], keys: Sequence[str] | None = None,
                steps: Mapping[str, int] | None = None) -> str:
    """'k=v, ...' sorted by name; only `keys` when given. A parameter sampled as a fraction of the run shows
    the steps it ran with and the sampled fraction beside it (`steps`, a row's schedule_steps): t_init=12 (fraction
    0.08; of the run, or of what the space's `of:` names)."""
    steps = steps or {}

    def shown(key: str, value: Any) -> str:
        return f"{steps[key]} (fraction {format_value(value)})" if key in steps else format_value(value)

    return ", ".join(f"{k}={shown(k, v)}" for k, v in sorted(params.items()) if keys is None or k in keys)


def csv_row(row: StudyRow) -> dict[str, Any]:
    """A row for trials.csv: hyperparameters as columns (fractions of the run in steps, the fraction beside
    as NAME_fraction), the rank summary as ranks_min/mean/max/total."""
    flat = {k: v for k, v in row.to_dict().items() if k not in ("params", "rank_summary", "schedule_steps")}
    flat |= {f"ranks_{k}": v for k, v in row.reached.rank_summary.items()}
    for name, value in row.params.items():
        if name in row.schedule_steps:
            flat |= {name: row.schedule_steps[name], f"{name}_fraction": value}
        else:
            flat[name] = value
    return flat


def device_lines(rows: Sequence[StudyRow]) -> list[str]:
    """Where the trials ran and what they cost: per device, trials, median examples/s, peak memory."""
    lines = []
    reached = [row.reached for row in rows]
    for device in sorted({one.device for one in reached if one.device}):
        mine = [one for one in reached if one.device == device]
        speeds = sorted(one.examples_per_s for one in mine if one.examples_per_s)
        peaks = [one.peak_memory_mb for one in mine if one.peak_memory_mb is not None]
        speed = f", median {speeds[len(speeds) // 2]:,.0f} examples/s" if speeds else ""
        memory = f", peak memory {max(peaks):,.0f} MiB" if peaks else (", peak memory not measured on CPU"
                                                                         if device == "cpu" else "")
        lines.append(f"ran on {device}: {len(mine)} trial{'s' if len(mine) != 1 else ''}{speed}{memory}")
    return lines


def summary_table(study: Any, rows: Sequence[StudyRow] | None = None) -> str:
    """Trials by state, then the front as a table (the knee marked with *), then its hypervolume."""
    rows = study_rows(study) if rows is None else rows
    metric = metric_name(study)
    states = Counter(row.state.name for row in rows)
    lines = [f"study {study.study_name}: {len(rows)} trials ("
             + ", ".join(f"{s}: {n}" for s, n in sorted(states.items())) + ")"]
    on_front = front(rows)
    if not on_front:
        return "\n".join(lines + ["no complete trial yet"])
    lines.append(f"Pareto front ({metric} up, trainable parameters down; * = knee):")
    lines.append(f"  {'trial':>5}  {metric[:12]:>12}  {'trainable params':>16}  {'ranks min/mean/max':>18}  "
                 "hyperparameters")
    for row in on_front:
        ranks = row.reached.rank_summary
        rank_text = f"{ranks.get('min', '-')}/{ranks.get('mean', '-')}/{ranks.get('max', '-')}" if ranks else "-"
        lines.append(f"{'*' if row.knee else ' '} {row.number:>5}  {row.metric:>12.4f}  "
                     f"{int(row.trainable_params):>16,}  {rank_text:>18}  "
                     f"{params_line(row.params, KEY_PARAMS, row.schedule_steps)}")
    volume, reference = front_hypervolume(study, rows)
    lines.append(f"hypervolume {volume:.4g} (reference: {metric} {reference[0]:.4f}, {reference[1]:,.0f} parameters)")
    return "\n".join(lines + device_lines(rows))


# -- the report folder ------------------------------------------------------------------------------------
def write_study_report(study: Any, out: str | Path, trials_dir: str | Path | None = None,
                       storage: Any | None = None, include_plotlyjs: bool | str | None = None) -> list[dict[str, Any]]:
    """Write the Pareto front (PNG, HTML, with the peers of `storage`; the knee starred), the knee trial's ranks,
    the trial table, Optuna's plots and an index.html into `out`; returns the rows.

    `include_plotlyjs` is plots.PLOTLYJS by default: one plotly.min.js beside the HTML files; True inlines it
    (for viewers that open one HTML file alone, e.g. MLflow's artifact preview).
    """
    from elalora_auto import plots

    js = plots.PLOTLYJS if include_plotlyjs is None else include_plotlyjs
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = study_rows(study, trials_dir)
    name, complete = metric_name(study), len(complete_rows(rows))
    drawn = [row for row in rows if row.complete and row.trainable_params] + peer_rows(study, storage)
    plots.pareto_png(drawn, out / "pareto_front.png", name, complete_trials=complete)
    plots.pareto_html(drawn, out / "pareto_front.html", name, complete_trials=complete, include_plotlyjs=js)
    plots.write_csv([csv_row(row) for row in rows], out / "trials.csv")
    written = ["pareto_front.png", "pareto_front.html", "trials.csv"] + _knee_ranks(knee_row(rows), out)
    if any(row.complete for row in rows):
        multi = len(study.directions) > 1
        plots.optuna_history_html(study, out / "optuna_history.html", (lambda t: t.values[0]) if multi else None, name,
                                  include_plotlyjs=js)
        written.append("optuna_history.html")
        # Importance evaluators look for what drives LOW targets: hand them the negated metric.
        sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
        if plots.optuna_importance_html(study, out / "optuna_importance.html", lambda t: sign * t.values[0], name,
                                        include_plotlyjs=js):
            written.append("optuna_importance.html")
    (out / "index.html").write_text(_index_html(study.study_name, name, rows, written))
    return rows


def _knee_ranks(knee: StudyRow | None, out: Path) -> list[str]:
    """The knee trial's rank heatmap and rank evolution (from its folder's result.json); the files written."""
    from elalora_auto import plots

    result = None if knee is None else read_result(knee.output_dir)
    if result is None or not result.rank_map:
        return []
    plots.rank_heatmap(result.rank_map, out / "knee_rank_heatmap.png", trial=knee.number)
    points = result.rank_points()
    if len(points) < 2:
        return ["knee_rank_heatmap.png"]
    plots.rank_evolution(points, out / "knee_rank_evolution.png", trial=knee.number)
    return ["knee_rank_heatmap.png", "knee_rank_evolution.png"]


def _cell(value: Any, spec: str = "") -> str:
    return "-" if value is None else html.escape(format(value, spec))


def _trial_table(rows: Sequence[StudyRow], metric: str) -> str:
    """Every trial, whatever its state: what it reached, why it stopped, where it ran."""
    head = ("trial", "state", metric, "last evaluation", "trainable params", "total rank", "steps", "reason",
            "device", "examples/s", "peak MiB")
    body = []
    for row in rows:
        reached = row.reached
        steps = sorted(reached.intermediate_values)
        last = f"{reached.intermediate_values[steps[-1]]:.4f} @ {steps[-1]}" if steps else None
        cells = (_cell(row.number) + (" &#9733;" if row.knee else ""), _cell(row.state.name),
                 _cell(row.metric, ".4f"), _cell(last), _cell(row.trainable_params, ","),
                 _cell(reached.rank_summary.get("total")), _cell(reached.steps_done), _cell(reached.reason),
                 _cell(reached.device), _cell(reached.examples_per_s, ",.0f"), _cell(reached.peak_memory_mb, ",.0f"))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table border='1' cellpadding='4'><tr>{header}</tr>{''.join(body)}</table>"


def _index_html(study_name: str, metric: str, rows: Sequence[StudyRow], files: Sequence[str]) -> str:
    from elalora_auto.plots import few_trials_caveat

    table = "".join(
        f"<tr><td>{row.number}{' &#9733; knee' if row.knee else ''}</td><td>{row.metric:.4f}</td>"
        f"<td>{int(row.trainable_params):,}</td>"
        f"<td>{html.escape(params_line(row.params, steps=row.schedule_steps))}</td></tr>" for row in front(rows)
    )
    caveat = few_trials_caveat(len(complete_rows(rows)), "the front and its knee")
    knee = knee_row(rows)
    ranks = "".join(f"<img src='{f}' alt='{f}'>" for f in files if f.startswith("knee_rank"))
    knee_part = (f"<h2>Knee: trial {knee.number}</h2><p>{html.escape(metric)} {knee.metric:.4f} with "
                 f"{int(knee.trainable_params):,} trainable parameters: the front's best trade-off.</p>{ranks}"
                 if knee is not None else "")
    links = "".join(f'<li><a href="{f}">{f}</a></li>' for f in files)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study_name)}</title></head><body>"
        f"<h1>Study {html.escape(study_name)}</h1>"
        + (f"<p style='color:firebrick'>{html.escape(caveat)}</p>" if caveat else "")
        + "<img src='pareto_front.png' alt='Pareto front'>"
        f"<h2>Pareto front</h2><table border='1' cellpadding='4'><tr><th>trial</th><th>{html.escape(metric)}</th>"
        f"<th>trainable params</th><th>hyperparameters (steps, the sampled fraction of the run beside)</th></tr>"
        f"{table}</table>{knee_part}<h2>All trials</h2>{_trial_table(rows, metric)}<h2>Files</h2><ul>{links}</ul>"
        "<p>Per trial: WORKDIR/trials/STUDY/N/ (result.json, config.yaml, rank_map.json, rank_heatmap.png; "
        "adapter/ for complete trials)</p></body></html>"
    )
