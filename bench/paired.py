"""Paired comparison with common random numbers (issue 27): arms compared seed by seed, each difference reported as
the mean of the per-seed differences with its 95% t-interval, not as means alone.

One seed fixes, for every arm alike, the data order (the loop's shuffle), the head's and the adapter's
initialisation and the dropout masks (`training.seed`), and for a search arm its sampler's draws; the rows trained
and evaluated on are the study file's fixed sample (data seed 0) for every arm and seed. So what differs between two
arms of one seed is the arm, and the seed-to-seed noise they share cancels in the difference.

Two kinds of arm, both on a built-in study file's task, data, model, batch, length and steps (--task):
- `--arm NAME=METHOD[,KEY=VALUE...]`: one training run per seed: the study's trial 0 for METHOD (its space's
  defaults, as `train --method METHOD` builds it) with the TrialSpec overrides, e.g.
  `--arm half=elalora,params.final_budget=0.5`. Compared on the final metric.
- `--search-arm NAME=METHOD[,space=YAML][,sampler=tpe|gp][,startup=N][,draw=N]`: one whole study of --trials
  trials per seed (`--trials-of NAME=N`: that arm's own count, e.g. a 24-trial search beside 12-trial ones;
  search_vs_peers' project arm; `startup`: the sampler's random trials first, default 10; `draw`: the same search
  with another sampler seed, its trials' training seed unchanged) with the study file's own pruning (`--pruning
  study`, the shipped search) or none. Compared on the hypervolume of its (metric, trainable parameters) front and
  on the best metric at <= P parameters for three budgets P; also on how many seeds each arm's hypervolume is the
  largest; and trial by trial where an arm and the baseline drew the same configuration on one seed (an arm whose
  space only fixes a one-choice parameter draws the baseline's start-up).
- `--pool NAME=ARM[+ARM...]`: search arms that are draws of one search (`draw=N`), also reported together, each
  pool against the pool holding the baseline: per seed, the mean of each measure over the pool's arms (a verdict
  that rests on several draws of each search while the seed stays the unit of the interval), and the union of
  their fronts (what k independent searches found between them, at k times the trials).

Rows: one JSON line per finished run or study (bench/results/paired.jsonl), with the library versions, the kind
of machine (`kernels`: the CPU model and SIMD kernels, or the CUDA device; each rounds a run's floats its own way)
and the commit on every row. A re-run skips every row already there for this environment's versions (so it
resumes); the report compares only rows of this environment's versions, says how many it left out, and names the
kind of machine of each row where the comparison's rows ran on several (the same seed's ElaLoRA run rounds
apart on another kind: its data order and draws stay common, its floats and accuracy do not).

    OMP_NUM_THREADS=1 python bench/paired.py --task mnli --seeds 42 43 44 45 46 47 \\
        --arm elalora=elalora --arm lora=lora --baseline lora         # 12 runs of 300 steps
    python bench/paired.py --task sst2 --seeds 42 43 44 45 46 47 --trials 12 \\
        --search-arm ela=elalora --search-arm lora=lora --baseline lora   # 12 studies
    python bench/paired.py --task mnli ... --report                  # the report only, from the rows
    python bench/paired.py --task sst2 ... --search-arm ela_d1=elalora,draw=1 --search-arm lora_d1=lora,draw=1 \\
        --pool ela=ela+ela_d1 --pool lo=lora+lora_d1 --report    # mean over two draws per seed, and union
    python bench/paired.py --smoke --arm a=lora --arm b=lora,learning_rate=1e-3 --baseline a   # tiny model
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_vs_peers as peers  # noqa: E402
from common import GLUE, OUT, ROOT, append_jsonl, command_line, machine_note, read_jsonl, versions  # noqa: E402
from common.notes import kernels, row_kernels  # noqa: E402
from common.arms import parse_arm, parse_pools, parse_trials_of, search_options  # noqa: E402
from common.fronts import front_measures, largest_hv  # noqa: E402
from common.pairing import detectable, paired_interval, pool_mean, same_config_lines  # noqa: E402
from common.studies import NO_PRUNING, study_pruning  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "paired.jsonl"
WORKDIR = OUT / "paired"
Record = dict[str, Any]


# -- the arms -------------------------------------------------------------------------------------------------
def arm_trials(args: argparse.Namespace, kind: str, arm: str) -> int:
    """Trials per study of a search arm (--trials, or the arm's own --trials-of); 1 for a run arm."""
    return args.trials_of.get(arm, args.trials) if kind == "study" else 1


def arm_key(args: argparse.Namespace, kind: str, arm: str, spec: str, seed: int) -> Record:
    """What makes two rows the same measurement (the versions are checked beside it)."""
    study = {"trials": arm_trials(args, kind, arm), "pruning": args.pruning} if kind == "study" else {"trials": 1}
    return {"kind": kind, "task": args.task, "arm": arm, "arm_spec": spec, "seed": seed, "steps": args.steps, **study}


def study_settings(args: argparse.Namespace, method: str, seed: int, study: str,
                   options: dict[str, Any] | None = None, trials: int | None = None) -> Any:
    """The study file's settings for this task, method and seed (search_vs_peers' arm_settings), with a search
    arm's `search_options` on top. `draw=N` is the same search drawn again: sampler seed 1000 * N + seed
    (`search --sampler-seed`), every trial's training seed still `seed`."""
    pruning = study_pruning(args.task) if args.pruning == "study" else NO_PRUNING
    bench = peers.parse_args([*(["--smoke"] if args.smoke else ["--tasks", args.task]), "--workdir",
                              str(args.workdir), "--max-steps", str(args.steps), "--data-dir", str(args.data_dir),
                              "--pruning-json", pruning])
    options = dict(options or {})
    if "draw" in options:
        options["sampler_seed"] = 1000 * options.pop("draw") + seed
    key = {"task": args.task, "arm": method, "seed": seed, "trials": trials or args.trials, "steps": args.steps,
           "study": study, **options}
    return peers.arm_settings(bench, key)


def run_arm(args: argparse.Namespace, key: Record, method: str, overrides: list[str]) -> Record:
    """One training run: the study's trial 0 for `method` with `overrides`, evaluated at the end only (the loop's
    evaluations draw nothing from the training stream, so they would not change it, only cost time)."""
    import optuna

    from elalora_auto.search.plan import plan_study
    from elalora_auto.trial import run_trial

    plan = plan_study(study_settings(args, method, key["seed"], f"run-{key['arm']}-{key['seed']}"))
    spec = plan.trial_spec(optuna.trial.FixedTrial(plan.space.default_params(plan.settings.trial0)))
    spec.training.eval_every = 0
    spec = spec.apply_overrides(overrides)
    result = run_trial(spec, progress=False)
    return {**key, "metric": result.primary_metric, "value": result.primary, "baseline": plan.baseline,
            "trainable_params": result.trainable_params, "wall_time_s": round(result.wall_time_s, 1),
            "params": spec.params, "learning_rate": spec.training.learning_rate,
            "batch_size": spec.training.batch_size, "warmup_ratio": spec.training.warmup_ratio,
            # the curve when the arm asks for evaluations (training.eval_every=N): where a run leaves the plateau
            "history": [{"step": e["step"], "value": e["metrics"][result.primary_metric]} for e in result.eval_history]}


def search_arm(args: argparse.Namespace, key: Record, method: str, overrides: list[str]) -> Record:
    """One whole study (search_vs_peers' project arm; resumes from its journal), as its complete trials' points."""
    # the arm's definition in the study's name: a changed arm starts its own study, never resumes another's
    tag = hashlib.sha1(f"{key['arm_spec']} {args.steps} {key['trials']} {args.pruning}".encode()).hexdigest()[:8]
    settings = study_settings(args, method, key["seed"], f"{args.task}-{key['arm']}-{tag}-seed{key['seed']}",
                              search_options(overrides), key["trials"])
    study, plan, trials_dir = peers.run_project_arm(settings, args.workdir / "trials.jsonl", key)
    rows = peers.study_rows_of(study, trials_dir)
    points = peers.complete_points({"rows": rows})
    return {**key, "metric": plan.primary_metric, "baseline": plan.baseline, "points": points, "rows": rows,
            "steps_total": sum(r["steps_done"] or 0 for r in rows),
            "wall_time_s": round(sum(r["wall_time_s"] or 0.0 for r in rows), 1)}


def run_all(args: argparse.Namespace) -> None:
    """Every (seed, arm) row not yet in the results for this environment's versions, seed-major (a cut-short
    protocol has whole seeds: pairs)."""
    import torch

    torch.set_num_threads(args.threads)
    mine = versions()
    done = {tuple(sorted(r["key"].items())) for r in read_jsonl(args.results) if r.get("versions") == mine}
    arms = [("run", a) for a in args.arm] + [("study", a) for a in args.search_arm]
    for seed in args.seeds:
        for kind, text in arms:
            name, method, overrides = parse_arm(text)
            key = arm_key(args, kind, name, text, seed)
            if tuple(sorted(key.items())) in done:
                print(f"skip {kind} {name} seed {seed} (in {args.results})", flush=True)
                continue
            print(f"{time.strftime('%H:%M:%S')} {kind} {name} seed {seed}", flush=True)
            before = machine_note()
            row = (run_arm if kind == "run" else search_arm)(args, key, method, overrides)
            append_jsonl(args.results, {"key": key, **row, "versions": mine, "kernels": kernels(),
                                        "commit": peers.git_commit(), "command": command_line(),
                                        "machine_before": before,
                                        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
                                            "%Y-%m-%d %H:%M UTC")})


