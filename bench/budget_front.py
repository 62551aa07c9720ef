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
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GLUE, OUT, ROOT, append_jsonl, read_jsonl  # noqa: E402
from search_vs_peers import (  # noqa: E402
    RESULTS as STUDY_RESULTS, arm_settings, best_at, fmt, normalised_hv, reference, relation, save_front_plot,
    study_key, task_budgets,
)

RESULTS = ROOT / "bench" / "results" / "budget_front.jsonl"
BUDGETS = ("rank", "params")
Record = dict[str, Any]
Point = tuple[float, float]


def elalora_study(records: Sequence[Record], task: str, seed: int) -> Record:
    """The latest complete ElaLoRA study of search_vs_peers for this task and seed."""
    studies = [r for r in records if r["kind"] == "study" and r["task"] == task and r["arm"] == "elalora"
               and r["seed"] == seed]
    if not studies:
        raise SystemExit(f"no complete ElaLoRA study for {task} seed {seed} in {STUDY_RESULTS}: run "
                         f"bench/search_vs_peers.py --tasks {task} --seeds {seed} --arms elalora first")
    return studies[-1]


def study_trials(records: Sequence[Record], study: Record) -> list[Record]:
    """That study's COMPLETE trial lines (its configurations, with the budget each was sampled with)."""
    key = study_key(study)
    rows = {r["number"]: r for r in records if r["kind"] == "trial" and study_key(r) == key}
    return [rows[n] for n in sorted(rows) if rows[n]["state"] == "COMPLETE"]


def rerun_key(row: Record) -> tuple[Any, ...]:
    return row["task"], row["seed"], row["study"], row["number"], row["budget"]


def train_params(plan: Any, study: Record, trial: Record, params: dict[str, Any]) -> Record:
    """Train one configuration of the study with `params` (its own, some changed), as the study's own objective
    would have: the same resolution of the space's values (`trial_spec` on a FixedTrial), steps, data and seed.
    A name the space samples but the study did not (added to the space later) takes its default, the value that
    study ran with; a name the space does not sample is set on the method's params."""
    import optuna

    from elalora_auto.trial import run_trial

    spec = plan.trial_spec(optuna.trial.FixedTrial({**plan.space.default_params(), **params}))
    sampled = {param.name for param in plan.space.params}
    spec.params |= {name: value for name, value in params.items() if name not in sampled}
    start = time.perf_counter()
    result = run_trial(spec, progress=False)
    return {"task": study["task"], "seed": study["seed"], "study": study["study"], "number": trial["number"],
            "params": params, "status": result.state.name, "accuracy": result.primary,
            "trainable_params": result.trainable_params, "total_rank": sum(result.rank_map.values()),
            "wall_time_s": round(time.perf_counter() - start, 1),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def rerun(plan: Any, study: Record, trial: Record, budget: str) -> Record:
    """Train one configuration of the study with `budget`."""
    row = train_params(plan, study, trial, {**trial["params"], "budget": budget})
    return {**row, "budget": budget, "sampled_budget": trial["params"]["budget"]}


def study_plan(args: argparse.Namespace, study: Record) -> Any:
    """The StudyPlan the ElaLoRA study ran under (its study file, steps, seed), to re-run its configurations."""
    from elalora_auto.search.plan import plan_study

    return plan_study(arm_settings(args, {"task": study["task"], "arm": "elalora", "seed": study["seed"],
                                          "trials": study["trials"], "steps": study["steps"], "study": study["study"]}))


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


def as_study(study: Record, pts: Sequence[Point]) -> Record:
    """Points in the shape of a search_vs_peers study, for its reference and budget helpers."""
    return {"baseline": study["baseline"],
            "rows": [{"state": "COMPLETE", "accuracy": m, "trainable_params": c} for m, c in pts]}


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


def rerun_parser(description: str, seed: int, results: Path, workdir: str) -> argparse.ArgumentParser:
    """The arguments every paired re-run bench takes (this one and setting_front.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", default="sst2", help="a task of bench/search_vs_peers.py")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--data-dir", type=Path, default=GLUE)
    parser.add_argument("--studies", type=Path, default=STUDY_RESULTS, help="search_vs_peers results (JSONL)")
    parser.add_argument("--results", type=Path, default=results, help="re-runs, appended and resumed (JSONL)")
    parser.add_argument("--workdir", type=Path, default=OUT / workdir, help="data cache of the re-runs")
    parser.add_argument("--plots", type=Path, default=OUT)
    parser.add_argument("--pruning-json", default='{"rule": "none"}', help=argparse.SUPPRESS)
    parser.add_argument("--table", action="store_true", help="print the report from the results and exit")
    return parser


def load_study(args: argparse.Namespace) -> tuple[list[Record], Record, list[Record]]:
    """The studies file, its latest ElaLoRA study for --task and --seed, and that study's complete trials."""
    records = read_jsonl(args.studies)
    study = elalora_study(records, args.task, args.seed)
    return records, study, study_trials(records, study)


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
