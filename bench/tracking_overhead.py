"""What MLflow tracking costs a search: a real small search (the demo study: tiny BERT, synthetic CSV task; or with
--config a built-in study such as sst2-minilm) run with and without the tracker, alternating, plus the time spent
inside the tracker itself, per event kind.

End-to-end times on a shared 2-core machine vary by more than the 2% target, so the overhead is measured
directly: the tracker (the listener the CLI hands the search, `tracking.make_listeners`) is wrapped in a timer, and its time per
trial is divided by the median trial time of the untracked searches. The end-to-end numbers are a cross-check.

    python bench/tracking_overhead.py --repeats 2 --trials 4 --steps 60 --profile --append-to BENCHMARKS.md
    python bench/tracking_overhead.py --config sst2-minilm --repeats 1 --trials 1 --steps 100 --threads 1
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GLUE, add_common_args, machine_note, publish  # noqa: E402

import torch  # noqa: E402

from elalora_auto.events import Event, Listener  # noqa: E402

STUDY_EVENTS = ("study_start", "study_end")
STUDIES = {"demo": "demo study (tiny BERT built locally, synthetic keyword-sentiment CSV task, ElaLoRA demo space)",
           "sst2-minilm": "sst2-minilm study (MiniLM-L6 on SST-2, 4000 training rows, ElaLoRA space)"}


class TimedListener:
    """Forwards every event to `inner`, adding up the seconds spent there per event kind; with `profile`, the
    trial-level events (not the one-off study events) run under it."""

    def __init__(self, inner: Listener, profile: cProfile.Profile | None = None) -> None:
        self.inner = inner
        self.profile = profile
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def __call__(self, event: Event) -> None:
        profile = self.profile if event.kind not in STUDY_EVENTS else None  # the per-trial cost is what matters
        start = time.perf_counter()
        if profile is not None:
            profile.enable()
        try:
            self.inner(event)
        finally:
            if profile is not None:
                profile.disable()
            self.seconds[event.kind] += time.perf_counter() - start
            self.counts[event.kind] += 1


def study_settings(config: str, workdir: Path, trials: int, tracking: bool) -> Any:
    """The demo study (model and task built under `workdir`), or a built-in study / study YAML on GLUE."""
    from elalora_auto.demo import demo_settings
    from elalora_auto.search import SearchSettings

    if config == "demo":
        return demo_settings(workdir, trials, tracking)
    return SearchSettings.from_sources(config, {"workdir": str(workdir), "trials": trials, "data_dir": str(GLUE),
                                                "no_tracking": not tracking or None})


def one_search(config: str, tracking: bool, trials: int, steps: int,
               profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """A fresh study in a temp workdir (fresh SQLite stores); returns times and the tracker's own time."""
    from elalora_auto.search import run_search
    from elalora_auto.tracking import make_listeners

    with tempfile.TemporaryDirectory() as tmp:
        settings = dataclasses.replace(study_settings(config, Path(tmp), trials, tracking), max_steps=steps)
        timed = [TimedListener(listener, profile) for listener in make_listeners(settings)]
        start = time.perf_counter()
        study = run_search(settings, listeners=timed, echo=lambda _: None, progress=False)
        total = time.perf_counter() - start
        trials = study.trials  # read before the temp workdir (and the study's journal in it) goes
        trial_times = [t.user_attrs["wall_time_s"] for t in trials if "wall_time_s" in t.user_attrs]
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for listener in timed:
        for kind, value in listener.seconds.items():
            seconds[kind] += value
            counts[kind] += listener.counts[kind]
    return {"tracking": tracking, "search_s": total, "trials_run": len(trials),
            "trial_wall_s": trial_times, "tracker_s": dict(seconds), "tracker_calls": dict(counts)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    off = [r for r in runs if not r["tracking"]]
    on = [r for r in runs if r["tracking"]]
    trial_off = statistics.median(t for r in off for t in r["trial_wall_s"])
    trial_on = statistics.median(t for r in on for t in r["trial_wall_s"])
    n_trials = sum(len(r["trial_wall_s"]) for r in on)
    kinds = sorted({k for r in on for k in r["tracker_s"]})
    per_kind = {k: sum(r["tracker_s"].get(k, 0.0) for r in on) for k in kinds}
    per_trial = sum(v for k, v in per_kind.items() if k not in STUDY_EVENTS) / max(1, n_trials)
    one_off = sum(v for k, v in per_kind.items() if k in STUDY_EVENTS) / max(1, len(on))
    return {
        "median_trial_s_off": trial_off, "median_trial_s_on": trial_on,
        "median_search_s_off": statistics.median(r["search_s"] for r in off),
        "median_search_s_on": statistics.median(r["search_s"] for r in on),
        "tracker_s_per_trial": per_trial, "tracker_s_per_study": one_off,
        "overhead_per_trial_pct": 100 * per_trial / trial_off,
        "tracker_s_by_kind_per_trial": {k: v / max(1, n_trials) for k, v in per_kind.items() if k not in STUDY_EVENTS},
        "tracker_s_by_kind_per_study": {k: v / max(1, len(on)) for k, v in per_kind.items() if k in STUDY_EVENTS},
    }


def markdown(summary: dict[str, Any], profile_text: str | None) -> str:
    lines = [
        "| quantity | without tracking | with tracking |", "|---|---|---|",
        f"| median search wall time (s) | {summary['median_search_s_off']:.1f} | {summary['median_search_s_on']:.1f} |",
        f"| median trial wall time (s) | {summary['median_trial_s_off']:.2f} | {summary['median_trial_s_on']:.2f} |",
        "", "| time inside the tracker | seconds |", "|---|---|",
        f"| per trial (trial events + trial_finished) | {summary['tracker_s_per_trial']:.3f} "
        f"(= **{summary['overhead_per_trial_pct']:.1f}%** of the untracked median trial) |",
    ]
    lines += [f"| - {kind}, per trial | {value:.3f} |"
              for kind, value in summary["tracker_s_by_kind_per_trial"].items()]
    lines.append(f"| per study, once (study_start + study_end: store, experiment, parent run, final report) | "
                 f"{summary['tracker_s_per_study']:.2f} |")
    if profile_text:
        lines += ["", "Where the tracker's per-trial time goes (cProfile of the trial-level tracker calls in one "
                  "extra tracked search, cumulative time, top entries):", "", "```", profile_text.strip(), "```"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="searches per mode, alternating off/on")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per trial")
    parser.add_argument("--profile", action="store_true", help="profile the tracker in one extra tracked search")
    parser.add_argument("--config", default="demo", help="demo (tiny BERT, synthetic task), or a built-in study "
                        "or study YAML on GLUE, e.g. sst2-minilm (MiniLM on SST-2)")
    add_common_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = machine_note()
    runs = []
    for _ in range(args.repeats):
        for tracking in (False, True):
            runs.append(one_search(args.config, tracking, args.trials, args.steps))
            print({k: v for k, v in runs[-1].items() if k != "trial_wall_s"}, flush=True)
    summary = summarise(runs)
    profile_text = None
    if args.profile:
        profile = cProfile.Profile()
        one_search(args.config, True, args.trials, args.steps, profile)
        buffer = io.StringIO()
        pstats.Stats(profile, stream=buffer).sort_stats("cumulative").print_stats(25)
        profile_text = "\n".join(line for line in buffer.getvalue().splitlines()
                                 if line.strip() and not line.startswith(("   Ordered", "Ordered")))
    publish("tracking_overhead", "Tracking overhead (bench/tracking_overhead.py)", args, before,
            {"runs": runs, "summary": summary, "profile": profile_text}, markdown(summary, profile_text),
            (f"The {STUDIES.get(args.config, f'study {args.config}')} with {args.trials} trials of {args.steps} "
            f"steps, run {args.repeats}x without and {args.repeats}x "
            "with the MLflow tracker that `search` builds (`make_listeners`: SQLite store in the fresh temp workdir, "
            "refresh_every_s 5), alternating. Tracker time is measured around each listener call; "
            "trial events run inside run_trial, so they are part of the tracked trial's wall time."))


if __name__ == "__main__":
    main()
