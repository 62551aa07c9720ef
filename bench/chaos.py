"""Reliability bench (issue 10, item 9): kill -9 / Ctrl-C, parallel workers, stalled tracking, a torn journal.

Every scenario drives the real `elalora-auto search` CLI as separate processes on the offline tiny model and
synthetic task of the demo (elalora_auto.demo / elalora_auto.tiny), then reads what the processes left behind:
the Optuna storage, the MLflow store, their output. It counts what the issue's goal says must be zero (trials
lost, duplicate numbers, repeated configurations, runs left RUNNING, leaked passwords, stalls) and never fixes
anything, so a row says what the measured code does.

    .venv/bin/python bench/chaos.py --quick                  # a fast check, small N
    .venv/bin/python bench/chaos.py --kills 20               # the issue's goal: 20 kills per storage
    .venv/bin/python bench/chaos.py --code /tmp/snap-chaos   # measure another checkout (a snapshot worktree)
    .venv/bin/python bench/chaos.py --table                  # markdown tables of the last bench run

Results: one JSON line per scenario run in bench/results/chaos.jsonl (code commit, date, scenario, storage,
counts). Temporary folders live under /tmp/chaos-* and are removed at the end (--keep keeps them).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, append_jsonl, machine_note, read_jsonl  # noqa: E402
from common.cli_harness import (  # noqa: E402
    Bench, Outcome, complete_numbers, error_lines, first_line, last_error, load_trials, mlflow_counts,
    password_leaks, run_cli, run_many, study_counts,
)
from common.notes import checkout_state  # noqa: E402

RESULTS = RESULTS_DIR / "chaos.jsonl"
STORAGES = ("journal", "sqlite", "postgresql")
SCENARIOS = ("kills", "parallel", "tracking", "journal_repair")


def scenario_kills(bench: Bench, storage_kind: str, kills: int, trials: int, window_s: float) -> dict[str, Any]:
    """N kill -9 / SIGINT (seeded random choice and moment) during `search`, each followed by the same command
    again; then one last run to completion. COMPLETE trials seen after any kill must still be there at the end."""
    workdir = bench.workdir(f"kills-{storage_kind}")
    storage = bench.storage(storage_kind, workdir, "kills")
    args = bench.search_args(workdir, storage, trials)
    seen_complete: set[int] = set()
    outcomes: list[Outcome] = []
    landed, read_errors = collections.Counter(), 0
    for _ in range(kills):
        sig = bench.rng.choice((signal.SIGKILL, signal.SIGINT))
        outcome = run_cli(bench, args, timeout_s=300, kill=(sig, bench.rng.uniform(0.0, window_s)))
        outcomes.append(outcome)
        if outcome.signal_sent:
            landed[outcome.signal_sent] += 1
        trials_now, error, _ = load_trials(storage, workdir)
        read_errors += error is not None
        seen_complete |= {t.number for t in trials_now or [] if t.state.name == "COMPLETE"}
        counts = study_counts(storage, workdir, trials)
        if counts.get("finished", 0) >= trials:
            break  # the study is done: further kills would hit processes with nothing to do
    final = run_cli(bench, args, timeout_s=900 if not bench.quick else 400)
    outcomes.append(final)
    outputs = [o.output for o in outcomes]
    lost = sorted(seen_complete - complete_numbers(storage, workdir))
    return {"kills_sent": sum(landed.values()), "kills_by_signal": dict(landed), "restarts": len(outcomes) - 1,
            **study_counts(storage, workdir, trials), "complete_lost": len(lost),
            "storage_read_errors_between_kills": read_errors, **mlflow_counts(bench, workdir),
            "exit_codes": dict(collections.Counter(str(o.rc) for o in outcomes[:-1])),
            "final_exit_code": final.rc, "final_timed_out": final.timed_out,
            "final_error": last_error(final.output) if final.rc else None,
            "outputs_with_traceback": error_lines(outputs, "Traceback"),
            "sigint_ignored": sum(o.sigint_ignored for o in outcomes),
            "children_left": sum(o.children_left for o in outcomes),
            "other_exits": [{"rc": o.rc, "signal": o.signal_sent, "error": last_error(o.output)}
                            for o in outcomes if o.rc not in (0, 130, -signal.SIGKILL, -signal.SIGINT)],
            "signal_without_effect": [{"signal": o.signal_sent, "rc": o.rc, "wall_s": o.wall_s,
                                       "sigint_ignored": o.sigint_ignored, "tail": o.output.strip()[-400:]}
                                      for o in outcomes if o.signal_sent and (o.rc == 0 or o.sigint_ignored)],
            **password_leaks(bench, outputs, workdir, storage)}


def scenario_parallel(bench: Bench, storage_kind: str, workers: int, trials: int) -> dict[str, Any]:
    """`workers` identical `search` processes started at once on a fresh workdir (and fresh storage)."""
    workdir = bench.workdir(f"parallel-{storage_kind}")
    storage = bench.storage(storage_kind, workdir, "parallel")
    args = bench.search_args(workdir, storage, trials)
    outcomes = run_many(bench, [args] * workers, timeout_s=900 if not bench.quick else 400)
    outputs = [o.output for o in outcomes]
    return {"workers": workers, **study_counts(storage, workdir, trials), **mlflow_counts(bench, workdir),
            "exit_codes": dict(collections.Counter(str(o.rc) for o in outcomes)),
            "timed_out": sum(o.timed_out for o in outcomes),
            "outputs_with_alembic_tmp": error_lines(outputs, "_alembic_tmp"),
            "outputs_with_traceback": error_lines(outputs, "Traceback"),
            "wall_s": max(o.wall_s for o in outcomes), **password_leaks(bench, outputs, workdir, storage)}


def trial_times(storage: str | None, workdir: Path) -> dict[str, Any]:
    """Per-trial wall time from Optuna's own timestamps (start to complete) of the finished trials."""
    trials, error, _ = load_trials(storage, workdir)
    if trials is None:
        return {"storage_error": error}
    done = [t for t in trials if t.datetime_complete is not None and t.datetime_start is not None]
    times = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    span = ((max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
            if done else None)
    return {"trials_finished": len(done), "trial_s_mean": round(sum(times) / len(times), 2) if times else None,
            "trial_s_max": round(max(times), 2) if times else None,
            "span_per_trial_s": round(span / len(done), 2) if done else None}


def scenario_tracking(bench: Bench, variant: str, trials: int, timeout_s: float) -> dict[str, Any]:
    """The same short search with a healthy MLflow store, the store locked by another process for the whole run
    (sqlite3 BEGIN EXCLUSIVE), or an unreachable tracking server; killed after `timeout_s`."""
    from elalora_auto.tracking import default_tracking_uri

    workdir = bench.workdir(f"tracking-{variant}")
    extra: list[str] = []
    holder = None
    if variant == "unreachable":
        extra = ["--tracking-uri", "http://127.0.0.1:1"]
    elif variant == "no_tracking":
        extra = ["--no-tracking"]
    elif variant == "locked":
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=default_tracking_uri(workdir)).search_experiments()  # creates the tables
        db = workdir / "mlflow.db"
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys, time\n"
             "c = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\n"
             "print('locked', flush=True)\ntime.sleep(10**6)", str(db)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    try:
        outcome = run_cli(bench, bench.search_args(workdir, None, trials, *extra), timeout_s=timeout_s)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    return {"variant": variant, "trials_target": trials, **trial_times(None, workdir),
            "wall_s": outcome.wall_s, "exit_code": outcome.rc, "timed_out": outcome.timed_out,
            "result": f"timed out after {timeout_s:.0f} s" if outcome.timed_out else f"exit {outcome.rc}",
            "outputs_with_traceback": error_lines([outcome.output], "Traceback")}


