"""Does one method setting move ElaLoRA's front left? Paired re-runs of one ElaLoRA search with that setting changed.

Takes the ElaLoRA study of bench/search_vs_peers.py for a task and seed and re-runs each of its configurations with
one setting changed (`--set final_budget=0.5`; repeat `--set` for several values), everything else equal, as
bench/budget_front.py does for the budget: the same study file, steps, data sample, training seed and resolution of
the space's values. Pairing removes the sampler's noise: each configuration is compared with itself. The report
puts the study's front, each variant's front and the LoRA and Trainer HPS searches of the same task and seed (from
the same results file) on one hypervolume reference, with the best accuracy at <= P parameters and a plot.

Results: one JSON line per re-run in bench/results/setting_front.jsonl (a re-run already there is skipped, so a
cut-short run resumes).

    OMP_NUM_THREADS=1 python bench/setting_front.py --task sst2 --seed 44 --set final_budget=0.5 \\
        --studies bench/results/search_vs_peers_v2.jsonl                      # 12 re-runs of ~2 min on this CPU
    ... --numbers 0 1 2 3 4 5   and   ... --numbers 6 7 8 9 10 11           # the same as two processes
    python bench/setting_front.py --task sst2 --seed 44 --set final_budget=0.5 \\
        --studies bench/results/search_vs_peers_v2.jsonl --table              # the report (and its plot) only
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, append_jsonl, read_jsonl  # noqa: E402
from common.fronts import (  # noqa: E402
    Point, best_at, fmt, normalised_hv, reference, relation, save_front_plot, task_budgets,
)
from common.reruns import as_study, load_study, rerun_parser, study_plan, train_params  # noqa: E402
from common.studies import Record  # noqa: E402

RESULTS = RESULTS_DIR / "setting_front.jsonl"
PEER_ARMS = ("lora", "trainer-hps")


def points_of(rows: Sequence[Record]) -> list[Point]:
    """(accuracy, size) of finished rows: a study's trial lines (state) or re-runs (status)."""
    return [(r["accuracy"], float(r["trainable_params"])) for r in rows
            if r.get("state", r.get("status")) == "COMPLETE" and r["accuracy"] is not None and r["trainable_params"]]


