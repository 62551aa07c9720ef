"""Figures for a study and its trials: pure functions, data in, file out.

Tracking, `report` and `export` all draw through these, so a figure looks the same wherever it is opened.
Matplotlib gives PNGs that every viewer (and the MLflow artifact pane) shows; plotly gives HTML to explore.
Each PNG has a `*_figure` builder that returns the matplotlib Figure, so a caller (or a test) can inspect it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter

from elalora_auto.records import StudyRow

# Figures are built with the object API (no pyplot state): the tracker draws them on a background thread,
# and pyplot's global figure manager is not thread-safe. Figure.savefig needs no GUI backend.

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")
# Colour per method so baselines stand apart from ElaLoRA on a shared front (matplotlib tab10).
_METHOD_COLORS = {"elalora": "#1f77b4", "lora": "#ff7f0e", "adalora": "#2ca02c", "eva": "#d62728"}
# Below this many complete trials a front, its knee or a parameter importance is a guess: the figure says so.
FEW_TRIALS = 5
# How plotly.js reaches an HTML figure: "directory" writes plotly.min.js once beside the files (works offline,
# one copy per report folder). Pass True to inline it where the HTML must stand alone (MLflow's artifact
# preview loads an HTML from a blob URL, so a relative script cannot resolve there).
PLOTLYJS: bool | str = "directory"


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
    """Arrange a rank map as rows (layers, numeric order) x columns (module types); gaps are NaN.

    Module types keep the order they first appear in (a model's rank map lists modules in forward order).
    """
    cells = {parse_module_name(name): rank for name, rank in rank_map.items()}
    layers = _layer_order(layer for layer, _ in cells)
    types = _module_types(rank_map)
    grid = [[float(cells.get((layer, kind), float("nan"))) for kind in types] for layer in layers]
    return layers, types, grid


def rank_heatmap_figure(rank_map: Mapping[str, int], title: str = "final rank per matrix",
                        trial: int | str | None = None) -> Figure:
    """Heatmap of the final ranks, layers x module type; cells annotated with their rank while they fit."""
    if not rank_map:
        raise ValueError("a rank heatmap needs at least one matrix in the rank map")
    layers, types, grid = rank_grid(rank_map)
    fig, ax = _figure(figsize=(2.4 + 1.0 * max(len(types), 1), 1.8 + 0.36 * max(len(layers), 1)))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")  # NaN: no such matrix in that layer
    values = [v for row in grid for v in row if not math.isnan(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    image = ax.imshow(grid, cmap=cmap, aspect="auto", vmin=low, vmax=high if high > low else low + 1)
    ax.set_xticks(range(len(types)), types, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(layers)), [layer if layer != "-" else "other" for layer in layers], fontsize=8)
    ax.set_xlabel("module type")
    ax.set_ylabel("layer")
    if len(layers) <= 40 and len(types) <= 16:  # beyond that the digits no longer fit in a cell
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    red, green, blue, _ = cmap(image.norm(value))
                    dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                    ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="rank").locator = MaxNLocator(integer=True)
    heading = f"trial {trial}: {title}" if trial is not None else title
    ax.set_title(f"{heading}\n{len(values)} matrices, total rank {int(sum(values))}", fontsize=10)
    return fig


def rank_heatmap(rank_map: Mapping[str, int], path: str | Path, title: str = "final rank per matrix",
                 *, trial: int | str | None = None) -> Path:
    """Heatmap PNG of the final ranks (see `rank_heatmap_figure`); `trial` names the trial in the title."""
    return _save(rank_heatmap_figure(rank_map, title, trial), path)


def rank_evolution_figure(history: Sequence[tuple[int, Mapping[str, int]]], trial: int | str | None = None) -> Figure:
    """Rank of each matrix against the optimizer step, one panel per module type.

    One colour per module type (the same in every panel and run), deeper layers drawn darker, so 13 or 73
    matrices stay apart: a panel holds one line per layer. `history` is [(step, rank_map), ...] in step order,
    starting with the initial ranks.
    """
    names = list(dict.fromkeys(name for _, ranks in history for name in ranks))
    types = _module_types(names)
    layers = _layer_order(parse_module_name(name)[0] for name in names)
    cols = min(3, max(len(types), 1))
    rows = max(math.ceil(len(types) / cols), 1)
    fig = Figure(figsize=(3.6 * cols + 0.6, 2.5 * rows + 1.3), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    steps = [step for step, _ in history]
    shade = {layer: 0.3 + 0.7 * i / max(len(layers) - 1, 1) for i, layer in enumerate(layers)}
    for index, kind in enumerate(types):
        ax = axes[index // cols][index % cols]
        mine = [name for name in names if parse_module_name(name)[1] == kind]
        for name in mine:
            layer = parse_module_name(name)[0]
            ranks = [ranks.get(name, float("nan")) for _, ranks in history]
            ax.step(steps, ranks, where="post", color=_type_color(index),
                    alpha=shade[layer] if len(mine) > 1 else 1.0, linewidth=1.3, label=f"layer {layer}")
        ax.set_title(f"{kind} ({len(mine)})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    spare = [axes[index // cols][index % cols] for index in range(len(types), rows * cols)]
    for index, ax in enumerate(spare, start=len(types)):  # unused slots of the last row
        ax.axis("off")
        axes[index // cols - 1][index % cols].tick_params(labelbottom=True)  # the panel above ends its column
    fig.supxlabel("optimizer step", fontsize=9)
    fig.supylabel("rank", fontsize=9)
    heading = f"trial {trial}: rank of each matrix" if trial is not None else "rank of each matrix"
    fig.suptitle(f"{heading} ({len(names)} matrices, {len(types)} module types)", fontsize=10)
    numbered = [layer for layer in layers if layer != "-"]
    if len(numbered) > 1:  # the layer shading, explained once for all panels: in a spare slot, else on the right
        keys = [Line2D([], [], color="0.2", alpha=shade[layer], linewidth=2) for layer in numbered]
        labels = [f"layer {layer}" for layer in numbered]
        if spare:
            spare[-1].legend(keys, labels, loc="center", ncol=math.ceil(len(keys) / 12), fontsize=8,
                             title="darker = deeper", title_fontsize=8, frameon=False)
        else:
            fig.legend(keys, labels, loc="outside right upper", fontsize=8, title="darker = deeper",
                       title_fontsize=8, frameon=False)
    return fig


def rank_evolution(history: Sequence[tuple[int, Mapping[str, int]]], path: str | Path,
                   *, trial: int | str | None = None) -> Path:
    """PNG of each matrix's rank against the optimizer step (see `rank_evolution_figure`)."""
    return _save(rank_evolution_figure(history, trial), path)


def _type_color(index: int) -> tuple[float, float, float, float]:
    """The colour of the index-th module type (tab10, then tab20's lighter halves)."""
    if index < 10:
        return matplotlib.colormaps["tab10"](index)
    return matplotlib.colormaps["tab20"]((2 * (index - 10) + 1) % 20)


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


def few_trials_caveat(complete: int, what: str) -> str | None:
    """The warning a figure carries when it rests on fewer than FEW_TRIALS complete trials, else None."""
    if complete >= FEW_TRIALS:
        return None
    return f"based on {complete} complete trial{'s' if complete != 1 else ''}; {what} may change with more trials"


def pareto_figure(rows: Sequence[StudyRow], metric_name: str = "metric",
                  complete_trials: int | None = None) -> Figure:
    """Metric against trainable parameters (log x): one colour per method, the front joined and labelled, the
    knee starred.

    Rows are a study's (`results.study_rows`) with a metric and a size, peers' beside them. The caveat
    counts `complete_trials` (the study's own; peers drawn beside it do not firm up its front), or all rows.
    """
    fig, ax = _figure(figsize=(8.5, 4.8))
    for method in sorted({row.method for row in rows}):
        mine = [row for row in rows if row.method == method]
        ax.scatter([row.trainable_params for row in mine], [row.metric for row in mine],
                   color=_method_color(method), alpha=0.55, label=f"{method} ({len(mine)})")
    front = sorted((row for row in rows if row.on_front), key=lambda row: row.trainable_params)
    if front:
        ax.step([row.trainable_params for row in front], [row.metric for row in front], where="post",
                color="k", linewidth=1.2, label="Pareto front")
        for row in front:
            ax.annotate(f"#{row.number}", (row.trainable_params, row.metric), fontsize=7,
                        textcoords="offset points", xytext=(4, -10))
    knee = next((row for row in front if row.knee), None)
    if knee is not None:
        ax.scatter([knee.trainable_params], [knee.metric], marker="*", s=260, color="gold", edgecolor="k",
                   linewidth=0.8, zorder=3, label=f"knee: trial {knee.number}")
    ax.set_xscale("log")
    _parameter_ticks(ax, [float(row.trainable_params) for row in rows])
    ax.grid(alpha=0.3, which="major")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} against trainable parameters", fontsize=10, pad=16)
    caveat = few_trials_caveat(len(rows) if complete_trials is None else complete_trials, "the front and its knee")
    if caveat:
        ax.text(0.0, 1.015, caveat, transform=ax.transAxes, fontsize=8, color="firebrick", va="bottom")
    if rows:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def pareto_png(rows: Sequence[StudyRow], path: str | Path, metric_name: str = "metric",
               *, complete_trials: int | None = None) -> Path:
    """The Pareto PNG (see `pareto_figure`)."""
    return _save(pareto_figure(rows, metric_name, complete_trials), path)


