"""Multi-fidelity search (issue 9, item 4): the same 24-trial ElaLoRA study with successive-halving rungs and
unpruned, 2 seeds; optimizer steps used and the hypervolume the rungs keep.

Each study is elalora-auto's own search (`run_search`) on a built-in study file (default `sst2-minilm`), with
evaluations every `--eval-every` steps in both arms (so the rungs have evaluations to sit on and both arms pay the
same evaluation cost per step). Arms: `unpruned` (`pruning: {rule: none}`), `halving` (the search's default rungs, at
eval_every * reduction_factor**k) and `halving-strict` (factor 4, the front that overflows a rung's quota split by
hypervolume contribution); each row records the pruning settings it ran with. Targets: <= 50% of the unpruned
steps, >= 98% of its hypervolume.

Resumable: the studies live in journal files under bench/out/multifidelity/ (a cut-short study resumes where it
stopped), and one JSON line per finished study goes to bench/results/multifidelity.jsonl (a study already there is
not run again).

    OMP_NUM_THREADS=1 PYTHONPATH=<snapshot> python bench/multifidelity.py --seeds 42 43
    python bench/multifidelity.py --table
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GLUE, OUT, RESULTS_DIR, append_jsonl, machine_note, read_jsonl  # noqa: E402

RESULTS = RESULTS_DIR / "multifidelity.jsonl"
# "halving" is the rule shipped as the default until 2026-12-03 (the whole overflowing front goes on); its rows ran
# under that default, so the arm names it explicitly now that `adaptive` is the default.
ARMS = {"unpruned": {"rule": "none"}, "halving": {"rule": "halving", "rung_ties": "keep"},
        # the quota-strict variant measured on 2026-12-03 (rung_ties: hypervolume, Optuna's reduction factor 4)
        "halving-strict": {"rule": "halving", "reduction_factor": 4, "rung_ties": "hypervolume"},
        # the default since 2026-12-03: the whole front goes on until a rung holds 3 x 3 trials, then only the quota
        "halving-adaptive": {"rule": "halving", "rung_ties": "adaptive"}}


def study_name(config: str, arm: str, seed: int, trials: int) -> str:
    return f"mf-{config}-{arm}-t{trials}-s{seed}"


def run_study(config: str, arm: str, seed: int, trials: int, eval_every: int, workdir: Path) -> dict[str, Any]:
    """One whole study (resumed if a journal has part of it), then its trials as rows."""
    import optuna

    from elalora_auto.search import SearchSettings, run_search

    settings = SearchSettings.from_sources(config, {
        "trials": trials, "seed": seed, "study": study_name(config, arm, seed, trials), "workdir": str(workdir),
        "no_tracking": True, "data_dir": str(GLUE), "eval_every": eval_every, "pruning": ARMS[arm]})
    start = time.monotonic()
    study = run_search(settings, progress=False, echo=lambda line: print(f"[{arm} s{seed}] {line}", flush=True))
    total = settings.max_steps
    trial_rows = []
    for t in study.get_trials(deepcopy=False):
        steps = total if t.state == optuna.trial.TrialState.COMPLETE else max(t.intermediate_values, default=0)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        trial_rows.append({"number": t.number, "state": t.state.name, "steps": steps, "seconds": seconds,
                           "metric": t.values[0] if t.values else None,
                           "trainable_params": t.values[1] if t.values and len(t.values) > 1 else None,
                           "reason": t.user_attrs.get("prune_reason") or t.user_attrs.get("fail_reason"),
                           # the learning curve, so bench/rung_replay.py --results works without the journal
                           "curve": {str(step): value for step, value in sorted(t.intermediate_values.items())}})
    return {"config": config, "arm": arm, "seed": seed, "trials": trials, "eval_every": eval_every,
            "total_steps": total, "pruning": dataclasses.asdict(settings.pruning),
            "baseline": study.user_attrs["settings"].get("baseline"),
            "run_wall_s": round(time.monotonic() - start, 1), "rows": trial_rows}


def front_points(study: dict[str, Any]) -> list[tuple[float, float]]:
    return [(r["metric"], r["trainable_params"]) for r in study["rows"]
            if r["state"] == "COMPLETE" and r["metric"] is not None and r["trainable_params"] is not None]


def baseline_margin(config: str) -> float:
    """The margin a trial must beat the majority-class baseline by to count as learning (the search's own rule)."""
    from elalora_auto.search.plan import majority_baseline
    from elalora_auto.search.settings import SearchSettings
    from elalora_auto.tasks import load_task_data, resolve_task

    settings = SearchSettings.from_sources(config, {"data_dir": str(GLUE)})
    task = resolve_task(settings.task, settings.custom)
    data = load_task_data(task, data_dir=settings.data_dir, max_train_samples=settings.max_train_samples,
                          max_eval_samples=settings.max_eval_samples, seed=0)
    return majority_baseline(task, next(iter(data.evals.values())))[1]


def table(studies: list[dict[str, Any]]) -> str:
    """Per seed: steps, seconds, trials completed, hypervolume of each arm (one reference per seed: the
    majority-class baseline and 1.1 x the largest size in either arm) and the ratios against the goal."""
    from elalora_auto.search.pareto import hypervolume

    lines = ["| config | seed | arm | trials (complete / pruned) | complete trials above the baseline | optimizer "
             "steps | trial seconds | best metric | hypervolume | steps vs unpruned | hypervolume kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    margins = {config: baseline_margin(config) for config in {s["config"] for s in studies}}
    by_key = {(s["config"], s["seed"], s["trials"], s["arm"]): s for s in studies}
    ratios = []
    for (config, seed, trials, arm), study in sorted(by_key.items()):
        full = by_key.get((config, seed, trials, "unpruned"))
        pair = [s for key, s in by_key.items() if key[:3] == (config, seed, trials)]  # one reference per seed
        reference = (study["baseline"], 1.1 * max(p[1] for s in pair for p in front_points(s)))
        volume = hypervolume(front_points(study), reference)
        steps = sum(r["steps"] for r in study["rows"])
        seconds = sum(r["seconds"] or 0 for r in study["rows"])
        states = [r["state"] for r in study["rows"]]
        best = max((p[0] for p in front_points(study)), default=float("nan"))
        cleared = sum(p[0] > study["baseline"] + margins[config] for p in front_points(study))
        vs = kept = ""
        if full is not None and arm != "unpruned":
            full_steps = sum(r["steps"] for r in full["rows"])
            full_volume = hypervolume(front_points(full), reference)
            vs, kept = f"{steps / full_steps:.0%}", f"{volume / full_volume:.1%}" if full_volume else "n/a"
            ratios.append((f"{config}, seed {seed}, {arm}", steps / full_steps,
                           volume / full_volume if full_volume else float("nan")))
        lines.append(f"| {config} | {seed} | {arm} | {len(states)} ({states.count('COMPLETE')} / "
                     f"{states.count('PRUNED')}) | {cleared} of {states.count('COMPLETE')} | {steps:,} | "
                     f"{seconds:,.0f} | {best:.4f} | {volume:,.0f} | {vs} | {kept} |")
    lines.append("")
    for label, steps_ratio, kept_ratio in ratios:
        lines.append(f"- {label}: goal <= 50% of the steps and >= 98% of the hypervolume: steps {steps_ratio:.0%} "
                     f"({'met' if steps_ratio <= 0.5 else 'NOT met'}), hypervolume {kept_ratio:.1%} "
                     f"({'met' if kept_ratio >= 0.98 else 'NOT met'})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sst2-minilm", help="a built-in study or a study YAML")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the table of the saved studies and exit")
    args = parser.parse_args()
    if args.table:
        print(table(read_jsonl(args.results)))
        return
    import torch

    torch.set_num_threads(args.threads)
    done = {(s["config"], s["arm"], s["seed"], s["trials"]) for s in read_jsonl(args.results)}
    for seed in args.seeds:
        for arm in args.arms:
            if (args.config, arm, seed, args.trials) in done:
                continue
            machine = machine_note()
            study = run_study(args.config, arm, seed, args.trials, args.eval_every, OUT / "multifidelity")
            study.update(machine=machine, date=datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"), package=os.path.dirname(__import__("elalora_auto").__file__))
            append_jsonl(args.results, study)
    print(table(read_jsonl(args.results)))


if __name__ == "__main__":
    main()
