"""Figures for a study and its trials: pure functions, data in, file out.

Tracking, `report` and `export` all draw through these, so a figure looks the same wherever it is opened.
Matplotlib gives PNGs that every viewer (and the MLflow artifact pane) shows; plotly gives HTML to explore.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure

# Figures are built with the object API (no pyplot state): the tracker draws them on a background thread,
# and pyplot's global figure manager is not thread-safe. Figure.savefig needs no GUI backend.

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")
# Colour per method so baselines stand apart from ElaLoRA on a shared front.
_METHOD_COLORS = {"elalora": "#1f77b4", "lora": "#ff7f0e", "adalora": "#2ca02c"}  # matplotlib tab10


def parse_module_name(name: str) -> tuple[str, str]:
    """Split a module name into (layer label, module type).

    `bert.encoder.layer.3.attention.self.query` -> ("3", "attention.self.query"); names outside the
    repeated blocks (e.g. `bert.pooler.dense`) keep their full name as the type and get the layer "-".
    """
    match = _LAYER_RE.search(name)
    if match:
        return match.group(1), match.group(2)
    return "-", name


def rank_grid(rank_map: Mapping[str, int]) -> tuple[list[str], list[str], list[list[float]]]:
    """Arrange a rank map as rows (layers, numeric order) x columns (module types); gaps are NaN."""
    cells = {parse_module_name(name): rank for name, rank in rank_map.items()}
    layers = sorted({layer for layer, _ in cells}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    types = sorted({kind for _, kind in cells})
    grid = [[float(cells.get((layer, kind), float("nan"))) for kind in types] for layer in layers]
    return layers, types, grid


def rank_heatmap(rank_map: Mapping[str, int], path: str | Path, title: str = "final rank per matrix") -> Path:
    """Heatmap PNG of the final ranks, layers x module type, each cell annotated with its rank."""
    layers, types, grid = rank_grid(rank_map)
    fig, ax = _figure(figsize=(1.2 + 0.9 * max(len(types), 1), 1.0 + 0.45 * max(len(layers), 1)))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(types)), types, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ax.set_xlabel("module type")
    ax.set_ylabel("layer")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(j, i, str(int(value)), ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(image, ax=ax, label="rank")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def rank_evolution(history: Sequence[tuple[int, Mapping[str, int]]], path: str | Path) -> Path:
    """PNG of each matrix's rank against the optimizer step, one line per matrix, coloured by module type.

    `history` is [(step, rank_map), ...] in step order, starting with the initial ranks.
    """
    fig, ax = _figure(figsize=(8, 4.5))
    names = sorted({name for _, ranks in history for name in ranks})
    types = sorted({parse_module_name(name)[1] for name in names})
    cmap = matplotlib.colormaps["tab10" if len(types) <= 10 else "tab20"]
    steps = [step for step, _ in history]
    for name in names:
        kind = parse_module_name(name)[1]
        ranks = [ranks.get(name, float("nan")) for _, ranks in history]
        ax.step(steps, ranks, where="post", color=cmap(types.index(kind) % cmap.N), alpha=0.6, linewidth=1)
    for i, kind in enumerate(types):  # one legend entry per module type, not per matrix
        ax.plot([], [], color=cmap(i % cmap.N), label=kind)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("rank")
    ax.set_title(f"rank of each matrix ({len(names)} matrices)", fontsize=10)
    if types:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """CSV with the union of the rows' keys as header; nested values are written as JSON."""
    rows = list(rows)
    header: list[str] = []
    for row in rows:
        header += [key for key in row if key not in header]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    return path


def pareto_png(rows: Sequence[Mapping[str, Any]], path: str | Path, metric_name: str = "metric") -> Path:
    """Metric against trainable parameters (log x); front points joined and labelled, one colour per method.

    Each row has number, metric, trainable_params, method and on_front (bool).
    """
    fig, ax = _figure(figsize=(7, 4.5))
    for method in sorted({row["method"] for row in rows}):
        mine = [row for row in rows if row["method"] == method]
        ax.scatter(
            [row["trainable_params"] for row in mine],
            [row["metric"] for row in mine],
            color=_METHOD_COLORS.get(method),
            alpha=0.55,
            label=f"{method} ({len(mine)})",
        )
    front = sorted((row for row in rows if row["on_front"]), key=lambda row: row["trainable_params"])
    if front:
        ax.step(
            [row["trainable_params"] for row in front],
            [row["metric"] for row in front],
            where="post",
            color="k",
            linewidth=1.2,
            label="Pareto front",
        )
        for row in front:
            ax.annotate(f"#{row['number']}", (row["trainable_params"], row["metric"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} against trainable parameters", fontsize=10)
    if rows:
        ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_html(rows: Sequence[Mapping[str, Any]], path: str | Path, metric_name: str = "metric") -> Path:
    """Interactive version of `pareto_png`: hover shows the trial number and its hyperparameters."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for method in sorted({row["method"] for row in rows}):
        mine = [row for row in rows if row["method"] == method]
        fig.add_trace(
            go.Scatter(
                x=[row["trainable_params"] for row in mine],
                y=[row["metric"] for row in mine],
                mode="markers",
                name=method,
                marker={"color": _METHOD_COLORS.get(method)},
                text=[f"trial {row['number']}<br>{_params_text(row.get('params', {}))}" for row in mine],
                hovertemplate="%{text}<br>params=%{x}<br>" + metric_name + "=%{y}<extra></extra>",
            )
        )
    front = sorted((row for row in rows if row["on_front"]), key=lambda row: row["trainable_params"])
    fig.add_trace(
        go.Scatter(
            x=[row["trainable_params"] for row in front],
            y=[row["metric"] for row in front],
            mode="lines",
            line={"shape": "hv", "color": "black"},
            name="Pareto front",
        )
    )
    fig.update_layout(
        title=f"{metric_name} against trainable parameters",
        xaxis={"title": "trainable parameters", "type": "log"},
        yaxis={"title": metric_name},
    )
    return _write_html(fig, path)


def optuna_history_html(study: Any, path: str | Path, target: Callable[[Any], float] | None, target_name: str) -> Path:
    """Optuna's optimisation history; `target` picks one objective of a multi-objective study."""
    from optuna.visualization import plot_optimization_history

    return _write_html(plot_optimization_history(study, target=target, target_name=target_name), path)


def optuna_importance_html(
    study: Any, path: str | Path, target: Callable[[Any], float] | None, target_name: str
) -> Path | None:
    """Optuna's hyperparameter importances, or None when they cannot be computed yet.

    Importance needs at least two complete trials whose parameters vary; it is a nice-to-have, never an error.
    """
    from optuna.trial import TrialState
    from optuna.visualization import plot_param_importances

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return None
    try:
        with warnings.catch_warnings():
            # PED-ANOVA warns on every call that it ranks for LOW targets; callers pass the metric signed for that.
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            figure = plot_param_importances(study, target=target, target_name=target_name)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None
    return _write_html(figure, path)


def _params_text(params: Mapping[str, Any]) -> str:
    return "<br>".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _write_html(fig: Any, path: str | Path) -> Path:
    """Self-contained HTML (plotly.js inlined): the artifact must open with no network."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