def pareto_html(rows: Sequence[StudyRow], path: str | Path, metric_name: str = "metric",
                *, complete_trials: int | None = None, include_plotlyjs: bool | str = PLOTLYJS) -> Path:
    """Interactive version of `pareto_png`: hover shows the trial number and its hyperparameters."""
    import plotly.graph_objects as go

    def hover(row: StudyRow) -> str:
        return f"trial {row.number}<br>{_params_text(row.params)}"

    fig = go.Figure()
    for method in sorted({row.method for row in rows}):
        mine = [row for row in rows if row.method == method]
        fig.add_trace(go.Scatter(
            x=[row.trainable_params for row in mine], y=[row.metric for row in mine], mode="markers",
            name=f"{method} ({len(mine)})", marker={"color": _method_color(method)}, text=[hover(r) for r in mine],
            hovertemplate="%{text}<br>params=%{x:,}<br>" + metric_name + "=%{y:.4f}<extra></extra>",
        ))
    front = sorted((row for row in rows if row.on_front), key=lambda row: row.trainable_params)
    fig.add_trace(go.Scatter(
        x=[row.trainable_params for row in front], y=[row.metric for row in front], mode="lines+text",
        line={"shape": "hv", "color": "black"}, name="Pareto front", text=[f"#{row.number}" for row in front],
        textposition="bottom right", hoverinfo="skip",
    ))
    knee = next((row for row in front if row.knee), None)
    if knee is not None:
        fig.add_trace(go.Scatter(
            x=[knee.trainable_params], y=[knee.metric], mode="markers", name=f"knee: trial {knee.number}",
            marker={"symbol": "star", "size": 18, "color": "gold", "line": {"color": "black", "width": 1}},
            text=[hover(knee)], hovertemplate="knee, %{text}<br>params=%{x:,}<br>" + metric_name
            + "=%{y:.4f}<extra></extra>",
        ))
    fig.update_layout(
        title=f"{metric_name} against trainable parameters",
        xaxis={"title": "trainable parameters", "type": "log", "tickformat": "~s"},
        yaxis={"title": metric_name},
    )
    _caveat_annotation(fig, few_trials_caveat(len(rows) if complete_trials is None else complete_trials,
                                              "the front and its knee"))
    return _write_html(fig, path, include_plotlyjs)


