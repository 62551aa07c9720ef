"""Search vs peers (issue 9.5): elalora-auto's own searches (ElaLoRA, LoRA, AdaLoRA) against transformers'
`Trainer.hyperparameter_search` over PEFT LoRA, at the same trial budget and optimizer steps per trial.

Per task (SST-2, the MNLI subset; MiniLM) and seed, each arm is one whole study of `--trials` trials. The
elalora-auto arms are `run_search` on the built-in study file (sst2-minilm, mnli-minilm) with the method's
built-in space and no pruning (`--pruning-json`), so every trial runs the study file's steps. The `trainer-hps`
arm is the stock route: a `model_init` building MiniLM + a PEFT LoraConfig, an Optuna `hp_space` over r,
lora_alpha and learning_rate with lora.yaml's ranges, eval accuracy as its single objective, on the same
tokenised rows, batch size, length, steps, linear schedule with 10% warm-up and seed. Its Optuna gets no pruner
and no enqueued trial 0 (the elalora-auto arms enqueue their space's defaults, as `search` does).

Results: one JSON line per finished trial and per finished study in bench/results/search_vs_peers.jsonl; a study
already there is skipped and a cut-short one resumes from its Optuna journal under bench/out/search_vs_peers/.

    OMP_NUM_THREADS=1 python bench/search_vs_peers.py                       # 2 tasks x 4 arms x 2 seeds x 12 trials
    python bench/search_vs_peers.py --table                                # the report from the JSONL
    python bench/search_vs_peers.py --markdown                             # the same as a BENCHMARKS.md section
    python bench/search_vs_peers.py --smoke                                # tiny model, synthetic task, ~1 min
    python bench/search_vs_peers.py --arms elalora --space elalora=bench/spaces/elalora-lean.yaml \
        --results bench/results/search_vs_peers_space_lean.jsonl --workdir bench/out/search_vs_peers_space_lean
                                                                  # an experiment: another space for one arm

The report per task: hypervolume of each study's (accuracy, trainable parameters) front against one reference
(majority-class accuracy, 1.1 x the largest size any arm reached), best accuracy at <= P parameters for three
budgets (the 25/50/75% quantiles of all arms' sizes, or `--budgets`), steps and wall time; then whether
ElaLoRA's front dominates the others per seed, and ElaLoRA's margin at each budget over the better of LoRA and
AdaLoRA (target: +1 point). A front plot per task goes to bench/out/search_vs_peers_TASK.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the names bench/paired.py reads from this module (peers.X) come with these imports
from common import (  # noqa: E402, F401
    GLUE, OUT, ROOT, append_jsonl, git_commit, machine_note, read_jsonl,
)
from common.fronts import (  # noqa: E402, F401
    best_at, complete_points, covers, fmt, mean_or_none, normalised_hv, plot_fronts, reference, relation, task_budgets,
)
from common.studies import (  # noqa: E402, F401
    ARMS, PROJECT_ARMS, SEARCH_RESULTS, SMOKE_TASK, SMOKE_TRIALS, STUDY_FILES, Record, arm_settings, planned_steps,
    run_project_arm, study_key, study_record, study_rows_of,
)
from common.trainer_hps import run_trainer_arm  # noqa: E402

RESULTS = SEARCH_RESULTS
SMOKE_RESULTS = OUT / "search_vs_peers_smoke.jsonl"
WORKDIR = OUT / "search_vs_peers"
GOAL_POINTS = 1.0


# -- the studies ----------------------------------------------------------------------------------------------
def run_all(args: argparse.Namespace) -> None:
    """Every (seed, task, arm) study not yet in the results, seed-major: a cut-short run has every arm of the
    first seed."""
    import torch

    torch.set_num_threads(args.threads)
    done = {study_key(r) for r in read_jsonl(args.results) if r["kind"] == "study"}
    todo = [(seed, task, arm) for seed in args.seeds for task in args.tasks for arm in args.arms]
    for i, (seed, task, arm) in enumerate(todo, 1):
        key = {"task": task, "arm": arm, "seed": seed, "trials": args.trials, "steps": planned_steps(args, task)}
        key["study"] = f"{task}-{arm}-seed{seed}-{key['steps']}steps"
        if arm in args.space:
            key["space"] = args.space[arm]
        if study_key(key) in done:
            print(f"[{i}/{len(todo)}] skip {key['study']} (complete in {args.results})", flush=True)
            continue
        print(f"[{i}/{len(todo)}] {time.strftime('%H:%M:%S')} {key['study']}: {args.trials} trials", flush=True)
        before, start = machine_note(), time.perf_counter()
        settings = arm_settings(args, key)
        runner = run_trainer_arm if arm == "trainer-hps" else run_project_arm
        study, plan, trials_dir = runner(settings, args.results, key)
        if plan.primary_metric != "accuracy":
            raise SystemExit(f"{task}: the report compares accuracy, but the task's metric is {plan.primary_metric}")
        append_jsonl(args.results, study_record(key, study, plan, trials_dir, before,
                                                 time.perf_counter() - start, args.threads))


# -- the report -----------------------------------------------------------------------------------------------


def select_studies(records: Iterable[Record], args: argparse.Namespace) -> dict[str, list[Record]]:
    """Per task, the latest complete study of each requested (arm, seed) with this run's budget and steps."""
    wanted = {(task, arm, seed, args.trials, planned_steps(args, task))
              for task in args.tasks for arm in args.arms for seed in args.seeds}
    latest = {study_key(r): r for r in records if r["kind"] == "study" and study_key(r) in wanted}
    by_task: dict[str, list[Record]] = {}
    for key in sorted(latest, key=lambda k: (args.tasks.index(k[0]), ARMS.index(k[1]), k[2])):
        by_task.setdefault(key[0], []).append(latest[key])
    return by_task