def scenario_journal_repair(bench: Bench, trials: int) -> dict[str, Any]:
    """A journal ending in an unterminated line (what a kill during a write leaves), then resume and `status`."""
    workdir = bench.workdir("journal-repair")
    first = run_cli(bench, bench.search_args(workdir, None, trials), timeout_s=400)
    before = study_counts(None, workdir, trials).get("finished")
    journal = workdir / "optuna-journal.log"
    with journal.open("ab") as handle:
        handle.write(b'{"op_code": 5, "worker_id": "chaos-torn-write", "trial_id": 0, "param_na')
    resumed = run_cli(bench, bench.search_args(workdir, None, trials + 2), timeout_s=400)
    status = run_cli(bench, ["status", "--workdir", str(workdir)], timeout_s=120)
    return {"first_exit_code": first.rc, "finished_before_tear": before, "resume_exit_code": resumed.rc,
            "resume_error": last_error(resumed.output) if resumed.rc else None,
            **study_counts(None, workdir, trials + 2), "status_exit_code": status.rc,
            "status_error": last_error(status.output) if status.rc else None}



# ------------------------------------------------------------------------------------------ results
def _ratio(counts: dict[str, Any], key: str = "finished") -> str:
    return f"{counts.get(key, '?')}/{counts.get('trials_target', '?')}"


