"""The real `elalora-auto` CLI as separate processes, for benches that measure what a search leaves behind
(chaos.py): a run under a timed SIGKILL or Ctrl-C, many at once, a throw-away PostgreSQL with a random password,
the demo's tiny model and task as a short study file, and what a storage and an MLflow store hold afterwards. It
counts and never repairs, so a row says what the measured checkout does."""

from __future__ import annotations

import collections
import json
import os
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
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")
STUDY = "chaos"
ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}


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


