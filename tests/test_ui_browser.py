"""Headless Chromium against `elalora-auto ui`: the study's runs are listed, pruned ones included, a pruned trial's
rank map and the parent's Pareto front open, and the parent's plot page draws inside MLflow's artifact viewer.
Screenshots go to a temporary folder only (README's are made by `make screenshots`)."""

from __future__ import annotations

import re
import signal
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest

from elalora_auto.events import Event
from elalora_auto.tracking import MlflowTracker
from elalora_auto.ui import RUNS_VIEW, study_links
from test_tracking import _run_trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from screenshots import chromium, chromium_path, frames, free_port, start_ui, stop_ui  # noqa: E402

pytestmark = pytest.mark.browser


def _text(dom: str) -> str:
    """The page's visible words (React splits numbers and words into separate nodes)."""
    return " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", "", dom, flags=re.S)).split())


@pytest.mark.skipif(chromium_path() is None, reason="Chromium not found (install it with `make browser-deps`)")
def test_mlflow_ui_lists_trials_pruned_ones_with_rank_maps_and_opens_the_pareto_front(tmp_path):
    workdir = tmp_path / "work"
    tracker = MlflowTracker(workdir=workdir)
    study = optuna.create_study(study_name="ui-study", directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    tracker(Event("study_start", 0, {"study": study, "study_name": "ui-study", "storage": "memory", "settings": {}}))
    for outcome in ("COMPLETE", "COMPLETE", "PRUNED"):
        _run_trial(tracker, study, workdir, outcome)
    tracker(Event("study_end", 0, {"study": study, "study_name": "ui-study"}))
    runs = tracker.study_runs("ui-study")
    pruned = tracker.client.search_runs([runs.experiment_id], "tags.`elalora.state` = 'PRUNED'")[0]

    port = free_port()
    ui = start_ui(workdir, port)
    base = f"http://127.0.0.1:{port}"
    try:
        # The link `ui` prints for the study opens its training runs, not MLflow 3's GenAI overview.
        experiment_url = f"{base}/#/experiments/{runs.experiment_id}/runs"
        assert study_links(tracker.tracking_uri, port) == [f"study ui-study: {experiment_url}{RUNS_VIEW}"]
        dom = chromium(tmp_path, experiment_url + RUNS_VIEW, "--dump-dom")
        text = _text(dom)
        assert "Optuna study ui-study" in text and "4 matching runs" in text and "Traces 0" not in text
        dom = chromium(tmp_path, f"{experiment_url}/{pruned.info.run_id}/artifacts/ranks/rank_heatmap.png", "--dump-dom")
        assert "rank_heatmap.png" in _text(dom) and "trial-0002" in _text(dom)
        dom = chromium(tmp_path, f"{experiment_url}/{runs.parent_run_id}/artifacts/pareto_front.png", "--dump-dom")
        assert "pareto_front.png" in _text(dom) and "study_plots.html" in _text(dom)
        # MLflow shows an HTML artifact in a sandboxed blob: iframe; the plots must draw there (plotly inlined).
        # Ready once the front's plot is in it: the page's first plot (Optuna's history) draws before the browser
        # has parsed the rest of the page, and a reading taken then failed CI run 46.
        drawn = lambda found: any(f["url"].startswith("blob:") and f["svgs"] >= 3  # noqa: E731
                                  and "metric against trainable parameters" in f["text"] for f in found)
        viewer = frames(tmp_path, f"{experiment_url}/{runs.parent_run_id}/artifacts/study_plots.html", drawn)
        plots = [frame for frame in viewer if frame["url"].startswith("blob:")]
        assert plots and plots[0]["svgs"] >= 3, [(frame["url"], frame["svgs"]) for frame in viewer]
        assert "metric against trainable parameters" in plots[0]["text"]
        for run_id, path in ((runs.parent_run_id, "pareto_front.png"), (pruned.info.run_id, "ranks/rank_heatmap.png")):
            png = urllib.request.urlopen(f"{base}/get-artifact?path={path}&run_uuid={run_id}").read()
            assert png.startswith(b"\x89PNG")
        chromium(tmp_path, experiment_url + RUNS_VIEW, f"--screenshot={tmp_path / 'runs.png'}")
        assert (tmp_path / "runs.png").stat().st_size > 10_000
    finally:
        assert stop_ui(ui, signal.SIGINT) == 0  # what Ctrl-C does
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/health", timeout=2)