def arm_lines(arm: str, studies: Sequence[Record], ref: tuple[float, float], budgets: Sequence[int]) -> list[str]:
    """The table rows of one arm: one per seed, then the mean over seeds."""
    cells: list[list[float | None]] = []
    lines = []
    for study in studies:
        points = complete_points(study)
        trials = len(study["rows"])
        values = [normalised_hv(points, ref), *(best_at(points, b) for b in budgets), best_at(points, float("inf")),
                  study["steps_total"], study["wall_time_s"], study["wall_time_s"] / max(trials, 1)]
        cells.append(values)
        lines.append(f"| {arm} | {study['seed']} | {trials} ({len(points)}) | {fmt(values[0], '.4f', 1)} | "
                     + " | ".join(fmt(v) for v in values[1:len(budgets) + 2])
                     + f" | {values[-3]:,} | {values[-2] / 60:.1f} | {values[-1]:.1f} |")
    means = [mean_or_none(column) for column in zip(*cells)]
    lines.append(f"| {arm} | mean | | {fmt(means[0], '.4f', 1)} | "
                 + " | ".join(fmt(v) for v in means[1:len(budgets) + 2])
                 + f" | {means[-3]:,.0f} | {means[-2] / 60:.1f} | {means[-1]:.1f} |")
    return lines


def task_table(task: str, studies: Sequence[Record], given: Sequence[int] | None) -> tuple[str, list[int]]:
    """The markdown table of one task (every arm, each seed and the mean) and its budgets."""
    ref, budgets = reference(studies), task_budgets(studies, given)
    first = studies[0]
    source = "--budgets" if given else "25/50/75% quantiles of all arms' sizes"
    head = [f"### {task}: {first['steps_per_trial']} optimizer steps per trial, batch {first['batch_size']}, "
            f"max length {first['max_length']}, {first['trials']} trials per study, pruning {first['pruning']}",
            "", f"Reference: accuracy floor {ref[0]:.4f} (majority class of the eval split), cost ceiling "
            f"{ref[1]:,.0f} parameters (1.1 x the largest trainable size of any arm). Budgets P: "
            + ", ".join(f"{b:,}" for b in budgets) + f" ({source}). Accuracy in %.", "",
            "| arm | seed | trials (complete) | HV (normalised) | " + " | ".join(f"best <= {b:,}" for b in budgets)
            + " | best | optimizer steps | wall (min) | s/trial |", "|---" * (8 + len(budgets)) + "|"]
    rows = []
    for arm in ARMS:
        mine = [s for s in studies if s["arm"] == arm]
        rows += arm_lines(arm, mine, ref, budgets) if mine else []
    return "\n".join(head + rows), budgets