def parse_setting(text: str) -> tuple[str, Any]:
    """'final_budget=0.5' -> ('final_budget', 0.5): the value read as YAML, as in a search space."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--set {text!r}: write NAME=VALUE, e.g. --set final_budget=0.5")
    return name, yaml.safe_load(value)


def run_all(args: argparse.Namespace, study: Record, trials: Sequence[Record]) -> None:
    """Every configuration under every --set, skipping those already in the results."""
    done = {(r["study"], r["number"], r["setting"]) for r in read_jsonl(args.results)}
    todo = [(t, s) for s in args.set for t in trials if (study["study"], t["number"], s) not in done
            and (args.numbers is None or t["number"] in args.numbers)]
    if not todo:
        return
    plan = study_plan(args, study)
    for i, (trial, setting) in enumerate(todo, 1):
        name, value = parse_setting(setting)
        print(f"[{i}/{len(todo)}] trial {trial['number']} with {setting}", flush=True)
        row = {**train_params(plan, study, trial, {**trial["params"], name: value}), "setting": setting}
        append_jsonl(args.results, row)
        print(f"    accuracy {row['accuracy']:.4f}, {row['trainable_params']:,} parameters, "
              f"{row['wall_time_s']:.0f} s", flush=True)


def variants(study: Record, trials: Sequence[Record], reruns: Sequence[Record],
             settings: Sequence[str]) -> dict[str, dict[int, Record]]:
    """Per setting: configuration number -> its re-run (COMPLETE ones only)."""
    numbers = {t["number"] for t in trials}
    out: dict[str, dict[int, Record]] = {s: {} for s in settings}
    for row in reruns:
        if (row["study"] == study["study"] and row["setting"] in out and row["number"] in numbers
                and row["status"] == "COMPLETE"):
            out[row["setting"]][row["number"]] = row
    return out


def peer_studies(records: Sequence[Record], study: Record) -> dict[str, Record]:
    """The latest LoRA and Trainer HPS studies of the same task, seed, trials and steps."""
    same = ("task", "seed", "trials", "steps")
    return {r["arm"]: r for r in records if r["kind"] == "study" and r["arm"] in PEER_ARMS
            and all(r[k] == study[k] for k in same)}


def pair_table(label: str, trials: Sequence[Record], found: dict[str, dict[int, Record]]) -> list[str]:
    head = f"| trial | r_init | targets | {label}: accuracy, params | " + " | ".join(
        f"{s}: accuracy, params (size, points)" for s in found) + " |"
    lines = [head, "|" + "---|" * (4 + len(found))]
    for trial in trials:
        cells = [str(trial["number"]), str(trial["params"]["r_init"]), str(trial["params"]["target_modules"]),
                 f"{fmt(trial['accuracy'])}, {trial['trainable_params']:,}"]
        for runs in found.values():
            row = runs.get(trial["number"])
            cells.append("-" if row is None else
                         f"{fmt(row['accuracy'])}, {row['trainable_params']:,} "
                         f"({100 * (row['trainable_params'] / trial['trainable_params'] - 1):+.0f}%, "
                         f"{100 * (row['accuracy'] - trial['accuracy']):+.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_lines(label: str, study: Record, trials: Sequence[Record], found: dict[str, dict[int, Record]],
                  peers: dict[str, Record], budgets_given: Sequence[int] | None) -> list[str]:
    own = {t["number"]: t for t in trials}
    fronts: dict[str, list[Point]] = {label: points_of(trials)}
    lines = []
    for setting, runs in found.items():
        if not runs:
            continue
        size = [100 * (r["trainable_params"] / own[n]["trainable_params"] - 1) for n, r in runs.items()]
        gain = [100 * (r["accuracy"] - own[n]["accuracy"]) for n, r in runs.items()]
        lines.append(f"- {setting}: {len(runs)} configurations re-run. Size change: median "
                     f"{statistics.median(size):+.1f}% (range {min(size):+.1f}% to {max(size):+.1f}%); accuracy "
                     f"change: mean {statistics.mean(gain):+.2f} points (range {min(gain):+.1f} to {max(gain):+.1f}).")
        fronts[setting] = points_of(list(runs.values()))
    fronts |= {f"{arm} search": points_of(s["rows"]) for arm, s in peers.items()}
    shaped = [as_study(study, pts) for pts in fronts.values()]
    ref, budgets = reference(shaped), task_budgets(shaped, budgets_given)
    lines.append(f"- Hypervolume on one reference (majority {100 * ref[0]:.1f}%, {ref[1]:,.0f} parameters): "
                 + "; ".join(f"{name} {normalised_hv(pts, ref):.4f}" for name, pts in fronts.items()) + ".")
    for name, pts in list(fronts.items())[1:]:
        # a variant against the study, the other variants and the peers; a peer against the study and the variants
        against = [other for other in fronts if other != name and not (name.endswith(" search")
                                                                       and other.endswith(" search"))]
        lines.append(f"- {name}: its front " + "; ".join(f"{relation(pts, fronts[other])} that of the {other}"
                                                        for other in against) + ".")
    for budget in budgets:
        lines.append(f"- best at <= {budget:,} parameters: " + "; ".join(
            f"{name} {fmt(best_at(pts, budget))}%" for name, pts in fronts.items()))
    return lines


def plot(label: str, study: Record, trials: Sequence[Record], found: dict[str, dict[int, Record]],
         peers: dict[str, Record], folder: Path) -> Path:
    """The study's points (rings), each variant's (dots) joined to their configuration, every front as a step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elalora_auto.search.pareto import pareto_front

    fig, ax = plt.subplots(figsize=(10, 5.5))
    own = {t["number"]: t for t in trials}
    for runs in found.values():
        for number, row in runs.items():
            ax.plot([own[number]["trainable_params"], row["trainable_params"]],
                    [100 * own[number]["accuracy"], 100 * row["accuracy"]], color="grey", linewidth=0.7, alpha=0.5)
    series = [(f"ElaLoRA, {label}", points_of(trials), "tab:red", "o", "-")]
    series += [(f"ElaLoRA, {s}", points_of(list(r.values())), colour, ".", "-")
               for (s, r), colour in zip(found.items(), ("tab:orange", "tab:purple", "tab:brown"))]
    series += [(f"{arm} search", points_of(peers[arm]["rows"]), colour, "x", "--")
               for arm, colour in zip(PEER_ARMS, ("tab:blue", "tab:green")) if arm in peers]
    right = 1.05 * max(c for _, pts, *_ in series for _, c in pts)
    for label, pts, colour, marker, style in series:
        if not pts:
            continue
        ring = {"facecolors": "none", "edgecolors": colour, "s": 70} if marker == "o" else {"color": colour, "s": 30}
        ax.scatter([c for _, c in pts], [100 * m for m, _ in pts], marker=marker, label=label, **ring)
        front = sorted((pts[i] for i in pareto_front(pts)), key=lambda p: p[1])
        ax.step([c for _, c in front] + [right], [100 * m for m, _ in front] + [100 * front[-1][0]], where="post",
                color=colour, linestyle=style, linewidth=1.6)
    ax.set_title(f"{study['task']} seed {study['seed']}: the ElaLoRA study's configurations re-run with each setting "
                 "\n(grey: same configuration; steps: each set's Pareto front, dashed: the peer searches)")
    return save_front_plot(fig, ax, folder / f"setting_front_{study['task']}_s{study['seed']}.png", loc="upper left",
                           bbox_to_anchor=(1.01, 1.0))


