"""Which halving rungs would meet the multi-fidelity targets? A replay of the rung rule on unpruned studies.

bench/multifidelity.py's unpruned arm evaluates every trial every 50 steps to the end, so its learning curves say
what the Pareto rung rule (`pruning.rung_cutoff`, plus the baseline rule) would have stopped, for any first rung
(`min_steps`) and reduction factor: trials are replayed in their study order, each compared at a rung with the
earlier trials that reached it, as one worker's study would compare them. A replay is not a study: after a stop,
TPE would have proposed other configurations (bench/multifidelity.py's halving arm measures that); it is a cheap
way to choose the rung settings worth running as a study. Sizes at a rung are the trials' final sizes (the
unpruned arm does not record sizes between evaluations; under the rank budget a trial's size drifts a few %).

    python bench/rung_replay.py                          # every unpruned study in bench/out/multifidelity
    python bench/rung_replay.py --variants 50:3 100:3 50:4
    python bench/rung_replay.py --results bench/results/multifidelity_paired.jsonl   # no journal needed
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT  # noqa: E402

from elalora_auto.search.pruning import SPLIT_FROM  # noqa: E402
from elalora_auto.search.settings import RUNG_TIES  # noqa: E402

JOURNAL = OUT / "multifidelity" / "optuna-journal.log"
TIES_LABEL = {"keep": "all go on", "hypervolume": "split by hypervolume contribution",
              "adaptive": f"all go on until the rung holds {SPLIT_FROM} x the factor, then split"}
Curve = tuple[dict[int, float], float, float]  # {step: metric} before the end, final metric, final size


def unpruned_curves(journal: Path) -> dict[str, tuple[list[Curve], int, float]]:
    """Per unpruned study: its complete trials' curves in trial order, its run length and its baseline.

    Reads a copy of the journal, so a benchmark writing to it is never disturbed."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "journal.log"
        shutil.copyfile(journal, copy)
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(copy)))
        out = {}
        for summary in optuna.get_all_study_summaries(storage=storage):
            if "-unpruned-" not in summary.study_name:
                continue
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            settings = study.user_attrs["settings"]
            trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            curves = [(dict(t.intermediate_values), float(t.values[0]), float(t.values[1]))
                      for t in sorted(trials, key=lambda t: t.number)]
            out[summary.study_name] = (curves, int(settings["max_steps"]), float(settings["baseline"]))
    return out


def results_curves(results: Path) -> dict[str, tuple[list[Curve], int, float]]:
    """The same, from bench/multifidelity.py's results file (rows written since the rows carry their curves), so a
    replay outlives the journal, which lives under bench/out and goes with the worktree that ran the benchmark."""
    import json

    from multifidelity import study_name

    out = {}
    for line in results.read_text().splitlines():
        study = json.loads(line)
        if study["arm"] != "unpruned":
            continue
        rows = sorted((r for r in study["rows"] if r["state"] == "COMPLETE"), key=lambda r: r["number"])
        if any("curve" not in r for r in rows):
            raise SystemExit(f"{results}: the {study['config']} seed {study['seed']} unpruned study has no learning "
                             "curves (written before rows carried them): replay its journal with --journal instead")
        curves = [({int(s): v for s, v in r["curve"].items()}, r["metric"], r["trainable_params"]) for r in rows]
        name = study_name(study["config"], "unpruned", study["seed"], study["trials"])
        out[name] = (curves, int(study["total_steps"]), float(study["baseline"]))
    return out


def replay(curves: Sequence[Curve], total: int, rungs: Sequence[int], reduction_factor: int, baseline: float,
           margin: float, patience: int, best_so_far: bool = False,
           ties: str = "adaptive") -> tuple[int, list[tuple[float, float]]]:
    """Optimizer steps used and the (metric, size) points of the trials that would have run to the end.

    `best_so_far`: a trial enters a rung with its best evaluation up to it, not the one at it (an experiment: a
    curve that dips at the rung step is not judged by the dip; the search itself uses the value at the rung).
    `ties`: the search's `pruning.rung_ties` for the front that overflows a rung's quota: "keep" lets
    it go on whole, "hypervolume" splits it by hypervolume contribution, "adaptive" splits it once the rung holds
    pruning.SPLIT_FROM x reduction_factor trials (the default)."""
    from elalora_auto.search.pareto import reference_point
    from elalora_auto.search.pruning import baseline_reason, rung_cutoff, splits_front
    from elalora_auto.search.settings import PruningSettings

    settings = PruningSettings(rule="halving", baseline_patience=patience)
    reached: dict[int, list[tuple[float, float]]] = {rung: [] for rung in rungs}
    steps, complete = 0, []
    for values, final, size in curves:
        seen: list[float] = []
        stopped_at = None
        for step in sorted(s for s in values if s < total):
            seen.append(values[step])
            if baseline_reason(seen, step, settings, baseline, margin) is not None:
                stopped_at = step
            elif step in reached:
                point = (max(seen) if best_so_far else values[step], size)
                points = [point] + reached[step]
                split = splits_front(ties, len(points), reduction_factor)  # as PruningRule._rung_reason decides
                reference = reference_point(points, baseline) if split else None
                reached[step].append(point)
                if not rung_cutoff(points, reduction_factor, reference)[2][0]:
                    stopped_at = step
            if stopped_at is not None:
                break
        steps += total if stopped_at is None else stopped_at
        if stopped_at is None:
            complete.append((final, size))
    return steps, complete


