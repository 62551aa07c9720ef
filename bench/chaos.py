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
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_jsonl, read_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "chaos.jsonl"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
STUDY = "chaos"
STORAGES = ("journal", "sqlite", "postgresql")
SCENARIOS = ("kills", "parallel", "tracking", "journal_repair")
ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------------ processes
@dataclass
class Outcome:
    """One CLI process: its exit code, output, wall time and what the bench did to it."""

    rc: int | None
    output: str
    wall_s: float
    signal_sent: str | None = None  # "SIGKILL" / "SIGINT" when the bench sent it to a live process
    timed_out: bool = False
    sigint_ignored: bool = False  # still alive 30 s after a SIGINT (then killed)
    children_left: bool = False  # processes of its group still alive after it exited


def run_cli(bench: "Bench", args: list[str], timeout_s: float,
            kill: tuple[signal.Signals, float] | None = None) -> Outcome:
    """Run `elalora-auto ARGS` in its own process group; with `kill`, send that signal `delay` seconds after
    the process prints its first line on stdout (the study is open by then), unless it has exited already.

    SIGINT goes to the whole group, as a terminal's Ctrl-C does; SIGKILL to the process alone, as `kill -9 PID`.
    """
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "elalora_auto.cli", *args], cwd=bench.tmp,
                            env=bench.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    lines: list[str] = []
    first_line = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not line.startswith(("[", "20", " ", "/", "Loading", "tokenising", "Writing")):
                first_line.set()  # a line of the CLI itself, not a library's log or warning
        first_line.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    outcome = Outcome(None, "", 0.0)
    deadline = start + timeout_s
    if kill is not None:
        sig, delay = kill
        first_line.wait(max(0.0, deadline - time.monotonic()))
        fire_at = min(time.monotonic() + delay, deadline)
        while proc.poll() is None and time.monotonic() < fire_at:
            time.sleep(0.05)
        if proc.poll() is None and time.monotonic() < deadline:
            outcome.signal_sent = sig.name
            if sig == signal.SIGINT:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    outcome.sigint_ignored = True
            else:
                os.kill(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        outcome.timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    outcome.wall_s = round(time.monotonic() - start, 2)
    try:
        os.killpg(proc.pid, 0)
        outcome.children_left = True
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    reader.join(timeout=10)
    outcome.rc, outcome.output = proc.returncode, "".join(lines)
    return outcome


def run_many(bench: "Bench", commands: list[list[str]], timeout_s: float) -> list[Outcome]:
    """Start every command at once (threads only wait on the processes) and collect them all."""
    results: list[Outcome | None] = [None] * len(commands)

    def one(i: int) -> None:
        results[i] = run_cli(bench, commands[i], timeout_s)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(commands))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------------------ PostgreSQL