def _mlflow(c: dict[str, Any]) -> str:
    if "mlflow_error" in c:
        return f"error: {c['mlflow_error'][:80]}"
    return f"{c.get('mlflow_child_runs')} runs for {c.get('mlflow_trials_with_runs')} trials"


def _leaks(c: dict[str, Any]) -> str:
    if "password_leaks" not in c:
        return "n/a"
    return ", ".join(f"{k} {v}" for k, v in c["password_leaks"].items()) or "nowhere"


def _codes(codes: dict[str, int]) -> str:
    return " ".join(f"{k}x{v}" for k, v in sorted(codes.items()))


def _study_cells(c: dict[str, Any]) -> dict[str, Any]:
    """The columns read from the Optuna storage ('?' and an error column when it could not be read)."""
    g = collections.defaultdict(lambda: "?", c)
    cells = {"finished/T": _ratio(c), "exact": g["exact"], "dup. numbers": g["duplicate_numbers"],
             "Optuna RUNNING": g["running_left"],
             "repeated configs": f"{g['repeated_configs']} ({g['distinct_configs']} distinct)"}
    return {**cells, "storage error": c["storage_error"][:100]} if "storage_error" in c else cells


COLUMNS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "kills": lambda c: {
        "kills (-9 / INT)": f"{c['kills_by_signal'].get('SIGKILL', 0)} / {c['kills_by_signal'].get('SIGINT', 0)}",
        **_study_cells(c), "COMPLETE lost": c["complete_lost"],
        "MLflow RUNNING": c.get("mlflow_running", "-"), "MLflow child runs": _mlflow(c),
        "exit codes": f"{_codes(c['exit_codes'])}; final {c['final_exit_code']}",
        "SIGINT without effect": len([s for s in c.get("signal_without_effect", []) if s["signal"] == "SIGINT"]),
        "tracebacks": c["outputs_with_traceback"], "password seen in": _leaks(c)},
    "parallel": lambda c: {
        "workers": c["workers"], **_study_cells(c), "MLflow": _mlflow(c),
        "outputs with _alembic_tmp": c["outputs_with_alembic_tmp"], "exit codes": _codes(c["exit_codes"]),
        "password seen in": _leaks(c)},
    "tracking": lambda c: {"finished/T": _ratio(c, "trials_finished"), "trial s mean": c.get("trial_s_mean"),
                           "trial s max": c.get("trial_s_max"), "s per trial (span)": c.get("span_per_trial_s"),
                           "process wall s": c["wall_s"], "result": c["result"]},
    "journal_repair": lambda c: {"resume exit": c["resume_exit_code"], "resume error": c["resume_error"] or "",
                                 **_study_cells(c), "status exit": c["status_exit_code"],
                                 "status error": c["status_error"] or ""},
}


