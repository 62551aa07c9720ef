"""Many workers on one PostgreSQL: a real server started here (once for the module) with a password-protected
role, `elalora-auto worker` processes sharing a study, a killed worker's trial failed by its heartbeat and
retried by another, and the password never leaving the processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from elalora_auto.cli import main
from elalora_auto.search.storage import open_storage
from gate_waits import wait_until_blocked
from test_search_study import _space, study_file  # noqa: F401 - the fixture is reused

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "Pw-7c1e9-NeverShown"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL on 127.0.0.1 (initdb in a temp dir), stopped and removed at teardown.

    TCP connections need a password (scram-sha-256): the URL is that of a role `elalora` owning its database,
    created over the server's Unix socket (trusted)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="elalora-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-w", "start"], check=True,
                   capture_output=True)
    try:
        _create_role(root, port)
        yield f"postgresql://elalora:{PASSWORD}@127.0.0.1:{port}/elalora"
    finally:
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _create_role(socket_dir: Path, port: int) -> None:
    import psycopg2

    connection = psycopg2.connect(host=str(socket_dir), port=port, user="postgres", dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE elalora LOGIN PASSWORD '{PASSWORD}'")
        cursor.execute("CREATE DATABASE elalora OWNER elalora")
    connection.close()


def test_three_workers_share_one_study_without_duplicates(study_file: Path, tmp_path: Path,  # noqa: F811
                                                          postgres_url: str) -> None:
    n_trials = 6
    assert main(["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "pg",
                 "--storage", postgres_url, "--trials", str(n_trials), "--create-only"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "elalora_auto.cli", "worker", "--study", "pg", "--storage",
                                 postgres_url, "--workdir", str(tmp_path / "runs"), "--no-tracking", "--quiet"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(3)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    trials = optuna.load_study(study_name="pg", storage=open_storage(postgres_url, tmp_path)).get_trials()
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert all(t.state.is_finished() for t in trials)
    assert sum("origin" in t.user_attrs for t in trials) == 1  # trial 0 (the default) ran once
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == n_trials
    # How the trials split between the workers is the scheduler's business; the counts are not: each trial was
    # run by one of the three processes, the one that printed it.
    pids = [int(t.user_attrs["worker"].rpartition(":")[2]) for t in trials]
    assert set(pids) <= {w.pid for w in workers}
    assert [len(re.findall(r"^trial \d+: ", out, re.M)) for out in outputs] == [
        pids.count(w.pid) for w in workers], outputs


def test_a_killed_workers_trial_is_failed_by_heartbeat_and_retried_by_another(
        study_file: Path, tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    """kill -9 a worker mid-trial, then start another: its first `optimize` fails the stale trial (no heartbeat
    for grace_s) and re-runs it, and the study still ends with the budget (the dead trial counts once).

    The dead trial's host:pid is rewritten to another machine's, so only the heartbeat can find it (a worker on
    the same host would otherwise recover it at start-up by pid, see recover_orphans)."""
    n_trials, interval, grace = 2, 1, 3
    config = yaml.safe_load(study_file.read_text())
    config.update(max_steps=400, eval_every=100, heartbeat={"interval_s": interval, "grace_s": grace})
    study_file.write_text(yaml.safe_dump(config))
    assert main(["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "pg-kill",
                 "--storage", postgres_url, "--trials", str(n_trials), "--create-only", "--quiet"]) == 0
    storage = open_storage(postgres_url, tmp_path)  # the test only watches: the default heartbeat does not matter
    study = optuna.load_study(study_name="pg-kill", storage=storage)
    assert study.user_attrs["settings"]["heartbeat"] == {"interval_s": interval, "grace_s": grace}

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "elalora_auto.cli", "worker", "--study", "pg-kill", "--storage", postgres_url,
               "--workdir", str(tmp_path / "runs"), "--no-tracking", "--quiet"]
    worker_a = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline, running = time.monotonic() + 60, []
        while time.monotonic() < deadline and not running:
            time.sleep(0.3)
            running = [t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                       if "worker" in t.user_attrs]  # the objective has started (and so has the heartbeat)
        assert running, "worker A never started a trial"
        time.sleep(interval + 0.5)  # at least one heartbeat recorded
    finally:
        os.killpg(worker_a.pid, signal.SIGKILL)
        worker_a.wait()
    killed = study.get_trials()[running[0].number]  # as the dead worker left it (its params suggested by now)
    assert killed.state.name == "RUNNING" and killed.params  # nobody has noticed yet
    storage.set_trial_user_attr(killed._trial_id, "worker", "another-machine:1")
    time.sleep(grace + 1)  # now stale: the next worker to start a trial fails it first

    worker_b = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert worker_b.returncode == 0, worker_b.stdout + worker_b.stderr
    trials = optuna.load_study(study_name="pg-kill", storage=open_storage(postgres_url, tmp_path)).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states[killed.number] == "FAIL" and "fail_reason" not in trials[killed.number].user_attrs  # heartbeat
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1, states
    (retry,) = retries
    assert retry.system_attrs["retry_history"] == [killed.number] and retry.params == killed.params
    assert retry.state.name == "COMPLETE" and retry.number > killed.number
    # the budget: n_trials besides the dead one, all finished, each run once and by worker B
    assert sorted(states) == list(range(n_trials + 1)) and all(t.state.is_finished() for t in trials)
    live = [t for t in trials if t.number != killed.number]
    assert len({t.user_attrs["worker"] for t in live}) == 1 and "another-machine" not in live[0].user_attrs["worker"]
    finished = [line.split(":")[0] for line in worker_b.stdout.splitlines() if line.startswith("trial ")]
    assert sorted(finished) == sorted(f"trial {t.number}" for t in live), worker_b.stdout
    assert finished[0] == f"trial {retry.number}", worker_b.stdout  # failed and re-run before anything else


def test_the_password_never_leaves_the_processes(study_file: Path, tmp_path: Path,  # noqa: F811
                                                 postgres_url: str) -> None:
    """`search`, `search --create-only`, `worker` (URL from ELALORA_STORAGE) and `status`, MLflow tracking on:
    no output, MLflow file (store or artifact) or stored study or trial attribute holds the password."""
    import json

    assert PASSWORD in postgres_url
    config = yaml.safe_load(study_file.read_text())
    config["no_tracking"] = False
    study_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ELALORA_STORAGE", None)
    base = [sys.executable, "-m", "elalora_auto.cli"]
    search = [*base, "search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "secret",
              "--storage", postgres_url, "--quiet"]
    runs = [subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
            for command, environment in (
                ([*search, "--trials", "2"], env),
                ([*search, "--trials", "3", "--create-only"], env),
                ([*base, "worker", "--study", "secret", "--workdir", str(tmp_path / "runs"), "--quiet"],
                 {**env, "ELALORA_STORAGE": postgres_url}),
                ([*base, "status", "--study", "secret", "--storage", postgres_url], env))]
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
        assert PASSWORD not in run.stdout + run.stderr
    assert "elalora:***@127.0.0.1" in runs[0].stdout  # the storage is still named, without its secret
    assert "trial 2:" in runs[2].stdout and "study secret: 3 trials" in runs[3].stdout, runs[2].stdout

    storage = open_storage(postgres_url, tmp_path)
    study = optuna.load_study(study_name="secret", storage=storage)
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    system_attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("secret"))
    stored = json.dumps([study.user_attrs, system_attrs,
                         [(t.user_attrs, t.system_attrs, t.params) for t in study.trials]], default=str)
    assert "elalora:***@" in stored and PASSWORD not in stored
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any("mlartifacts" in p.parts for p in files)
    leaked = [str(p) for p in files if PASSWORD.encode() in p.read_bytes()]
    assert not leaked


def test_processes_opening_a_fresh_database_at_once_all_get_the_storage(postgres_url: str) -> None:
    """RDBStorage creates its tables on first open; 4 processes doing so at once collide in PostgreSQL's catalog
    (`pg_type_typname_nsp_index`), and without a retry the losers exit 2. A fresh schema stands in for a fresh database."""
    import psycopg2

    connection = psycopg2.connect(postgres_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA fresh")
    connection.close()
    url = f"{postgres_url}?options=-csearch_path%3Dfresh"
    code = "import sys; from elalora_auto.search.storage import open_storage; open_storage(sys.argv[1], '.')"
    processes = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, errors


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_the_trial_gate_excludes_every_other_holder_until_released(kind: str, tmp_path: Path,
                                                                   request) -> None:
    """Two gates on one study (as two processes open it) exclude each other; one on another study does not."""
    import threading

    from elalora_auto.search.storage import trial_gate

    uri = {"journal": None, "sqlite": f"sqlite:///{tmp_path / 'studies.db'}",
           "postgresql": request.getfixturevalue("postgres_url") if kind == "postgresql" else None}[kind]
    storages = [open_storage(uri, tmp_path) for _ in range(2)]
    first, second = (trial_gate(uri, tmp_path, s, "s") for s in storages)
    other = trial_gate(uri, tmp_path, storages[1], "another study")
    taken = threading.Event()

    def take() -> None:
        second.acquire()
        taken.set()

    first.acquire()
    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    wait_until_blocked(second)  # the second holder waits at the gate (the kernel's or the server's lock table)
    assert not taken.is_set(), "a second holder got the gate while the first held it"
    if kind == "postgresql":  # the server's lock is keyed by the study; file gates are one per storage file
        other.acquire()
        other.release()
    first.release()
    assert taken.wait(timeout=10)
    second.release()
    first.acquire()  # released for good: takes it again at once
    first.release()