# -- the report -----------------------------------------------------------------------------------------------
def comparable(records: list[Record], args: argparse.Namespace) -> tuple[list[Record], list[str]]:
    """This comparison's rows (task, steps, the arms and seeds asked for) run under this environment's versions,
    a line naming what was left out for other versions (never mixed into one comparison), and one naming which
    rows ran on which kind of machine where they ran on several (`notes.kernels`)."""
    mine = versions()
    names = {parse_arm(a)[0]: a for a in [*args.arm, *args.search_arm]}
    wanted = [r for r in records if r["task"] == args.task and r["steps"] == args.steps and r["seed"] in args.seeds
              and names.get(r["arm"]) == r["arm_spec"] and r["trials"] == arm_trials(args, r["kind"], r["arm"])
              and r.get("pruning", args.pruning) == args.pruning]
    kept = [r for r in wanted if r["versions"] == mine]
    other = [r for r in wanted if r["versions"] != mine]
    lines = [f"left out {len(other)} row(s) run under other library versions ("
             + "; ".join(sorted({", ".join(f"{k} {v}" for k, v in r["versions"].items()) for r in other}))
             + f"); this comparison: {', '.join(f'{k} {v}' for k, v in mine.items())}"] if other else []
    machines = collections.defaultdict(lambda: collections.defaultdict(list))  # kind of machine -> arm -> seeds
    for r in kept:
        machines[row_kernels(r)][r["arm"]].append(r["seed"])
    if len(machines) > 1:  # the seeds' data order and draws stay common; the floats' rounding does not
        lines.append("rows from several kinds of machine (a seed's ElaLoRA run rounds apart on another kind, "
                     "0.2 points lower on average between two: pair within one kind where you can): " + "; ".join(
                         f"{machine}: " + ", ".join(f"{arm} {' '.join(map(str, sorted(seeds)))}"
                                                    for arm, seeds in sorted(arms.items()))
                         for machine, arms in sorted(machines.items())))
    return kept, lines


