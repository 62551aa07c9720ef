"""The MLflow store under real processes: a fresh store opened by four at once, an unreachable server whose
events are spooled and replayed by the next start."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from mlflow import MlflowClient

from elalora_auto.tracking import default_tracking_uri, prepare_store
from test_search_study import study_file  # noqa: F401 - the tiny study fixture

ONE_TRIAL = textwrap.dedent("""
    import sys
    from elalora_auto.events import Event
    from elalora_auto.records import Ending
    from elalora_auto.tracking import MlflowTracker
    workdir, number = sys.argv[1], int(sys.argv[2])
    tracker = MlflowTracker(workdir=workdir)
    tracker(Event("study_start", 0, {"study_name": "race", "storage": "memory", "settings": {"trials": 4}}))
    data = {"study_name": "race", "trial_number": number}
    tracker(Event("trial_start", 0, {**data, "spec": {"task": "x", "training": {"seed": 1}}, "trainable_params": 10,
                                     "rank_map": {"q": 2}}))
    tracker(Event("train_step", 1, {**data, "loss": 0.5, "lr": 1e-3, "total_rank": 2, "trainable_params": 10}))
    tracker(Event("trial_finished", 0, {**data, "state": Ending.COMPLETE, "reason": None, "values": [0.5, 10],
                                        "params": {"r": number}, "result": None, "output_dir": None}))
    assert tracker.flush(), "the store did not take the events"
""")


def _trial_runs(uri: str, study: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study)
    return client.search_runs([experiment.experiment_id], "tags.`elalora.role` = 'trial'")


def test_four_processes_on_a_fresh_store_record_every_trial(tmp_path: Path) -> None:
    workdir = tmp_path / "fresh"
    script = tmp_path / "one_trial.py"
    script.write_text(ONE_TRIAL)
    procs = [subprocess.Popen([sys.executable, str(script), str(workdir), str(i)], stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, errors
    assert not any("_alembic_tmp" in err or "already exists" in err for err in errors), errors
    runs = _trial_runs(default_tracking_uri(workdir), "race")
    assert sorted(int(r.data.tags["elalora.trial"]) for r in runs) == [0, 1, 2, 3]
    assert all(r.info.status == "FINISHED" and r.data.metrics["train_loss"] == 0.5 for r in runs)


def test_prepare_store_creates_the_schema_once_and_again_is_a_no_op(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    prepare_store(uri)
    assert (tmp_path / "mlflow.db").is_file()
    size = (tmp_path / "mlflow.db").stat().st_size
    prepare_store(uri)
    assert (tmp_path / "mlflow.db").stat().st_size == size
    assert MlflowClient(tracking_uri=uri).search_experiments()[0].name == "Default"


def _search(config: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "elalora_auto.cli", "search", "--config", str(config), "--trials", "2",
               "--quiet", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_an_unreachable_store_costs_the_search_nothing_and_a_later_start_replays_it(study_file: Path) -> None:  # noqa: F811
    spec = yaml.safe_load(study_file.read_text())
    config = study_file.with_name("tracked.yaml")
    # the built-in elalora space here (its calibrated lr range), so trial 0 takes a learning rate inside it
    config.write_text(yaml.safe_dump({**spec, "no_tracking": False, "trial0": {"learning_rate": 1.5e-3}}))
    workdir = Path(spec["workdir"])
    first = _search(config, "--tracking-uri", "http://127.0.0.1:1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    spooled = [json.loads(line) for path in (workdir / "mlflow-spool").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    kinds = [r["kind"] for r in spooled]
    assert kinds.count("trial_finished") == 2 and kinds.count("trial_start") == 2 and "study_end" in kinds
    assert not (workdir / "mlflow.db").exists()
    second = _search(config)  # the study holds its 2 trials: this start only replays and reconciles
    assert second.returncode == 0, second.stderr[-3000:]
    assert "replaying" in second.stderr
    study_name = spooled[0]["data"]["study_name"]
    runs = _trial_runs(default_tracking_uri(workdir), study_name)
    assert sorted(int(r.data.tags["elalora.trial"]) for r in runs) == [0, 1]
    for run in runs:
        assert run.info.status in ("FINISHED", "KILLED", "FAILED") and "train_loss" in run.data.metrics
        assert "ranks/rank_map.json" in {a.path for a in MlflowClient(default_tracking_uri(workdir)).list_artifacts(
            run.info.run_id, "ranks")}
    assert all(not path.read_text() for path in (workdir / "mlflow-spool").glob("*.jsonl"))


def test_tracking_listens_and_never_changes_a_trial(study_file: Path) -> None:  # noqa: F811
    """The same study tracked into a fresh MLflow store and untracked: the same configurations, losses, ranks
    and results, step for step (the tracker consumes no random numbers and feeds nothing back)."""
    from elalora_auto.cli import main

    spec = yaml.safe_load(study_file.read_text())
    outcomes = {}
    for name, tracked in (("tracked", True), ("untracked", False)):
        config = study_file.with_name(f"{name}.yaml")
        workdir = study_file.parent / name
        config.write_text(yaml.safe_dump({**spec, "no_tracking": not tracked, "workdir": str(workdir),
                                          "trial0": {"learning_rate": 1.5e-3}}))
        assert main(["search", "--config", str(config), "--study", "same", "--trials", "2", "--quiet"]) == 0
        assert (workdir / "mlflow.db").is_file() == tracked
        folders = [workdir / "trials" / "same" / str(n) for n in (0, 1)]
        outcomes[name] = [{"spec": (f / "config.yaml").read_text().replace(str(workdir), "WORKDIR"),
                           **{key: value for key, value in json.loads((f / "result.json").read_text()).items()
                              if not key.endswith(("_s", "_per_s"))}}  # all but the timings
                          for f in folders]
    assert outcomes["tracked"] == outcomes["untracked"]
