"""Fronts of (accuracy, trainable parameters) points, as the search benches report them: one hypervolume
reference per task, the best accuracy at or under a parameter budget, both for many fronts at once and who has the
largest hypervolume per seed, whether one front covers another, and the front plot's shared axes.
A study here is a results row with `rows` (state, accuracy, trainable_params)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

Record = dict[str, Any]
Point = tuple[float, float]


def complete_points(study: Record) -> list[Point]:
    return [(r["accuracy"], float(r["trainable_params"])) for r in study["rows"]
            if r["state"] == "COMPLETE" and r["accuracy"] is not None and r["trainable_params"]]


def reference(studies: Sequence[Record]) -> Point:
    """One reference per task: (majority-class accuracy, 1.1 x the largest size seen in any arm)."""
    sizes = [p[1] for s in studies for p in complete_points(s)]
    return float(studies[0]["baseline"]), 1.1 * max(sizes, default=1.0)


def task_budgets(studies: Sequence[Record], given: Sequence[int] | None) -> list[int]:
    """--budgets, else the 25/50/75% quantiles of every arm's sizes (observed sizes: each budget holds a trial)."""
    import numpy as np

    if given:
        return list(given)
    sizes = [p[1] for s in studies for p in complete_points(s)]
    return [int(q) for q in np.quantile(sizes, [0.25, 0.5, 0.75], method="lower")] if sizes else []


def best_at(points: Sequence[Point], budget: float) -> float | None:
    fitting = [m for m, c in points if c <= budget]
    return max(fitting) if fitting else None


def normalised_hv(points: Sequence[Point], ref: Point) -> float:
    """Hypervolume as a share of the reference box ((1 - floor) x ceiling): 1 would be 100% at no cost."""
    from elalora_auto.search.pareto import hypervolume

    return hypervolume(points, ref) / ((1.0 - ref[0]) * ref[1])


def front_measures(fronts: dict[str, dict[int, list[Point]]], ref: Point, budgets: Sequence[int]
                   ) -> tuple[dict[str, dict[str, dict[int, float]]], dict[int, list[str]]]:
    """Per measure (normalised hypervolume, best metric at <= P): name -> seed -> value, from each (name, seed)'s
    complete (metric, trainable parameters) points; and per budget the (name, seed)s with no adapter that small."""
    fronts = {name: {seed: [tuple(p) for p in points] for seed, points in by_seed.items()}  # JSON rows hold lists
              for name, by_seed in fronts.items()}
    hv = {name: {seed: normalised_hv(points, ref) for seed, points in by_seed.items()}
          for name, by_seed in fronts.items()}
    measures, empty = {"HV (x100)": hv}, {}
    for b in budgets:
        # a study with no complete adapter at <= P gave its user the majority class there, as its hypervolume
        # counts it: scored at the floor, not dropped (dropping the seed would pair only the seeds it did well)
        best = {name: {seed: best_at(points, b) for seed, points in by_seed.items()}
                for name, by_seed in fronts.items()}
        empty[b] = [f"{name} seed {seed}" for name, by_seed in best.items()
                    for seed, value in by_seed.items() if value is None]
        measures[f"best at <= {b:,} (points)"] = {
            name: {seed: ref[0] if value is None else value for seed, value in by_seed.items()}
            for name, by_seed in best.items()}
    return measures, empty


def largest_hv(hv: dict[str, dict[int, float]], what: str) -> str:
    """On how many seeds each name's hypervolume is the largest, over the seeds every name has (a seed whose
    baseline has not finished yet must not count as a win for the others)."""
    seeds = sorted(set.intersection(*(set(v) for v in hv.values())))
    wins = {name: sum(1 for s in seeds if hv[name][s] == max(v[s] for v in hv.values())) for name in hv}
    return (f"Largest {what}, over the seeds every one has (a tie counts for each): "
            + ", ".join(f"{name} on {k} of {len(seeds)} seeds" for name, k in wins.items()))


def covers(a: Sequence[Point], b: Sequence[Point]) -> bool:
    """Every point of b is matched or beaten in both objectives by some point of a."""
    return all(any(p[0] >= q[0] and p[1] <= q[1] for p in a) for q in b)


def relation(a: Sequence[Point], b: Sequence[Point]) -> str:
    if covers(a, b) and covers(b, a):
        return "equals"
    if covers(a, b):
        return "dominates"
    return "is dominated by" if covers(b, a) else "neither dominates nor is dominated by"


def fmt(value: float | None, spec: str = ".1f", scale: float = 100.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else statistics.mean(values)  # type: ignore[arg-type]


# a seed's line style and marker: 8 distinct pairs, so the verdict's 6 seeds never share a look
SEED_STYLES: tuple[tuple[Any, str], ...] = (
    ("-", "o"), ("--", "s"), (":", "D"), ("-.", "^"), ((0, (5, 1, 1, 1, 1, 1)), "v"), ((0, (1, 3)), "<"),
    ((0, (8, 2)), ">"), ((0, (3, 1, 3, 1, 1, 1)), "p"))


def plot_fronts(studies: Sequence[Record], ref: Point, path: Path, title: str, metric: str = "accuracy") -> Path:
    """All arms and seeds of one task on one figure: every complete trial as a dot, each study's front as a step
    line; an arm's colour, a seed's line style and marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elalora_auto.search.pareto import pareto_front

    arms = list(dict.fromkeys(s["arm"] for s in studies))
    seeds = list(dict.fromkeys(s["seed"] for s in studies))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for study in studies:
        if not (points := complete_points(study)):
            continue
        style, marker = SEED_STYLES[seeds.index(study["seed"]) % len(SEED_STYLES)]
        colour = f"C{arms.index(study['arm']) % 10}"
        ax.scatter([c for _, c in points], [100 * m for m, _ in points], color=colour, marker=marker, alpha=0.35, s=22)
        front = [points[i] for i in pareto_front(points)]
        ax.step([c for _, c in front] + [ref[1]], [100 * m for m, _ in front] + [100 * front[-1][0]], where="post",
                color=colour, linestyle=style, linewidth=1.8, label=f"{study['arm']} seed {study['seed']}")
    ax.axhline(100 * ref[0], color="grey", linestyle=":", linewidth=1, label=f"majority class {100 * ref[0]:.1f}%")
    ax.set_title(title)
    # the legend outside: never over the fronts
    return save_front_plot(fig, ax, path, metric=metric, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def save_front_plot(fig: Any, ax: Any, path: Path, metric: str = "accuracy", **legend: Any) -> Path:
    """The axes every front plot shares (size on a log scale, the metric in %), then the PNG."""
    import matplotlib.pyplot as plt

    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, **legend)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