def dominance_lines(by_task: dict[str, list[Record]]) -> list[str]:
    """Per task and seed: ElaLoRA's front against each other arm's front of the same seed."""
    lines, wins, pairs = [], 0, 0
    for task, studies in by_task.items():
        ref = reference(studies)
        for seed in dict.fromkeys(s["seed"] for s in studies):
            of_seed = {s["arm"]: complete_points(s) for s in studies if s["seed"] == seed}
            if "elalora" not in of_seed or len(of_seed) < 2:
                continue
            mine = of_seed.pop("elalora")
            parts = [f"{relation(mine, pts)} {arm} (HV {normalised_hv(mine, ref):.4f} vs "
                     f"{normalised_hv(pts, ref):.4f})" for arm, pts in of_seed.items()]
            pairs += 1
            wins += all(covers(mine, pts) for pts in of_seed.values())
            lines.append(f"- {task}, seed {seed}: ElaLoRA's front " + "; ".join(parts))
    if pairs:
        lines.append(f"- ElaLoRA's front dominates every other arm's in {wins} of {pairs} (task, seed) pairs.")
    return lines


def seed_mean_best(studies: Sequence[Record], arm: str, budget: int) -> float | None:
    """The arm's best accuracy at <= budget, averaged over its seeds (None when a seed has no trial there)."""
    return mean_or_none([best_at(complete_points(s), budget) for s in studies if s["arm"] == arm])


def goal_lines(by_task: dict[str, list[Record]], budgets: dict[str, list[int]]) -> list[str]:
    """Per budget level: ElaLoRA's seed-mean best at <= P minus the best of the peers' (LoRA and AdaLoRA, the
    Trainer's search over LoRA included: it finds LoRA adapters too), per task and as the mean over tasks, against
    the +1 point target. A peer with no trial at or under P is left out."""
    lines = []
    for level in range(3):
        diffs, parts = [], []
        for task, studies in by_task.items():
            if level >= len(budgets[task]):
                continue
            budget = budgets[task][level]
            mine = seed_mean_best(studies, "elalora", budget)
            peers = {a: v for a in ARMS[1:] if (v := seed_mean_best(studies, a, budget)) is not None}
            if mine is None or not peers:
                found = " / ".join(f"{a} {100 * v:.1f}" for a, v in peers.items()) or "no peer either"
                none = "ElaLoRA none this small, " if mine is None else ""
                parts.append(f"{task} (P {budget:,}): not measurable ({none}{found})")
                continue
            diffs.append(100 * (mine - max(peers.values())))
            parts.append(f"{task} (P {budget:,}): ElaLoRA {100 * mine:.1f} vs "
                         + " / ".join(f"{a} {100 * v:.1f}" for a, v in peers.items()) + f" = {diffs[-1]:+.1f}")
        verdict = "no task measurable"
        if diffs:
            mean = statistics.mean(diffs)
            verdict = (f"mean {mean:+.1f} points over {len(diffs)} task(s): target +{GOAL_POINTS:.0f} "
                       + ("met" if mean >= GOAL_POINTS else "NOT met"))
        lines.append(f"- P{level + 1}: " + "; ".join(parts) + f" -> {verdict}")
    return lines


def report(records: list[Record], args: argparse.Namespace) -> str:
    """The tables of every task, the dominance lines and the goal line; plots are written beside."""
    by_task = select_studies(records, args)
    if not by_task:
        return f"no complete study in {args.results} for these tasks, arms, seeds, --trials and steps"
    parts, budgets = [], {}
    for task, studies in by_task.items():
        table, budgets[task] = task_table(task, studies, args.budgets)
        path = plot_task(task, studies, reference(studies), args.plots)
        parts.append(f"{table}\n\nFront plot: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    missing = [f"{t}/{a}/seed {s}" for t in args.tasks for a in args.arms for s in args.seeds
               if not any(r["arm"] == a and r["seed"] == s for r in by_task.get(t, []))]
    goal = ["**Goal (ElaLoRA best at <= P minus the best peer's (LoRA, AdaLoRA, Trainer HPS) at <= P, seed means; "
            "mean over tasks; "
            f"target +{GOAL_POINTS:.0f} point):**", *goal_lines(by_task, budgets)]
    text = "\n\n".join(parts + ["**Fronts (per task, per seed):**\n" + "\n".join(dominance_lines(by_task)),
                                "\n".join(goal)])
    return text + (f"\n\nNot run or not complete yet (not shown): {', '.join(missing)}" if missing else "")