class Postgres:
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1 (free port) whose role `chaos` has a random password."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-pg-", dir="/tmp"))
        self.password = "Chaos" + secrets.token_hex(8)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        (self.dir / "pw").write_text(self.password + "\n")
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
        if as_postgres:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.dir / "pw", "postgres")
        self._pg = as_postgres
        subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-U", "chaos",
                        f"--pwfile={self.dir / 'pw'}", "--auth=scram-sha-256"], check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                        str(self.dir / "log"), "-w", "-o",
                        f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200",
                        "start"], check=True, stdout=subprocess.DEVNULL, timeout=120)

    def new_database(self, name: str) -> str:
        """A fresh database; its SQLAlchemy URI (with the password, as a user would pass it)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="chaos", password=self.password,
                                dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return f"postgresql://chaos:{self.password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run([*self._pg, str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                        "-w", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ the bench
@dataclass
class Bench:
    code: Path
    tmp: Path
    rng: random.Random
    quick: bool
    untracked: bool = False  # --no-tracking: searches without MLflow (a faster smoke run of the other scenarios)
    pg: Postgres | None = None
    env: dict[str, str] = field(default_factory=dict)
    study_file: Path | None = None

    def setup(self) -> None:
        """The demo's tiny model and task files (built by the measured code's own functions) and a study YAML
        with short trials."""
        sys.path.insert(0, str(self.code))
        from elalora_auto.demo import demo_words, write_dataset
        from elalora_auto.tiny import build_tiny_bert

        self.env = {**os.environ, **ENV, "PYTHONPATH": str(self.code)}
        base = self.tmp / "base"
        model = build_tiny_bert(base / "model", demo_words(), num_labels=2, hidden_size=64, num_layers=2, seed=0)
        train, evaluation = write_dataset(base / "data")
        custom = {"train_file": str(train), "eval_file": str(evaluation), "text_columns": ["text"],
                  "label_column": "label"}
        study = {"task": "keyword-sentiment", "model": str(model), "custom": custom, "method": "elalora",
                 "space": "demo", "max_steps": 12, "eval_every": 4, "batch_size": 16, "max_length": 24,
                 "seed": 0, "study": STUDY,
                 "pruning": {"n_startup_trials": 2, "n_warmup_evals": 2, "baseline_patience": 3}}
        self.study_file = base / "study.yaml"  # written as JSON, which is YAML
        self.study_file.write_text(json.dumps(study, indent=1))

    def workdir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True)
        return path

    def storage(self, kind: str, workdir: Path, name: str) -> str | None:
        """The --storage value for a kind (None: the default journal file in the workdir)."""
        if kind == "journal":
            return None
        if kind == "sqlite":
            return f"sqlite:///{workdir / 'optuna.db'}"
        if self.pg is None:
            self.pg = Postgres()
        return self.pg.new_database(name)

    def search_args(self, workdir: Path, storage: str | None, trials: int, *extra: str) -> list[str]:
        assert self.study_file is not None
        args = ["search", "--config", str(self.study_file), "--workdir", str(workdir), "--trials", str(trials),
                "--quiet", *extra, *(["--no-tracking"] if self.untracked else [])]
        return args + (["--storage", storage] if storage else [])


# ------------------------------------------------------------------------------------------ what was left
def open_storage(storage: str | None, workdir: Path) -> Any:
    import optuna

    if storage is None:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(workdir / "optuna-journal.log")))
    if storage.startswith("postgresql://"):  # SQLAlchemy 2.1 maps the bare scheme to psycopg 3, not installed
        storage = "postgresql+psycopg2://" + storage[len("postgresql://"):]
    return optuna.storages.RDBStorage(storage)


def load_trials(storage: str | None, workdir: Path) -> tuple[list[Any] | None, str | None, Any]:
    """The study's trials (or None and the error that reading them raised) and the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=STUDY, storage=open_storage(storage, workdir))
        return study.get_trials(deepcopy=False), None, study
    except Exception as exc:  # the bench records whatever reading the storage raises
        return None, first_line(f"{type(exc).__name__}: {exc}"), None


def study_counts(storage: str | None, workdir: Path, target: int) -> dict[str, Any]:
    """Trial states, the final count against --trials, duplicate numbers and repeated configurations."""
    trials, error, _ = load_trials(storage, workdir)
    if trials is None:
        return {"storage_error": error}
    states = collections.Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    configs = collections.Counter(json.dumps(t.params, sort_keys=True) for t in finished)
    numbers = collections.Counter(t.number for t in trials)
    return {"trials_target": target, "trials_total": len(trials), "finished": len(finished),
            "exact": len(finished) == target, "states": dict(states),
            "running_left": states.get("RUNNING", 0),
            "duplicate_numbers": sum(n - 1 for n in numbers.values() if n > 1),
            "distinct_configs": len(configs), "repeated_configs": len(finished) - len(configs)}


def complete_numbers(storage: str | None, workdir: Path) -> set[int]:
    trials, _, _ = load_trials(storage, workdir)
    return {t.number for t in trials or [] if t.state.name == "COMPLETE"}