def interval_row(label: str, values: dict[str, dict[int, float]], arm: str, base: str, scale: float) -> str:
    """One markdown row: the arm minus the baseline over the seeds both have."""
    seeds = sorted(set(values.get(arm, {})) & set(values.get(base, {})))
    diffs = [scale * (values[arm][s] - values[base][s]) for s in seeds]
    if not seeds:
        return f"| {label} | {arm} - {base} | 0 | - | - | - | - | - | - | no seed has both |"
    ci = paired_interval(diffs)
    means = [statistics.fmean(scale * values[a][s] for s in seeds) for a in (arm, base)]
    power = detectable(ci["sd"], ci["n"]) if ci["n"] > 1 else math.nan
    return (f"| {label} | {arm} - {base} | {ci['n']} | {means[0]:.2f} | {means[1]:.2f} | {ci['mean']:+.2f} | "
            f"{ci['sd']:.2f} | [{ci['low']:+.2f}, {ci['high']:+.2f}] | {power:.2f} | "
            f"{' '.join(f'{d:+.2f}' for d in diffs)} |")


# "detectable": the true difference these seeds would find 80% of the time at this SD (what a null result rules out)
HEADER = ["| measure | difference | seeds | arm mean | baseline mean | mean difference | SD | 95% CI | detectable | "
          "per seed |", "|---|---|---|---|---|---|---|---|---|---|"]


