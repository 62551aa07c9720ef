"""What the tracker writes besides plain metrics: rank artifacts, the parent run's study-wide view, descriptions,
the reconciled state of runs a killed process left behind. Functions of an `MlflowClient`; called on the
tracker's background thread."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from elalora_auto.tracking.runs import NOTE, StudyRuns

COUNTED = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")  # Optuna's trial states, by name
PLOTS_PAGE = "study_plots.html"  # the parent's interactive plots, plotly inlined once (MLflow's viewer needs it)
KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens a "custom model development" experiment on its runs
STOPPED = "the trial's process stopped before it reported (killed)"


def describe_study(client: Any, name: str, runs: StudyRuns) -> None:
    """Descriptions and the experiment kind, so the MLflow UI opens the study's runs, not the GenAI overview."""
    client.set_experiment_tag(runs.experiment_id, KIND_TAG, "custom_model_development")
    client.set_experiment_tag(runs.experiment_id, NOTE, (
        f"Optuna study **{name}** (elalora-auto). The run named `{name}` is the study: its artifacts hold the "
        f"Pareto front (`pareto_front.png`, interactive in `{PLOTS_PAGE}`) and `trials.csv`. Each trial is a "
        "child run under it (expand the parent in the Runs table), with its rank map in `ranks/`. Front trials "
        "carry their adapter and an MLflow model (`model/`)."))
    client.set_tag(runs.parent_run_id, NOTE, (
        f"The study {name}: Pareto front in the artifacts `pareto_front.png` and `{PLOTS_PAGE}` (front, Optuna "
        "history and importances), all trials in `trials.csv`; metrics by trial number (step)."))


def log_rank_artifacts(client: Any, run_id: str, number: int, rank_map: dict[str, int],
                       history: list[tuple[int, dict[str, int]]], rounds: list[dict[str, Any]]) -> None:
    """ranks/: rank_map.json, rank_heatmap.png, rank_evolution.png, rank_rounds.csv."""
    from elalora_auto import plots

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "rank_map.json").write_text(json.dumps(rank_map, indent=1, sort_keys=True))
        plots.rank_heatmap(rank_map, out / "rank_heatmap.png", trial=number)
        plots.rank_evolution(history, out / "rank_evolution.png", trial=number)
        plots.write_csv(rounds, out / "rank_rounds.csv")
        client.log_artifacts(run_id, tmp, "ranks")


def log_trial_on_parent(client: Any, parent_run_id: str, number: int, state: str, metric: float | None,
                        size: float | None, t_ms: int) -> None:
    """The study's history on its parent run: each trial's metric and size at step = its trial number."""
    from mlflow.entities import Metric

    points = {"trial_metric": metric, "trial_trainable_params": size, f"trial_{state.lower()}": 1.0}
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), t_ms, number) for k, v in points.items()
                                             if v is not None])


def log_adapter_if_on_front(client: Any, study: Any, number: int, run_id: str, output_dir: Path,
                            trials_dir: Path) -> None:
    from elalora_auto.results import study_rows

    adapter = output_dir / "adapter"
    rows = study_rows(study, trials_dir)
    if adapter.is_dir() and any(row.number == number and row.on_front for row in rows):
        client.log_artifacts(run_id, str(adapter), "adapter")


def refresh_study(client: Any, study: Any, runs: StudyRuns, trials_dir: Path, backend: Any, step: int) -> None:
    """The parent run's report (Pareto PNG, trial table, one page of interactive plots) and its counts."""
    from mlflow.entities import Metric

    from elalora_auto.results import write_study_report

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as upload:
        rows = write_study_report(study, Path(tmp), trials_dir, backend)
        for path in Path(tmp).iterdir():
            if path.suffix not in (".html", ".js"):
                (Path(upload) / path.name).write_bytes(path.read_bytes())
        (Path(upload) / PLOTS_PAGE).write_text(one_plotly_page(Path(tmp), study.study_name))
        client.log_artifacts(runs.parent_run_id, upload)
    counts = {state: sum(row.state.name == state for row in rows) for state in COUNTED}
    now = _now_ms()
    metrics = [Metric(f"trials_{state.lower()}", n, now, step) for state, n in counts.items()]
    metrics.append(Metric("pareto_size", sum(row.on_front for row in rows), now, step))
    client.log_batch(runs.parent_run_id, metrics=metrics)


def one_plotly_page(folder: Path, title: str) -> str:
    """Every plotly page of a report folder as one self-contained page, plotly.js inlined once.

    MLflow's artifact viewer shows HTML from a blob URL, where the report's `<script src="plotly.min.js">`
    cannot resolve; inlining it in each page would weigh ~4.8 MB a page.
    """
    import plotly.offline

    bodies = []
    for page in sorted(folder.glob("*.html")):
        text = page.read_text(encoding="utf-8")
        if "plotly-graph-div" not in text:
            continue
        body = re.search(r"<body>(.*)</body>", text, re.S)
        content = re.sub(r"<script[^>]*src=\"[^\"]*plotly[^\"]*\"[^>]*></script>", "", body.group(1) if body else "")
        bodies.append(f"<h2>{page.stem.replace('_', ' ')}</h2>{content}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>"
            + "".join(bodies) + "</body></html>")


def final_state(trial: Any) -> tuple[str, str, str]:
    """(MLflow status, Optuna state, reason) for a run whose trial is over or gone. A trial whose process was
    stopped (Ctrl-C, kill, a dead worker) is KILLED; one that failed by itself is FAILED."""
    if trial is None:
        return "KILLED", "ABSENT", "no such trial in the Optuna study: " + STOPPED
    from elalora_auto.search.attrs import summary_of_trial
    from elalora_auto.search.study import INTERRUPTED

    state = trial.state.name
    reason = summary_of_trial(trial).reason
    if state == "FAIL":
        stopped = reason is None or reason == INTERRUPTED or str(reason).startswith("worker process")
        return ("KILLED" if stopped else "FAILED"), state, str(reason or STOPPED)
    return {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "KILLED"), state, str(reason or state.lower())


def parent_outcome(study: Any) -> tuple[str | None, str]:
    """The parent run's terminal status at a worker's end: FINISHED when the study holds its budget, KILLED when
    it stopped short (interrupted, timed out), None (still RUNNING) while other workers run trials."""
    from elalora_auto.results import study_settings
    from elalora_auto.search.study import counted_trials

    trials = study.get_trials(deepcopy=False)
    if any(not t.state.is_finished() for t in trials):
        return None, "other workers are running trials"
    budget, counted = study_settings(study).get("trials"), counted_trials(study)
    if budget is None or counted >= int(budget):
        return "FINISHED", f"complete: {counted} of {budget} trials"
    return "KILLED", f"stopped at {counted} of {budget} trials (interrupted or timed out); the same command resumes it"


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