def table(studies: dict[str, tuple[list[Curve], int, float]], variants: Sequence[tuple[int, int]],
          margin: float | None, patience: int, best_so_far: bool = False,
          ties: Sequence[str] = ("adaptive",)) -> str:
    """`margin` None: each study's own, from its study file (the name bench/multifidelity.py gives it)."""
    from multifidelity import baseline_margin

    from elalora_auto.search.pareto import hypervolume
    from elalora_auto.search.settings import PruningSettings

    lines = ["| study | min_steps | reduction factor | rungs | front overflowing the quota | complete | steps vs unpruned "
             "| hypervolume kept |", "|---|---|---|---|---|---|---|---|"]
    for name, (curves, total, baseline) in sorted(studies.items()):
        full = [(final, size) for _, final, size in curves]
        ref = (baseline, 1.1 * max(size for _, size in full))
        full_volume = hypervolume(full, ref)
        study_margin = baseline_margin(config_of(name)) if margin is None else margin
        for (min_steps, factor), rule in ((variant, rule) for variant in variants for rule in ties):
            rungs = PruningSettings(rule="halving", min_steps=min_steps, reduction_factor=factor).rungs(
                min_steps, total)
            steps, complete = replay(curves, total, rungs, factor, baseline, study_margin, patience, best_so_far,
                                     rule)
            lines.append(f"| {name} | {min_steps} | {factor} | {', '.join(map(str, rungs))} | "
                         f"{TIES_LABEL[rule]} | "
                         f"{len(complete)} of {len(curves)} | {steps / (total * len(curves)):.0%} | "
                         f"{hypervolume(complete, ref) / full_volume:.1%} |")
    return "\n".join(lines)


def config_of(study_name: str) -> str:
    """`mf-sst2-minilm-unpruned-t24-s42` -> `sst2-minilm` (bench/multifidelity.study_name)."""
    return study_name.removeprefix("mf-").split("-unpruned-")[0]


def parse_variant(text: str) -> tuple[int, int]:
    min_steps, _, factor = text.partition(":")
    return int(min_steps), int(factor)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--journal", type=Path, default=JOURNAL)
    parser.add_argument("--results", type=Path, default=None,
                        help="read the unpruned curves from bench/multifidelity.py's results file, not the journal")
    parser.add_argument("--variants", nargs="+", type=parse_variant, default=["50:3", "50:4", "100:3", "50:2"],
                        help="MIN_STEPS:REDUCTION_FACTOR")
    parser.add_argument("--margin", type=float, default=None,
                        help="baseline margin (default: two standard errors of the study's task, as the search uses)")
    parser.add_argument("--patience", type=int, default=2, help="the baseline rule's patience (the default 2)")
    parser.add_argument("--best-so-far", action="store_true",
                        help="judge a trial at a rung by its best evaluation so far (the search: the one at the rung)")
    parser.add_argument("--ties", nargs="+", choices=RUNG_TIES, default=list(RUNG_TIES),
                        help="the search's pruning.rung_ties values to replay (default: all): keep lets the front "
                             "that overflows a rung's quota go on whole, hypervolume splits it by contribution, "
                             f"adaptive splits it once the rung holds {SPLIT_FROM} x the reduction factor trials")
    args = parser.parse_args(argv)
    source = args.results or args.journal
    if not source.is_file():
        raise SystemExit(f"no file at {source}: run bench/multifidelity.py first")
    variants = [parse_variant(v) if isinstance(v, str) else v for v in args.variants]
    studies = results_curves(source) if args.results else unpruned_curves(source)
    print(table(studies, variants, args.margin, args.patience, args.best_so_far, args.ties))


if __name__ == "__main__":
    main()