def run_lines(rows: list[Record], base: str) -> list[str]:
    """Run arms: the final metric (in points) and the trainable parameters, each arm against the baseline."""
    metric = {r["arm"]: {} for r in rows}
    size = {r["arm"]: {} for r in rows}
    for r in rows:
        metric[r["arm"]][r["seed"]], size[r["arm"]][r["seed"]] = r["value"], r["trainable_params"]
    arms = [a for a in metric if a != base]
    name = rows[0]["metric"]
    return HEADER + [line for a in arms for line in (interval_row(f"{name} (points)", metric, a, base, 100.0),
                                                      interval_row("trainable parameters", size, a, base, 1.0))]


def search_lines(rows: list[Record], base: str, budgets: Sequence[int] | None, plots: Path,
                 pools: dict[str, list[str]] | None = None) -> list[str]:
    """Search arms: normalised hypervolume (one reference for every arm and seed) and best metric at <= P (the
    metric floor where a study has no complete adapter that small), each arm and then each pool of arms
    (`pooled_lines`) against the baseline's; the fronts of every arm and seed on one figure in `plots`."""
    sizes = sorted(p[1] for r in rows for p in r["points"])
    ref = (float(rows[0]["baseline"]), 1.1 * (sizes[-1] if sizes else 1.0))
    quantiles = [int(sizes[int(q * (len(sizes) - 1))]) for q in (0.25, 0.5, 0.75)] if sizes else []
    budgets = list(budgets or quantiles)
    fronts: dict[str, dict[int, list]] = {r["arm"]: {} for r in rows}
    for r in rows:
        fronts[r["arm"]][r["seed"]] = r["points"]
    measures, empty = front_measures(fronts, ref, budgets)
    first = rows[0]
    trials = "-".join(str(n) for n in sorted({r["trials"] for r in rows}))
    path = peers.plot_fronts(rows, ref, plots / f"paired_{first['task']}.png", f"{first['task']}: search fronts, "
                             f"{trials} trials x {first['steps']} steps per study, pruning {first['pruning']}",
                             metric=first["metric"])
    lines = [f"Fronts of every arm and seed: {path}", "",
             f"Reference: metric floor {ref[0]:.4f} (majority class), cost ceiling {ref[1]:,.0f}; budgets P: "
             + ", ".join(f"{b:,}" for b in budgets), "", *HEADER]
    lines += [interval_row(label, values, arm, base, 100.0)
              for arm in fronts if arm != base for label, values in measures.items()]
    lines += ["", "No complete adapter at <= P (scored at the metric floor): "
              + ("; ".join(f"{b:,}: {', '.join(names)}" for b, names in empty.items() if names) or "none"),
              "", largest_hv(measures["HV (x100)"], "hypervolume")]
    pooled = pooled_lines(measures, fronts, ref, budgets, pools, base) if pools else []
    return lines + pooled + same_config_lines(rows, base)