def mlflow_counts(bench: Bench, workdir: Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """Runs left RUNNING, child runs per trial, and whether the store can still be read."""
    from elalora_auto.tracking import TAG_ROLE, TAG_TRIAL, default_tracking_uri

    uri = tracking_uri or default_tracking_uri(workdir)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return {"mlflow_error": "no MLflow store was created"}
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        runs = client.search_runs(ids, run_view_type=ViewType.ALL, max_results=10000) if ids else []
    except Exception as exc:  # a corrupted store is a measured outcome
        return {"mlflow_error": first_line(f"{type(exc).__name__}: {exc}")}
    children = [r for r in runs if r.data.tags.get(TAG_ROLE) == "trial"]
    per_trial = collections.Counter(r.data.tags.get(TAG_TRIAL) for r in children)
    return {"mlflow_runs": len(runs), "mlflow_running": sum(r.info.status == "RUNNING" for r in runs),
            "mlflow_child_runs": len(children), "mlflow_trials_with_runs": len(per_trial),
            "mlflow_trials_multi_runs": sum(n > 1 for n in per_trial.values()),
            "mlflow_parent_status": sorted(r.info.status for r in runs if r.data.tags.get(TAG_ROLE) == "parent")}


def password_leaks(bench: Bench, outputs: list[str], workdir: Path, storage: str | None) -> dict[str, Any]:
    """Where the PostgreSQL password appears: process output, the MLflow store, other workdir files, the study."""
    if bench.pg is None or storage is None or not storage.startswith("postgresql"):
        return {}
    secret = bench.pg.password.encode()
    places = collections.Counter()
    places["output"] = sum(secret.decode() in text for text in outputs)
    for path in workdir.rglob("*"):
        if path.is_file() and secret in path.read_bytes():
            rel = path.relative_to(workdir)
            places["mlflow.db" if rel.name.startswith("mlflow.db") else
                   "mlartifacts" if rel.parts[0] == "mlartifacts" else "workdir_other"] += 1
    _, _, study = load_trials(storage, workdir)
    if study is not None:
        attrs = json.dumps([study.user_attrs, study._storage.get_study_system_attrs(study._study_id),
                            [t.user_attrs for t in study.get_trials(deepcopy=False)]], default=str)
        places["study_attrs"] = int(secret.decode() in attrs)
    return {"password_leaks": {k: v for k, v in places.items() if v}}


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


def last_error(text: str) -> str:
    """The exception line of the last traceback in `text`, else its last line."""
    lines = text.split("Traceback")[-1].splitlines()[1:] if "Traceback" in text else text.strip().splitlines()[-1:]
    return next((line for line in lines if line and not line.startswith((" ", "\t"))), "")[:300]


def error_lines(outputs: list[str], needle: str) -> int:
    """How many processes' output contains `needle` (e.g. 'Traceback', '_alembic_tmp')."""
    return sum(needle in text for text in outputs)


# ------------------------------------------------------------------------------------------ scenarios
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
def machine() -> str:
    load = os.getloadavg()
    return f"{platform.node()} {os.cpu_count()} CPUs, load {load[0]:.1f} at start"


def code_commit(code: Path) -> tuple[str, bool]:
    """The measured checkout's short commit and whether its tracked files differ from it."""
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = bool(subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    return commit, dirty


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
def main(argv: list[str] | None = None) -> int:
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
    if args.table:
        print(table(args.results, args.run_id))
        return 0
    if args.no_tracking and "tracking" in args.scenarios:
        parser.error("--no-tracking leaves nothing for the tracking scenario to measure; drop it from --scenarios")
    kills = args.kills if args.kills is not None else (2 if args.quick else 20)
    kill_trials = 4 * kills + 4  # a run does ~2 s trials: the study outlasts the kills, which land mid-search
    parallel_trials = 8 if args.quick else 16
    stall_timeout = args.stall_timeout or (120.0 if args.quick else 300.0)
    stall_trials = 2 if args.quick else 3
    params = {"kills": kills, "kill_trials": kill_trials, "workers": args.workers,
              "parallel_trials": parallel_trials, "stall_trials": stall_trials, "stall_timeout_s": stall_timeout,
              "seed": args.seed, "kill_window_s": args.kill_window}
    # Started in the background by a shell, this process (and so every CLI it starts) would ignore SIGINT and
    # the Ctrl-C runs would measure nothing; a Python handler is reset to the default in each child.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = args.code.resolve()
    commit, dirty = code_commit(code)
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    bench = Bench(code=code, tmp=tmp, rng=random.Random(args.seed), quick=args.quick, untracked=args.no_tracking)
    stamp = {"run_id": run_id, "commit": commit, "dirty": dirty, "code": str(code), "machine": machine(),
             "quick": args.quick, "params": params}

    def record(scenario: str, storage: str, measure: Callable[[], dict[str, Any]]) -> None:
        start = time.monotonic()
        try:
            counts = measure()
        except Exception as exc:  # a scenario that cannot even be measured is itself a result
            counts = {"bench_error": first_line(f"{type(exc).__name__}: {exc}")}
        row = {**stamp, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "scenario": scenario, "storage": storage, "bench_s": round(time.monotonic() - start, 1),
               "counts": counts}
        append_jsonl(args.results, row)
        print(json.dumps({k: row[k] for k in ("scenario", "storage", "bench_s", "counts")}, default=str),
              flush=True)

    try:
        bench.setup()
        if "kills" in args.scenarios:
            for storage in args.storages:
                record("kills", storage, lambda: scenario_kills(bench, storage, kills, kill_trials, args.kill_window))
        if "parallel" in args.scenarios:
            for storage in [s for s in args.storages if s != "sqlite"]:  # SQLite is not for parallel workers
                record("parallel", storage, lambda: scenario_parallel(bench, storage, args.workers, parallel_trials))
        if "tracking" in args.scenarios:
            for variant in ("healthy", "locked", "unreachable"):
                record("tracking", variant, lambda: scenario_tracking(bench, variant, stall_trials, stall_timeout))
        if "journal_repair" in args.scenarios:
            record("journal_repair", "journal", lambda: scenario_journal_repair(bench, 2))
    finally:
        if bench.pg is not None:
            bench.pg.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(table(args.results, run_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
