"""Headless Chromium against `elalora-auto ui`: the study's trial runs are listed and the Pareto artifact opens."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import optuna
import pytest

from elalora_auto.events import Event
from elalora_auto.tracking import MlflowTracker
from test_tracking import _run_trial

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DOCS_SHOT = Path(__file__).resolve().parents[1] / "docs" / "ui-screenshot.png"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chromium(tmp: Path, url: str, *mode: str) -> str:
    """One headless page load; the MLflow UI is a React SPA, so it gets virtual time to render."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
               "--window-size=1400,900", "--virtual-time-budget=20000", *mode, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp).stdout


def _text(dom: str) -> str:
    """The page's visible words (React splits numbers and words into separate nodes)."""
    return " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", "", dom, flags=re.S)).split())


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (install it with `make browser-deps`)")
def test_mlflow_ui_lists_trials_and_opens_the_pareto_front(tmp_path):
    workdir = tmp_path / "work"
    tracker = MlflowTracker(workdir=workdir)
    study = optuna.create_study(study_name="ui-study", directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    tracker(Event("study_start", 0, {"study": study, "study_name": "ui-study", "storage": "memory", "settings": {}}))
    for outcome in ("COMPLETE", "COMPLETE", "PRUNED"):
        _run_trial(tracker, study, workdir, outcome)
    tracker(Event("study_end", 0, {"study": study, "study_name": "ui-study"}))
    runs = tracker.study_runs("ui-study")

    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "elalora_auto.cli", "ui", "--workdir", str(workdir), "--port", str(port)],
                          stdout=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        # The command prints the URL once the server answers (the server's own output shares the pipe).
        assert any(line.startswith(f"MLflow UI: {base}") for line in iter(ui.stdout.readline, ""))
        threading.Thread(target=ui.stdout.read, daemon=True).start()  # keep draining: a full pipe blocks it
        experiment_url = f"{base}/#/experiments/{runs.experiment_id}/runs"
        dom = _chromium(tmp_path, experiment_url, "--dump-dom")
        (tmp_path / "experiment.html").write_text(dom)
        # The training-runs table shows the study's parent run with its three trial runs nested under it.
        assert "Training runs" in _text(dom) and "ui-study" in _text(dom) and "4 matching runs" in _text(dom)
        artifact_url = f"{experiment_url}/{runs.parent_run_id}/artifacts/pareto_front.png"
        dom = _chromium(tmp_path, artifact_url, "--dump-dom")
        (tmp_path / "artifact.html").write_text(dom)
        assert "pareto_front.png" in _text(dom)
        png = urllib.request.urlopen(f"{base}/get-artifact?path=pareto_front.png&run_uuid={runs.parent_run_id}").read()
        assert png.startswith(b"\x89PNG")
        _chromium(tmp_path, experiment_url, "--screenshot=runs.png")
        shot = tmp_path / "runs.png"
        assert shot.stat().st_size > 10_000
        DOCS_SHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, DOCS_SHOT)
    finally:
        ui.send_signal(signal.SIGINT)  # what Ctrl-C does; the command stops the server's process group
        assert ui.wait(timeout=30) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/health", timeout=2)
