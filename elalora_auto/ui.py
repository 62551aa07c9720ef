"""The MLflow UI for a workdir's store: check the port, start `mlflow server` on 127.0.0.1, wait until it answers,
stop it."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from elalora_auto.errors import UserError
from elalora_auto.tracking import TAG_STUDY, artifact_root_for, prepare_store

log = logging.getLogger(__name__)
# MLflow 3 opens experiments in its GenAI mode (Overview, Traces); this query opens them on their training runs,
# sorted by name: the study's parent run, then every trial run listed (not folded under the parent).
RUNS_VIEW = "?workflowType=machine_learning&orderByKey=attributes.run_name&orderByAsc=true"


def serve_ui(tracking_uri: str, port: int) -> int:
    """`elalora-auto ui`: check, start, print the links, and serve until the server exits or Ctrl-C (or SIGTERM,
    which behaves like it, so the server's process group is stopped either way); the exit code."""
    import signal

    check_servable(tracking_uri, port)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = start_ui(tracking_uri, port)
    try:
        wait_ui_ready(server, port)
        print(f"MLflow UI: http://127.0.0.1:{port}  (store {tracking_uri}; Ctrl-C stops it)", flush=True)
        for line in study_links(tracking_uri, port):
            print(f"  {line}", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        print("stopping the MLflow UI", flush=True)
        return 0
    finally:
        stop_ui(server)


def check_servable(tracking_uri: str, port: int) -> None:
    """What `mlflow server` would trip over, found before it starts: a store that is itself a server, and a taken
    port (the server would retry the port for about 90 s, print a dozen lines and exit 0)."""
    if tracking_uri.partition(":")[0].lower() in ("http", "https", "databricks", "databricks-uc", "uc"):
        raise UserError(f"--tracking-uri {tracking_uri} is already served by an MLflow server: open that server's "
                        "UI in a browser (`ui` serves a database store: sqlite:///PATH.db, postgresql://...)")
    if not _port_free(port):
        free = next((p for p in range(port + 1, min(port + 50, 65536)) if _port_free(p)), None)
        raise UserError(f"port {port} on 127.0.0.1 is taken (another MLflow UI?): "
                        + (f"pass --port {free}" if free else "pass another --port") + f", or stop what listens on {port}")


def _port_free(port: int) -> bool:
    """Whether the server could bind 127.0.0.1:`port` now (with SO_REUSEADDR, as it binds: TIME_WAIT is no obstacle)."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_ui(tracking_uri: str, port: int = 5000) -> Any:
    """Start `mlflow server` on 127.0.0.1 against the store, in its own process group.

    The server forks workers; a group of its own lets `stop_ui` end all of them and nothing else.
    """
    import subprocess
    import sys

    prepare_store(tracking_uri)  # migrated once here, not raced by the server's workers on their first requests
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    root = artifact_root_for(tracking_uri)
    if root:  # runs keep absolute artifact locations; this root only serves newly created experiments
        command += ["--default-artifact-root", root]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen(command, start_new_session=True, env=env)


def wait_ui_ready(process: Any, port: int, timeout_s: float = 120.0) -> None:
    """Block until the server answers, then touch each of its stores once, one request at a time.

    The server opens its SQLite stores lazily on first use; the UI's first page fires many requests at once,
    and concurrent first opens race on schema creation ("table ... already exists"). One warm-up avoids it.
    """
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise UserError(f"the MLflow server exited with code {process.returncode}; is port {port} free?")
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(f"the MLflow server did not answer on port {port} within {timeout_s:.0f} s") from None
            time.sleep(0.5)
    for path in ("/ajax-api/3.0/mlflow/server-info", "/ajax-api/2.0/mlflow/experiments/search?max_results=1",
                 "/ajax-api/2.0/mlflow/registered-models/search?max_results=1"):
        try:
            urllib.request.urlopen(base + path, timeout=60).close()
        except urllib.error.HTTPError as exc:
            log.warning("MLflow UI warm-up %s answered %s", path, exc.code)


def stop_ui(process: Any, timeout_s: float = 10.0) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL for anything still alive."""
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


def study_links(tracking_uri: str, port: int) -> list[str]:
    """'study NAME: URL' for each study in the store, the URL opening its runs (not MLflow's GenAI overview)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    studies = [e for e in client.search_experiments(max_results=1000) if TAG_STUDY in e.tags]
    return [f"study {e.name}: http://127.0.0.1:{port}/#/experiments/{e.experiment_id}/runs{RUNS_VIEW}"
            for e in sorted(studies, key=lambda e: e.name)]
