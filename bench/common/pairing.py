"""Paired statistics for bench/paired.py: the mean of per-seed differences with its t-interval, per-seed means over
a search's draws, the difference a design can detect, and trial-by-trial pairs of two searches that drew the same
configuration."""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

Record = dict[str, Any]


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of the per-seed differences, their SD and the two-sided t-interval (n - 1 degrees of freedom); no
    interval from fewer than 2 seeds."""
    from scipy.stats import t

    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan}
    sd = statistics.stdev(diffs)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def pool_mean(values: dict[str, dict[int, float]], members: Sequence[str]) -> dict[int, float]:
    """Per seed, the mean of one measure over a pool's arms (draws of one search): only seeds where every member
    has a value, so each seed's mean averages the same number of draws."""
    seeds = set.intersection(*(set(values.get(arm, {})) for arm in members))
    return {seed: statistics.fmean(values[arm][seed] for arm in members) for seed in sorted(seeds)}


def detectable(sd: float, n: int, power: float = 0.8, level: float = 0.95) -> float:
    """The true mean difference a paired t-test at `level` finds with `power` over n seeds, given the SD of the
    per-seed differences (the usual (t_alpha/2 + t_beta) x SD / sqrt(n) approximation)."""
    from scipy.stats import t

    return (float(t.ppf(0.5 + level / 2, n - 1)) + float(t.ppf(power, n - 1))) * sd / math.sqrt(n)


def same_draw(mine: dict[str, Any] | None, theirs: dict[str, Any] | None) -> bool:
    """Two trials drew one configuration: one's parameter names hold the other's (a space that adds fixed
    parameters to another; LoRA's and ElaLoRA's spaces never pair) and every shared value is equal."""
    shared = set(mine or {}) & set(theirs or {})
    nested = shared in (set(mine or {}), set(theirs or {}))
    return bool(shared) and nested and all(mine[k] == theirs[k] for k in shared)


def same_config_lines(rows: list[Record], base: str) -> list[str]:
    """Trials of an arm and the baseline, one seed, that drew one configuration: the arm's change measured per
    configuration, apart from the search's luck. An arm whose space only adds one-choice parameters (Optuna does
    not sample those) draws the baseline's random start-up, so most of its start-up pairs. Pairs are trials, not
    seeds (several per seed), so their interval describes them; it is not the protocol's test."""
    studies = {(r["arm"], r["seed"]): r for r in rows}
    metric = rows[0]["metric"]
    lines = []
    for arm in dict.fromkeys(r["arm"] for r in rows if r["arm"] != base):
        table, diffs, ratios, steps, drawn, only = [], [], [], [0, 0], 0, [0, 0]
        for seed in sorted(s for a, s in studies if a == arm and (base, s) in studies):
            # a failed trial (an error, not a result; the search runs its configuration again) pairs with nothing
            left = [t for t in studies[(base, seed)]["rows"] if t["state"] != "FAIL"]
            for mine in (t for t in studies[(arm, seed)]["rows"] if t["state"] != "FAIL"):
                theirs = next((t for t in left if same_draw(mine.get("params"), t.get("params"))), None)
                if theirs is None:
                    continue
                left.remove(theirs)
                drawn += 1
                steps = [steps[0] + (mine["steps_done"] or 0), steps[1] + (theirs["steps_done"] or 0)]
                complete = [t["state"] == "COMPLETE" for t in (mine, theirs)]
                only = [only[0] + (complete == [True, False]), only[1] + (complete == [False, True])]
                if all(complete):
                    diffs.append(100.0 * (mine[metric] - theirs[metric]))
                    ratios.append(mine["trainable_params"] / theirs["trainable_params"])
                    table.append(f"| {seed} | {mine['number']} / {theirs['number']} | {100.0 * mine[metric]:.1f} "
                                 f"at {mine['trainable_params']:,} | {100.0 * theirs[metric]:.1f} at "
                                 f"{theirs['trainable_params']:,} | {diffs[-1]:+.1f} |")
        if not drawn:
            continue
        ci = paired_interval(diffs)
        lines += ["", f"Same configurations, {arm} vs {base}: {drawn} configurations drawn by both, {len(diffs)} "
                  f"complete in both (complete in {arm} only {only[0]}, in {base} only {only[1]}); {metric} "
                  f"{ci['mean']:+.2f} points [{ci['low']:+.2f}, {ci['high']:+.2f}] over the pairs; trainable "
                  f"parameters {arm} / {base} median {statistics.median(ratios) if ratios else math.nan:.2f}x; "
                  f"optimizer steps of all these trials {steps[0]:,} / {steps[1]:,}"]
        if table:
            lines += ["", f"| seed | trial ({arm} / {base}) | {arm} | {base} | difference (points) |",
                      "|---|---|---|---|---|", *table]
    return lines