def optuna_history_html(study: Any, path: str | Path, target: Callable[[Any], float] | None, target_name: str,
                        *, include_plotlyjs: bool | str = PLOTLYJS) -> Path:
    """Optuna's optimisation history; `target` picks one objective of a multi-objective study."""
    from optuna.visualization import plot_optimization_history

    figure = plot_optimization_history(study, target=target, target_name=target_name)
    return _write_html(figure, path, include_plotlyjs)


def optuna_importance_html(
    study: Any, path: str | Path, target: Callable[[Any], float] | None, target_name: str,
    *, include_plotlyjs: bool | str = PLOTLYJS,
) -> Path | None:
    """Optuna's hyperparameter importances, or None when they cannot be computed yet.

    Importance needs at least two complete trials whose parameters vary; it is a nice-to-have, never an error.
    Below FEW_TRIALS complete trials the figure carries a caveat.
    """
    from optuna.trial import TrialState
    from optuna.visualization import plot_param_importances

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete < 2:
        return None
    try:
        with warnings.catch_warnings():
            # PED-ANOVA warns on every call that it ranks for LOW targets; callers pass the metric signed for that.
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            figure = plot_param_importances(study, target=target, target_name=target_name)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None
    _caveat_annotation(figure, few_trials_caveat(complete, "these importances"))
    return _write_html(figure, path, include_plotlyjs)


def _module_types(names: Iterable[str]) -> list[str]:
    """Module types in the order they first appear."""
    return list(dict.fromkeys(parse_module_name(name)[1] for name in names))


def _layer_order(labels: Iterable[str]) -> list[str]:
    """Distinct layer labels, numbered layers in numeric order first, then the rest ("-")."""
    return sorted(set(labels), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def _method_color(method: str) -> str | None:
    """A peer study's rows ("lora (sst2-lora)") take their method's colour."""
    return _METHOD_COLORS.get(method.split(" (", 1)[0])


def _parameter_ticks(ax: Any, counts: Sequence[float]) -> None:
    """Log-x ticks at 1-2-5 (or every digit within one decade) labelled "52k"/"1.2M", never overlapping."""
    positive = [count for count in counts if count > 0]
    decades = math.log10(max(positive) / min(positive)) if positive else 0.0
    subs = (1.0, 2.0, 5.0) if decades >= 1 else tuple(float(d) for d in range(1, 10))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs if decades < 4 else (1.0,)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 52000 -> "52k"; a fresh one: it binds to its axis
    ax.xaxis.set_minor_formatter(NullFormatter())


def _caveat_annotation(fig: Any, caveat: str | None) -> None:
    """Put `caveat` in red above a plotly figure's plot area."""
    if caveat:
        fig.add_annotation(text=caveat, xref="paper", yref="paper", x=0, y=1.0, yanchor="bottom", xanchor="left",
                           showarrow=False, font={"color": "firebrick", "size": 12})


def _params_text(params: Mapping[str, Any]) -> str:
    return "<br>".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _write_html(fig: Any, path: str | Path, include_plotlyjs: bool | str) -> Path:
    """Full HTML; with "directory" plotly.js is written once beside it (offline, one copy per folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=include_plotlyjs, full_html=True)
    return path