def pooled_lines(measures: dict[str, dict[str, dict[int, float]]], fronts: dict[str, dict[int, list]],
                 ref: tuple[float, float], budgets: Sequence[int], pools: dict[str, list[str]], base: str) -> list[str]:
    """Each pool against the baseline's pool, two ways. The mean: each seed's mean over a pool's arms (draws of one
    search: `draw=N`); one draw per seed leaves a search's luck in the verdict (its sampler seed alone moved a
    front's hypervolume by as much as any lever), and the mean over draws keeps the seed as the unit of the
    interval. The union: the front of all the pool's trials together, what the pool's independent searches found
    between them (k draws: k times the trials, each draw's trial 0 the same configuration)."""
    base_pool = next(name for name, members in pools.items() if base in members)
    names = "; ".join(f"{name} = {' + '.join(members)}" for name, members in pools.items())
    mean = {label: {name: pool_mean(values, members) for name, members in pools.items()}
            for label, values in measures.items()}
    union_fronts = {name: {seed: [p for arm in members for p in fronts[arm][seed]]
                           for seed in set.intersection(*(set(fronts.get(arm, {})) for arm in members))}
                    for name, members in pools.items()}
    union, _ = front_measures(union_fronts, ref, budgets)
    lines = []
    for title, values, what in (
            ("Pooled, the mean: per seed, the mean over each pool's arms", mean, "mean hypervolume"),
            ("Pooled, the union: per seed, the front of all of each pool's trials", union, "union hypervolume")):
        lines += ["", f"{title} ({names}; a seed counts where every arm of both pools has its study), each pool "
                  f"against {base_pool}", "", *HEADER]
        lines += [interval_row(label, values[label], name, base_pool, 100.0)
                  for name in pools if name != base_pool for label in values]
        lines += ["", largest_hv(values["HV (x100)"], what)]
    return lines


