"""Does the parameter budget move ElaLoRA's Pareto front left (issue 9.3)? A paired re-run of one ElaLoRA search.

The ElaLoRA arm of bench/search_vs_peers.py is a TPE study over the elalora space, whose `budget` is a sampled
choice (rank: a round conserves total rank, the paper; params: it conserves trainable parameters). This script
takes that study's configurations (per task and seed) and re-runs each with the other budget, everything else
equal: the same study file, steps, data sample, training seed and the same resolution of the space's values
(`StudyPlan.trial_spec` on an `optuna.trial.FixedTrial`). That gives two fronts over the same configurations, all
under the rank budget and all under the parameter budget, and the per-configuration change in size and accuracy.
Pairing removes the sampler's noise from the comparison; `--check` re-runs configurations with their original budget
to show how exactly a re-run reproduces the study's own result.

Results: one JSON line per re-run in bench/results/budget_front.jsonl (a re-run already there is skipped, so a
cut-short run resumes); the study rows it pairs with come from bench/results/search_vs_peers.jsonl.

    OMP_NUM_THREADS=1 python bench/budget_front.py --task sst2 --seed 42     # ~12 re-runs of ~100 s on this CPU
    python bench/budget_front.py --task sst2 --seed 42 --table              # the report (and its plot) only
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, append_jsonl, read_jsonl  # noqa: E402
from common.fronts import (  # noqa: E402
    Point, best_at, fmt, normalised_hv, reference, relation, save_front_plot, task_budgets,
)
from common.reruns import as_study, load_study, rerun_parser, study_plan, train_params  # noqa: E402
from common.studies import Record  # noqa: E402

RESULTS = RESULTS_DIR / "budget_front.jsonl"
BUDGETS = ("rank", "params")


def rerun_key(row: Record) -> tuple[Any, ...]:
    return row["task"], row["seed"], row["study"], row["number"], row["budget"]


def rerun(plan: Any, study: Record, trial: Record, budget: str) -> Record:
    """Train one configuration of the study with `budget`."""
    row = train_params(plan, study, trial, {**trial["params"], "budget": budget})
    return {**row, "budget": budget, "sampled_budget": trial["params"]["budget"]}


def run_all(args: argparse.Namespace, study: Record, trials: Sequence[Record]) -> None:
    """The flipped budget of every configuration, then the `--check` ones with their own budget; resumable."""
    done = {rerun_key(r) for r in read_jsonl(args.results)}
    todo = [(t, b) for t in trials for b in BUDGETS if b != t["params"]["budget"]]
    todo += [(t, t["params"]["budget"]) for t in trials if t["number"] in args.check]
    todo = [(t, b) for t, b in todo if (study["task"], study["seed"], study["study"], t["number"], b) not in done]
    if not todo:
        return
    plan = study_plan(args, study)
    for i, (trial, budget) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] trial {trial['number']} with budget {budget}", flush=True)
        row = rerun(plan, study, trial, budget)
        append_jsonl(args.results, row)
        print(f"    accuracy {row['accuracy']:.4f}, {row['trainable_params']:,} parameters, "
              f"{row['wall_time_s']:.0f} s", flush=True)


def paired(study: Record, trials: Sequence[Record], reruns: Sequence[Record]) -> dict[int, dict[str, Record]]:
    """Per configuration: its result under each budget (the study's own line for the budget it was sampled with)."""
    mine = {(r["number"], r["budget"]): r for r in reruns if r["study"] == study["study"] and r["status"] == "COMPLETE"}
    pairs: dict[int, dict[str, Record]] = {}
    for trial in trials:
        own = trial["params"]["budget"]
        other = next(b for b in BUDGETS if b != own)
        if (trial["number"], other) in mine:
            pairs[trial["number"]] = {own: trial, other: mine[(trial["number"], other)]}
    return pairs


def points(pairs: dict[int, dict[str, Record]], budget: str) -> list[Point]:
    return [(p[budget]["accuracy"], float(p[budget]["trainable_params"])) for p in pairs.values()]


def pair_table(pairs: dict[int, dict[str, Record]]) -> list[str]:
    lines = ["| trial | r_init | targets | sampled budget | rank: accuracy, params | params: accuracy, params | "
             "size change | accuracy change (points) |", "|---|---|---|---|---|---|---|---|"]
    for number, pair in sorted(pairs.items()):
        rank, par = pair["rank"], pair["params"]
        sampled = next(b for b in BUDGETS if "state" in pair[b])  # the study's own line has a state
        cfg = pair[sampled]["params"]
        lines.append(
            f"| {number} | {cfg['r_init']} | {cfg['target_modules']} | {sampled} | {fmt(rank['accuracy'])}, "
            f"{rank['trainable_params']:,} | {fmt(par['accuracy'])}, "
            f"{par['trainable_params']:,} | {100 * (par['trainable_params'] / rank['trainable_params'] - 1):+.1f}% | "
            f"{100 * (par['accuracy'] - rank['accuracy']):+.1f} |")
    return lines


def check_lines(study: Record, trials: Sequence[Record], reruns: Sequence[Record]) -> list[str]:
    """Re-runs of a configuration with the budget it was sampled with, against the study's own result."""
    own = {(t["number"], t["params"]["budget"]): t for t in trials}
    lines = []
    for row in reruns:
        if row["study"] == study["study"] and (row["number"], row["budget"]) in own and row["status"] == "COMPLETE":
            trial = own[(row["number"], row["budget"])]
            lines.append(f"- check, trial {row['number']} ({row['budget']}): study {fmt(trial['accuracy'], '.2f')}% "
                         f"with {trial['trainable_params']:,} parameters, re-run {fmt(row['accuracy'], '.2f')}% with "
                         f"{row['trainable_params']:,}")
    return lines


def summary_lines(study: Record, pairs: dict[int, dict[str, Record]]) -> list[str]:
    rank, par = points(pairs, "rank"), points(pairs, "params")
    both = [as_study(study, rank), as_study(study, par)]
    ref, budgets = reference(both), task_budgets(both, None)
    size = [100 * (p["params"]["trainable_params"] / p["rank"]["trainable_params"] - 1) for p in pairs.values()]
    gain = [100 * (p["params"]["accuracy"] - p["rank"]["accuracy"]) for p in pairs.values()]
    lines = [f"- {len(pairs)} configurations, each under both budgets. Size change (params vs rank): median "
             f"{statistics.median(size):+.1f}%, range {min(size):+.1f}% to {max(size):+.1f}%; accuracy change: mean "
             f"{statistics.mean(gain):+.2f} points, range {min(gain):+.1f} to {max(gain):+.1f}.",
             f"- Fronts over the same configurations, reference (majority {100 * ref[0]:.1f}%, {ref[1]:,.0f} "
             f"parameters): hypervolume rank {normalised_hv(rank, ref):.4f}, params {normalised_hv(par, ref):.4f}; "
             f"the params front {relation(par, rank)} the rank front."]
    for budget in budgets:
        lines.append(f"- best at <= {budget:,} parameters: rank {fmt(best_at(rank, budget))}%, params "
                     f"{fmt(best_at(par, budget))}%")
    return lines


def plot(study: Record, pairs: dict[int, dict[str, Record]], folder: Path) -> Path:
    """Both budgets' points, a thin line joining each configuration's pair, and each budget's front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elalora_auto.search.pareto import pareto_front

    fig, ax = plt.subplots(figsize=(10, 5.5))
    for pair in pairs.values():
        xs = [pair[b]["trainable_params"] for b in BUDGETS]
        ax.plot(xs, [100 * pair[b]["accuracy"] for b in BUDGETS], color="grey", linewidth=0.8, alpha=0.6)
    right = 1.05 * max(p[b]["trainable_params"] for p in pairs.values() for b in BUDGETS)
    # rank: large rings, params: small dots, so a configuration the budget does not change (all its matrices of one
    # width, e.g. attention only) shows as a dot inside a ring
    for budget, colour, marker in zip(BUDGETS, ("tab:red", "tab:orange"), ({"s": 70, "facecolors": "none"},
                                                                         {"s": 22})):
        pts = points(pairs, budget)
        ax.scatter([c for _, c in pts], [100 * m for m, _ in pts], **marker, **(
            {"edgecolors": colour} if "facecolors" in marker else {"color": colour}), label=f"budget {budget}")
        front = sorted((pts[i] for i in pareto_front(pts)), key=lambda p: p[1])
        ax.step([c for _, c in front] + [right], [100 * m for m, _ in front] + [100 * front[-1][0]], where="post",
                color=colour, linewidth=1.8, label=f"front, budget {budget}")
    ax.set_title(f"{study['task']} seed {study['seed']}: the ElaLoRA study's {len(pairs)} configurations under "
                 "each budget (grey: same configuration)")
    return save_front_plot(fig, ax, folder / f"budget_front_{study['task']}_s{study['seed']}.png", loc="upper left",
                           bbox_to_anchor=(1.01, 1.0))  # outside: never over a point


def report(study: Record, trials: Sequence[Record], reruns: Sequence[Record], folder: Path) -> str:
    pairs = paired(study, trials, reruns)
    head = (f"### {study['task']}, seed {study['seed']}: study {study['study']} ({study['steps_per_trial']} steps per "
            f"trial), {len(pairs)} of {len(trials)} configurations paired")
    if not pairs:
        return head
    body = pair_table(pairs) + [""] + summary_lines(study, pairs) + check_lines(study, trials, reruns)
    return "\n".join([head, "", *body, "", f"Plot: {plot(study, pairs, folder)}"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = rerun_parser(__doc__.splitlines()[0], 42, RESULTS, "budget_front")
    parser.add_argument("--check", nargs="*", type=int, default=[4],
                        help="trial numbers also re-run with their own budget (reproduction check)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    _, study, trials = load_study(args)
    if not args.table:
        run_all(args, study, trials)
    print(report(study, trials, read_jsonl(args.results), args.plots))


if __name__ == "__main__":
    main()
