"""Which halving rungs would meet the multi-fidelity targets? A replay of the rung rule on unpruned studies.

`--median` replays the search's default median rule (`pruning.median_reason`) on the same curves, at a given
evaluation interval, so its cost compares with the rungs'.

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
    python bench/rung_replay.py --results bench/results/multifidelity_v3.jsonl --median 50 100
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT  # noqa: E402

from elalora_auto.search.pruning import SPLIT_FROM  # noqa: E402
from elalora_auto.search.settings import RUNG_TIES, PruningSettings  # noqa: E402

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


def replay_loop(curves: Sequence[Curve], total: int, stops: Callable[[list[float], int, float, list[Curve]], bool],
                every: int = 1) -> tuple[int, list[tuple[float, float]]]:
    """Optimizer steps used and the (metric, size) points of the trials that would have run to the end.

    Trials go in study order, each through its curve's evaluations before the end (`every`: only those at
    multiples of it, for a rule replayed at a longer evaluation interval than the curves') until
    `stops(values so far, step, size, curves of the trials that ran to the end)` says so."""
    steps, finished = 0, []
    for values, final, size in curves:
        seen: list[float] = []
        stopped_at = None
        for step in sorted(s for s in values if s < total and s % every == 0):
            seen.append(values[step])
            if stops(seen, step, size, finished):
                stopped_at = step
                break
        steps += total if stopped_at is None else stopped_at
        if stopped_at is None:
            finished.append((values, final, size))
    return steps, [(final, size) for _, final, size in finished]


def replay(curves: Sequence[Curve], total: int, rungs: Sequence[int], reduction_factor: int, baseline: float,
           margin: float, patience: int, best_so_far: bool = False,
           ties: str = "adaptive") -> tuple[int, list[tuple[float, float]]]:
    """The halving rule: steps used and the points of the trials that run to the end (`replay_loop`).

    `best_so_far`: a trial enters a rung with its best evaluation up to it, not the one at it (an experiment: a
    curve that dips at the rung step is not judged by the dip; the search itself uses the value at the rung).
    `ties`: the search's `pruning.rung_ties` for the front that overflows a rung's quota: "keep" lets
    it go on whole, "hypervolume" splits it by hypervolume contribution, "adaptive" splits it once the rung holds
    pruning.SPLIT_FROM x reduction_factor trials (the default)."""
    from elalora_auto.search.pareto import reference_point
    from elalora_auto.search.pruning import baseline_reason, rung_cutoff, splits_front

    settings = PruningSettings(rule="halving", baseline_patience=patience)
    reached: dict[int, list[tuple[float, float]]] = {rung: [] for rung in rungs}

    def stops(seen: list[float], step: int, size: float, finished: list[Curve]) -> bool:
        if baseline_reason(seen, step, settings, baseline, margin) is not None:
            return True
        if step not in reached:
            return False
        point = (max(seen) if best_so_far else seen[-1], size)
        points = [point] + reached[step]
        split = splits_front(ties, len(points), reduction_factor)  # as PruningRule._rung_reason decides
        reference = reference_point(points, baseline) if split else None
        reached[step].append(point)
        return not rung_cutoff(points, reduction_factor, reference)[2][0]

    return replay_loop(curves, total, stops)


def replay_median(curves: Sequence[Curve], total: int, every: int, baseline: float, margin: float,
                  settings: PruningSettings) -> tuple[int, list[tuple[float, float]]]:
    """The Pareto median rule (`pruning.median_reason`, plus the baseline rule) with evaluations every `every`
    steps: the search's default rule, replayed on the same curves as the rungs so their costs compare."""
    from elalora_auto.search.pruning import baseline_reason, median_reason

    def stops(seen: list[float], step: int, size: float, finished: list[Curve]) -> bool:
        peers = [values[step] for values, _, peer_size in finished if step in values and peer_size <= size]
        return (baseline_reason(seen, step, settings, baseline, margin) is not None
                or median_reason(seen, step, int(size), peers, settings) is not None)

    return replay_loop(curves, total, stops, every)


def table(studies: dict[str, tuple[list[Curve], int, float]], variants: Sequence[tuple[int, int]],
          margin: float | None, patience: int, best_so_far: bool = False,
          ties: Sequence[str] = ("adaptive",), median_every: Sequence[int] = ()) -> str:
    """`margin` None: each study's own, from its study file (the name bench/multifidelity.py gives it).
    `median_every`: evaluation intervals at which to replay the median rule too (its rows name no rungs)."""
    from multifidelity import baseline_margin

    from elalora_auto.search.pareto import hypervolume

    lines = ["| study | rule | min_steps | reduction factor | rungs | front overflowing the quota | complete "
             "| steps vs unpruned | hypervolume kept |", "|---|---|---|---|---|---|---|---|---|"]
    for name, (curves, total, baseline) in sorted(studies.items()):
        full = [(final, size) for _, final, size in curves]
        ref = (baseline, 1.1 * max(size for _, size in full))
        full_volume = hypervolume(full, ref)
        study_margin = baseline_margin(config_of(name)) if margin is None else margin
        for cells, (steps, complete) in replays(curves, total, baseline, study_margin, patience, variants, ties,
                                                best_so_far, median_every):
            lines.append(f"| {name} | {cells} | {len(complete)} of {len(curves)} | "
                         f"{steps / (total * len(curves)):.0%} | {hypervolume(complete, ref) / full_volume:.1%} |")
    return "\n".join(lines)


def replays(curves: Sequence[Curve], total: int, baseline: float, margin: float, patience: int,
            variants: Sequence[tuple[int, int]], ties: Sequence[str], best_so_far: bool,
            median_every: Sequence[int]) -> list[tuple[str, tuple[int, list[tuple[float, float]]]]]:
    """One study's replays as (table cells naming the rule, its result): each rung variant under each `ties`
    rule, then the median rule at each evaluation interval (the search's median defaults otherwise)."""
    out = []
    for (min_steps, factor), rule in ((variant, rule) for variant in variants for rule in ties):
        rungs = PruningSettings(rule="halving", min_steps=min_steps, reduction_factor=factor).rungs(min_steps, total)
        out.append((f"halving | {min_steps} | {factor} | {', '.join(map(str, rungs))} | {TIES_LABEL[rule]}",
                    replay(curves, total, rungs, factor, baseline, margin, patience, best_so_far, rule)))
    for every in median_every:
        settings = PruningSettings(rule="median", baseline_patience=patience)
        out.append((f"median, evaluations every {every} steps | - | - | - | -",
                    replay_median(curves, total, every, baseline, margin, settings)))
    return out


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
    parser.add_argument("--median", nargs="*", type=int, default=[], metavar="EVAL_EVERY",
                        help="also replay the median rule (the search's default) at these evaluation intervals, "
                             "multiples of the curves' own (for example 50 100)")
    args = parser.parse_args(argv)
    source = args.results or args.journal
    if not source.is_file():
        raise SystemExit(f"no file at {source}: run bench/multifidelity.py first")
    variants = [parse_variant(v) if isinstance(v, str) else v for v in args.variants]
    studies = results_curves(source) if args.results else unpruned_curves(source)
    print(table(studies, variants, args.margin, args.patience, args.best_so_far, args.ties, args.median))


if __name__ == "__main__":
    main()
