"""Paired re-runs of one ElaLoRA study (a search_vs_peers.py results row): each of its configurations trained
again with a setting changed and everything else equal (the same study file, steps, data sample, training seed and
resolution of the space's values: `StudyPlan.trial_spec` on an `optuna.trial.FixedTrial`). Pairing removes the
sampler's noise: each configuration is compared with itself. budget_front.py flips the budget, setting_front.py
sets any method setting."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from common.fronts import Point
from common.results import GLUE, OUT, read_jsonl
from common.studies import SEARCH_RESULTS, Record, arm_settings, study_key


def elalora_study(records: Sequence[Record], task: str, seed: int) -> Record:
    """The latest complete ElaLoRA study of search_vs_peers for this task and seed."""
    studies = [r for r in records if r["kind"] == "study" and r["task"] == task and r["arm"] == "elalora"
               and r["seed"] == seed]
    if not studies:
        raise SystemExit(f"no complete ElaLoRA study for {task} seed {seed} in {SEARCH_RESULTS}: run "
                         f"bench/search_vs_peers.py --tasks {task} --seeds {seed} --arms elalora first")
    return studies[-1]


def study_trials(records: Sequence[Record], study: Record) -> list[Record]:
    """That study's COMPLETE trial lines (its configurations, with the budget each was sampled with)."""
    key = study_key(study)
    rows = {r["number"]: r for r in records if r["kind"] == "trial" and study_key(r) == key}
    return [rows[n] for n in sorted(rows) if rows[n]["state"] == "COMPLETE"]


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


def study_plan(args: argparse.Namespace, study: Record) -> Any:
    """The StudyPlan the ElaLoRA study ran under (its study file, steps, seed), to re-run its configurations."""
    from elalora_auto.search.plan import plan_study

    return plan_study(arm_settings(args, {"task": study["task"], "arm": "elalora", "seed": study["seed"],
                                          "trials": study["trials"], "steps": study["steps"], "study": study["study"]}))


def as_study(study: Record, pts: Sequence[Point]) -> Record:
    """Points in the shape of a search_vs_peers study, for its reference and budget helpers."""
    return {"baseline": study["baseline"],
            "rows": [{"state": "COMPLETE", "accuracy": m, "trainable_params": c} for m, c in pts]}


def rerun_parser(description: str, seed: int, results: Path, workdir: str) -> argparse.ArgumentParser:
    """The arguments every paired re-run bench takes (this one and setting_front.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", default="sst2", help="a task of bench/search_vs_peers.py")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--data-dir", type=Path, default=GLUE)
    parser.add_argument("--studies", type=Path, default=SEARCH_RESULTS, help="search_vs_peers results (JSONL)")
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