def calibration_lines(rows: list[Record], floor: float) -> list[str]:
    """Per run arm, the spread of its final metric over the seeds (max - min) and its lowest seed against `floor`:
    what the issue-27 calibration standard reads (spread <= 2 points, every seed above the floor)."""
    lines = ["| arm | seeds | mean | min | max | spread (points) | SD | seeds >= floor |", "|---|---|---|---|---|---|---|---|"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        values = [100.0 * r["value"] for r in sorted(rows, key=lambda r: r["seed"]) if r["arm"] == arm]
        sd = statistics.stdev(values) if len(values) > 1 else math.nan
        lines.append(f"| {arm} | {len(values)} | {statistics.fmean(values):.2f} | {min(values):.2f} | "
                     f"{max(values):.2f} | {max(values) - min(values):.2f} | {sd:.2f} | "
                     f"{sum(v >= 100.0 * floor for v in values)} of {len(values)} (floor {100.0 * floor:.1f}) |")
    return lines


def report(records: list[Record], args: argparse.Namespace) -> str:
    """Per kind of arm, every arm paired with that kind's baseline, from this comparison's rows."""
    rows, lines = comparable(records, args)
    for kind, title in (("run", "Runs"), ("study", "Searches")):
        mine = [r for r in rows if r["kind"] == kind]
        base = args.baselines.get(kind)
        if not mine:
            continue
        if kind == "run" and args.floor is not None:
            lines += ["", f"**Calibration: {args.task}, {args.steps} steps**", "", *calibration_lines(mine, args.floor)]
        if {r["arm"] for r in mine} == {base}:
            continue  # one arm alone (a calibration): nothing to pair
        if base not in {r["arm"] for r in mine}:
            lines.append(f"{title}: no rows of the baseline arm {base!r} yet; nothing to pair")
            continue
        body = (run_lines(mine, base) if kind == "run"
                else search_lines(mine, base, args.budgets, args.plots, args.pools))
        lines += ["", f"**{title}: {args.task}, {args.steps} steps, paired over seeds "
                  f"{', '.join(map(str, sorted({r['seed'] for r in mine})))}**", "", *body]
    return "\n".join(lines) if lines else f"no rows for this comparison in {args.results}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(peers.STUDY_FILES), default="mnli")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46, 47])
    parser.add_argument("--arm", action="append", default=[], help="NAME=METHOD[,KEY=VALUE...]: one run per seed")
    parser.add_argument("--search-arm", action="append", default=[],
                        help="NAME=METHOD[,space=YAML][,sampler=tpe|gp][,startup=N][,draw=N]: a study per seed")
    parser.add_argument("--pool", action="append", default=[], metavar="NAME=ARM[+ARM...]",
                        help="search arms reported together, each pool against the pool holding the baseline: per "
                             "seed, the mean over the pool's arms (draws of one search) and the union of their fronts")
    parser.add_argument("--baseline", action="append", required=True,
                        help="the arm every other arm of its kind is paired with (one per kind: --arm, --search-arm)")
    parser.add_argument("--steps", type=int, default=None, help="per run or trial (default: the study file's)")
    parser.add_argument("--trials", type=int, default=12, help="per search-arm study")
    parser.add_argument("--trials-of", action="append", default=[], metavar="NAME=N",
                        help="a search arm's own trials per study (default --trials): a 24-trial search against "
                             "12-trial ones, or against a --pool of two 12-trial draws")
    parser.add_argument("--pruning", choices=["study", "none"], default="study",
                        help="search arms: the study file's own pruning (the shipped search) or every trial to the end")
    parser.add_argument("--budgets", nargs=3, type=int, default=None, help="P values (default: size quantiles)")
    parser.add_argument("--data-dir", type=Path, default=GLUE)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="study journals, trial folders, caches")
    parser.add_argument("--floor", type=float, default=None,
                        help="also report each run arm's spread over the seeds and how many seeds reach this metric")
    parser.add_argument("--plots", type=Path, default=None,
                        help="folder of the search arms' front plots (default: plots/ in --workdir)")
    parser.add_argument("--report", action="store_true", help="print the report from the results and exit")
    parser.add_argument("--smoke", action="store_true", help="the tiny model on the demo's synthetic task")
    args = parser.parse_args(argv)
    if args.smoke:
        args.task = peers.SMOKE_TASK
    args.plots = args.plots or args.workdir / "plots"
    kinds = {"run": [parse_arm(a)[0] for a in args.arm], "study": [parse_arm(a)[0] for a in args.search_arm]}
    names = kinds["run"] + kinds["study"]
    args.baselines = {kind: next((b for b in args.baseline if b in arms), None) for kind, arms in kinds.items()}
    if (len(set(names)) != len(names) or set(args.baseline) - set(names)
            or any(arms and args.baselines[kind] is None for kind, arms in kinds.items())):
        parser.error(f"arm names must differ and --baseline must name one arm of each kind given (--arm: "
                     f"{', '.join(kinds['run']) or 'none'}; --search-arm: {', '.join(kinds['study']) or 'none'})")
    for text in args.search_arm:
        search_options(parse_arm(text)[2])
    args.pools = parse_pools(parser, args.pool, kinds["study"], args.baselines["study"])
    args.trials_of = parse_trials_of(parser, args.trials_of, kinds["study"])
    if len(args.seeds) < 2:
        parser.error("a paired comparison needs 2 or more --seeds (the protocol asks for 6)")
    args.steps = args.steps or peers.planned_steps(argparse.Namespace(max_steps=None), args.task)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.report:
        run_all(args)
    print(report(read_jsonl(args.results), args))


if __name__ == "__main__":
    main()