def table(path: Path, run_id: str | None = None) -> str:
    """Markdown tables (one per scenario) of one bench run: the last one unless `run_id` names another."""
    rows = read_jsonl(path)
    if not rows:
        return "(no results)"
    run_id = run_id or rows[-1]["run_id"]
    rows = [r for r in rows if r["run_id"] == run_id]
    head = rows[0]
    out = [f"Run {run_id}: code {head['commit']}{' (+ uncommitted changes)' if head['dirty'] else ''}, "
           f"{head['machine']}, {'--quick' if head['quick'] else 'full'}; {head['params']}"]
    for scenario in SCENARIOS:
        chosen = [r for r in rows if r["scenario"] == scenario]
        if not chosen:
            continue
        label = "tracking store" if scenario == "tracking" else "storage"
        cells = [{label: r["storage"], **({"bench error": r["counts"]["bench_error"]} if "bench_error" in
                                                r["counts"] else COLUMNS[scenario](r["counts"]))} for r in chosen]
        columns = list(dict.fromkeys(k for c in cells for k in c))
        out += ["", f"**{scenario}**", "", "| " + " | ".join(columns) + " |",
                "|" + "---|" * len(columns)]
        out += ["| " + " | ".join(str(c.get(k, "")).replace("|", "/") for k in columns) + " |" for c in cells]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose elalora_auto is measured")
    parser.add_argument("--quick", action="store_true", help="small N and short timeouts: a fast check")
    parser.add_argument("--kills", type=int, default=None, help="kills per storage (default 20, quick 2)")
    parser.add_argument("--kill-window", type=float, default=8.0,
                        help="a kill lands uniformly within this many seconds after the CLI's first line")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--stall-timeout", type=float, default=None,
                        help="seconds before a tracking-stall run is killed (default 300, quick 120)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--storages", nargs="+", choices=STORAGES, default=list(STORAGES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the /tmp/chaos-* folders")
    parser.add_argument("--no-tracking", action="store_true",
                        help="searches without MLflow, for a faster smoke run (not with the tracking scenario)")
    parser.add_argument("--table", action="store_true", help="print the tables of the last run and exit")
    parser.add_argument("--run-id", help="with --table: which run")
    args = parser.parse_args(argv)
    if args.no_tracking and "tracking" in args.scenarios and not args.table:
        parser.error("--no-tracking leaves nothing for the tracking scenario to measure; drop it from --scenarios")
    return args


def run_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The scenario sizes of this run (recorded on every row): --quick shrinks each."""
    kills = args.kills if args.kills is not None else (2 if args.quick else 20)
    # a run does ~2 s trials: the study outlasts the kills, which land mid-search
    return {"kills": kills, "kill_trials": 4 * kills + 4, "workers": args.workers,
            "parallel_trials": 8 if args.quick else 16, "stall_trials": 2 if args.quick else 3,
            "stall_timeout_s": args.stall_timeout or (120.0 if args.quick else 300.0), "seed": args.seed,
            "kill_window_s": args.kill_window}


Measure = tuple[str, str, Callable[[], dict[str, Any]]]  # scenario, storage (or variant), measurement


def scenarios(args: argparse.Namespace, bench: Bench, sizes: dict[str, Any]) -> list[Measure]:
    """Every scenario run this run asked for, in order."""
    todo: list[Measure] = []
    if "kills" in args.scenarios:
        todo += [("kills", storage, lambda storage=storage: scenario_kills(
            bench, storage, sizes["kills"], sizes["kill_trials"], args.kill_window)) for storage in args.storages]
    parallel = [storage for storage in args.storages if storage != "sqlite"]  # SQLite is not for parallel workers
    if "parallel" in args.scenarios:
        todo += [("parallel", storage, lambda storage=storage: scenario_parallel(
            bench, storage, args.workers, sizes["parallel_trials"])) for storage in parallel]
    if "tracking" in args.scenarios:
        todo += [("tracking", variant, lambda variant=variant: scenario_tracking(
            bench, variant, sizes["stall_trials"], sizes["stall_timeout_s"]))
            for variant in ("healthy", "locked", "unreachable")]
    if "journal_repair" in args.scenarios:
        todo.append(("journal_repair", "journal", lambda: scenario_journal_repair(bench, 2)))
    return todo


def record(results: Path, stamp: dict[str, Any], scenario: str, storage: str,
           measure: Callable[[], dict[str, Any]]) -> None:
    """Measure one scenario and append its row; a scenario that cannot even be measured is itself a result."""
    start = time.monotonic()
    try:
        counts = measure()
    except Exception as exc:  # recorded, not raised: the other scenarios still run
        counts = {"bench_error": first_line(f"{type(exc).__name__}: {exc}")}
    row = {**stamp, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "scenario": scenario, "storage": storage, "bench_s": round(time.monotonic() - start, 1),
           "counts": counts}
    append_jsonl(results, row)
    print(json.dumps({k: row[k] for k in ("scenario", "storage", "bench_s", "counts")}, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(args.results, args.run_id))
        return 0
    sizes = run_sizes(args)
    # Started in the background by a shell, this process (and so every CLI it starts) would ignore SIGINT and
    # the Ctrl-C runs would measure nothing; a Python handler is reset to the default in each child.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = args.code.resolve()
    commit, dirty = checkout_state(code)
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    bench = Bench(code=code, tmp=tmp, rng=random.Random(args.seed), quick=args.quick, untracked=args.no_tracking)
    stamp = {"run_id": run_id, "commit": commit, "dirty": dirty, "code": str(code), "machine": machine_note(),
             "quick": args.quick, "params": sizes}
    try:
        bench.setup()
        for scenario, storage, measure in scenarios(args, bench, sizes):
            record(args.results, stamp, scenario, storage, measure)
    finally:
        if bench.pg is not None:
            bench.pg.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(table(args.results, run_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