def plot_task(task: str, studies: Sequence[Record], ref: tuple[float, float], folder: Path) -> Path:
    """All arms and seeds of one task on one figure (common.fronts.plot_fronts)."""
    first = studies[0]
    return plot_fronts(studies, ref, folder / f"search_vs_peers_{task}.png",
                       f"{task}: search fronts, {first['trials']} trials x {first['steps_per_trial']} steps per study")


def markdown(records: list[Record], args: argparse.Namespace, text: str) -> str:
    """A BENCHMARKS.md section: the commands that produced the studies, dates, machine, then the report."""
    studies = [s for group in select_studies(records, args).values() for s in group]
    if not studies:
        return text
    commands = "; ".join(f"`{c}`" for c in dict.fromkeys(s["command"] for s in studies))
    commits = ", ".join(dict.fromkeys(s["commit"] for s in studies))
    return (f"## Search vs peers (issue 9.5): ElaLoRA, LoRA and AdaLoRA searches vs Trainer.hyperparameter_search\n\n"
            f"Command: {commands}  \nDates: {studies[0]['date']} to {studies[-1]['date']}; commit {commits}; "
            f"{studies[0]['threads']} torch thread(s)  \nMachine at start: {studies[0]['machine_before']}  \n"
            f"Machine at end: {studies[-1]['machine_after']}\n\n"
            "Every arm: the same trial budget and optimizer steps per trial, no pruning. elalora-auto arms: "
            "`run_search` with the built-in study file and the method's own space (trial 0 = the space's defaults "
            "with the file's trial-0 learning rate). trainer-hps: `Trainer.hyperparameter_search(backend=\"optuna\")` "
            "over PEFT LoRA (r, lora_alpha, learning_rate from lora.yaml's ranges; dropout and targets at lora.yaml's "
            "defaults), single objective = eval accuracy, no trial 0. HV: hypervolume of the (accuracy, trainable "
            "parameters) front as a share of the reference box.\n\n" + text + "\n")


# -- command line ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(STUDY_FILES), default=["sst2", "mnli"])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--trials", type=int, default=None, help=f"per study (default 12; {SMOKE_TRIALS} with --smoke)")
    parser.add_argument("--max-steps", type=int, default=None, help="per trial (default: the study file's)")
    parser.add_argument("--data-dir", type=Path, default=GLUE)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--pruning-json", default='{"rule": "none"}',
                        help="the pruning settings of every elalora-auto arm, as JSON")
    parser.add_argument("--space", nargs="+", default=[], metavar="ARM=YAML",
                        help="another search space for an elalora-auto arm (an experiment: use its own --results)")
    parser.add_argument("--budgets", nargs=3, type=int, default=None, help="P values (default: size quantiles)")
    parser.add_argument("--results", type=Path, default=None, help=f"JSONL (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="study journals, trial folders, caches")
    parser.add_argument("--plots", type=Path, default=OUT, help="folder of the front plots")
    parser.add_argument("--table", action="store_true", help="print the report from the results and exit")
    parser.add_argument("--markdown", action="store_true", help="print the report as a BENCHMARKS.md section")
    parser.add_argument("--smoke", action="store_true", help="tiny model, synthetic task, 2 trials, 20 steps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tasks = [SMOKE_TASK]
    spaces = dict(item.partition("=")[::2] for item in args.space)
    if any(arm not in PROJECT_ARMS or not path for arm, path in spaces.items()):
        parser.error(f"--space takes ARM=YAML with ARM one of {', '.join(PROJECT_ARMS)}, got {' '.join(args.space)}")
    args.space = spaces
    args.trials = args.trials or (SMOKE_TRIALS if args.smoke else 12)
    args.results = args.results or (SMOKE_RESULTS if args.smoke else RESULTS)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.table or args.markdown):
        run_all(args)
    records = read_jsonl(args.results)
    text = report(records, args)
    print(markdown(records, args, text) if args.markdown else text)


if __name__ == "__main__":
    main()
