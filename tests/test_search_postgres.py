"""Many workers on one PostgreSQL: a real server started here, three `elalora-auto worker` processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest

from elalora_auto.cli import main
from elalora_auto.search.study import open_storage
from test_search_study import _space, study_file  # noqa: F401 - the fixture is reused

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL on 127.0.0.1 (initdb in a temp dir), stopped and removed at teardown."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="elalora-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-w", "start"], check=True,
                   capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


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
    assert len({t.user_attrs["worker"] for t in trials}) >= 2, "the trials were not shared between workers"