def report(args: argparse.Namespace, records: Sequence[Record], study: Record, trials: Sequence[Record]) -> str:
    found = variants(study, trials, read_jsonl(args.results), args.set)
    peers = peer_studies(records, study)
    label = "study (as searched)"
    if args.baseline:  # compare with re-runs at the study's own setting, made in the variants' environment
        runs = found.pop(args.baseline)
        trials = [{**t, **{k: runs[t["number"]][k] for k in ("accuracy", "trainable_params")}}
                  for t in trials if t["number"] in runs]
        label = f"{args.baseline} re-run"
        kept = {t["number"] for t in trials}
        found = {setting: {n: r for n, r in rows.items() if n in kept} for setting, rows in found.items()}
    head = (f"### {study['task']}, seed {study['seed']}: study {study['study']} ({study['steps_per_trial']} steps per "
            f"trial), {len(trials)} configurations; {', '.join(found)} against the {label}")
    body = pair_table(label, trials, found) + [""] + summary_lines(label, study, trials, found, peers, args.budgets)
    return "\n".join([head, "", *body, "", f"Plot: {plot(label, study, trials, found, peers, args.plots)}"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = rerun_parser(__doc__.splitlines()[0], 44, RESULTS, "setting_front")
    parser.add_argument("--set", action="append", required=True, metavar="NAME=VALUE",
                        help="a method setting to re-run every configuration with (repeatable)")
    parser.add_argument("--baseline", default=None, metavar="NAME=VALUE",
                        help="one of the --set settings to compare the others with instead of the study's own results "
                             "(its re-runs share the variants' code and environment)")
    parser.add_argument("--numbers", nargs="+", type=int, default=None,
                        help="re-run only these trial numbers (to share the work between processes)")
    parser.add_argument("--budgets", nargs=3, type=int, default=None, help="P values (default: size quantiles)")
    args = parser.parse_args(argv)
    for setting in args.set:
        parse_setting(setting)
    if args.baseline is not None and args.baseline not in args.set:
        parser.error(f"--baseline {args.baseline} must also be given as --set")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    records, study, trials = load_study(args)
    if not args.table:
        run_all(args, study, trials)
    print(report(args, records, study, trials))


if __name__ == "__main__":
    main()
