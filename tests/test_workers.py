"""Many processes on one study: `search --workers N` from one command (exact count, one MLflow run per
trial, Ctrl-C forwarded to every child), and fresh configurations from parallel and restarted processes."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from elalora_auto.cli import main
from elalora_auto.search.study import INTERRUPTED, counted_trials
from gate_waits import wait_until_blocked
from test_search_study import _space, _study, start_and_wait_until_evaluated, study_file  # noqa: F401


def _configurations(study) -> list[tuple]:
    """The proposed configurations: each trial's parameters, re-runs of an interrupted or dead trial excepted."""
    return [tuple(sorted(t.params.items())) for t in study.trials
            if "rerun_of" not in t.user_attrs and "failed_trial" not in t.system_attrs]


def test_search_with_two_workers_ends_with_the_exact_count_and_one_mlflow_run_per_trial(
        study_file: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    from mlflow import MlflowClient

    config = yaml.safe_load(study_file.read_text())
    config["no_tracking"] = False
    study_file.write_text(yaml.safe_dump(config))
    assert main(["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "w",
                 "--trials", "4", "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "created study w" in out and "study w: 4 trials" in out  # the parent's summary
    assert {line.split("]")[0] for line in out.splitlines() if line.startswith("[worker")} == {"[worker 0",
                                                                                              "[worker 1"}
    assert sorted(line for line in out.splitlines() if "worker joined study w" in line) == [
        "[worker 0] worker joined study w (4 trials in all)", "[worker 1] worker joined study w (4 trials in all)"]
    study = _study(tmp_path, "w")
    assert [t.number for t in study.trials] == [0, 1, 2, 3] and all(t.state.is_finished() for t in study.trials)
    # How the 4 trials split between the two is the scheduler's business; that each was run once by the worker
    # that printed it is not: each trial line comes from one slot, and a slot's trials carry one process's id.
    printed = {int(line.split("] trial ")[1].split(":")[0]): line.split("]")[0]
               for line in out.splitlines() if line.startswith("[worker") and "] trial " in line}
    assert sorted(printed) == [0, 1, 2, 3]
    slot_of = {t.user_attrs["worker"]: printed[t.number] for t in study.trials}
    assert all(slot_of[t.user_attrs["worker"]] == printed[t.number] for t in study.trials)
    assert len(slot_of) == len(set(slot_of.values())) and os.getpid() not in {
        int(w.rpartition(":")[2]) for w in slot_of}  # the parent ran none
    assert len(set(_configurations(study))) == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([experiment.experiment_id], "tags.`elalora.role` = 'trial'")
    assert sorted(int(r.data.tags["elalora.trial"]) for r in runs) == [0, 1, 2, 3]
    origins = {int(r.data.tags["elalora.trial"]): r.data.tags.get("elalora.origin") for r in runs}
    assert origins == {0: "default (authors' configuration)", 1: None, 2: None, 3: None}  # the sampler drew 1-3


def test_parallel_and_restarted_searches_propose_no_configuration_twice(study_file: Path,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    """Four `search` processes started at once on a fresh workdir (one creates the study, the others load it),
    then a restart: the sampler used to be seeded alike on every start, so these proposed each other's
    configurations (7 distinct of 16)."""
    args = ["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "p", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "elalora_auto.cli", *args, "--trials", "8", "--no-tracking"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(4)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert main([*args, "--trials", "10"]) == 0  # the restart
    study = _study(tmp_path, "p")
    assert len(study.trials) == 10 and counted_trials(study) == 10
    assert [t.number for t in study.trials if "origin" in t.user_attrs] == [0]
    # Which of the four ran how many is the scheduler's business; the counts are not: the four ran the first 8
    # between them (each printed its own), the restart exactly the last 2.
    pids = [int(t.user_attrs["worker"].rpartition(":")[2]) for t in study.trials]
    assert set(pids[:8]) <= {p.pid for p in procs} and pids[8:] == [os.getpid()] * 2
    assert [len(re.findall(r"^trial \d+: ", out, re.M)) for out in outputs] == [
        pids.count(p.pid) for p in procs], (outputs, pids)
    assert len(set(_configurations(study))) == len(_configurations(study)) == 10


def test_ctrl_c_reaches_every_worker_and_the_same_command_resumes(study_file: Path, tmp_path: Path) -> None:  # noqa: F811
    """SIGINT to `search --workers 2` once both children train: each child stops its trial (re-queued), the
    parent prints one line for both and exits 130; the same command then ends with the budget."""
    config = yaml.safe_load(study_file.read_text())
    config["max_steps"] = 400
    study_file.write_text(yaml.safe_dump(config))
    args = ["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "i", "--trials", "3",
            "--workers", "2", "--quiet"]
    proc = start_and_wait_until_evaluated(args, tmp_path / "runs" / "optuna-journal.log", trials=2,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in out + err, out + err
    assert [line for line in err.splitlines() if line.startswith("interrupted")] == [
        f"interrupted: trials 0, 1 will be re-run; resume with: {shlex.join(['elalora-auto', *args])}"], err
    study = _study(tmp_path, "i")
    stopped = [t for t in study.trials if t.user_attrs.get("fail_reason") == INTERRUPTED]
    assert [t.number for t in stopped] == [0, 1] and not [t for t in study.trials if t.state.name == "RUNNING"]
    for trial in stopped:  # the children are gone, not orphaned
        pid = int(trial.user_attrs["worker"].rpartition(":")[2])
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()

    config["max_steps"] = 12
    study_file.write_text(yaml.safe_dump(config))
    assert main(args) == 0
    study = _study(tmp_path, "i")
    reruns = {t.user_attrs["rerun_of"]: t for t in study.trials if "rerun_of" in t.user_attrs}
    assert sorted(reruns) == [0, 1] and all(reruns[n].params == study.trials[n].params for n in reruns)
    assert counted_trials(study) == 3 and all(t.state.is_finished() for t in study.trials)


def test_a_worker_takes_no_trial_while_another_process_holds_the_studys_gate(study_file: Path,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    """The budget check and the trial it allows happen under the study's gate: while this test holds it, a
    joined worker creates and pops nothing (trial 0 stays WAITING); released, it runs exactly the budget.
    Two workers that both saw 5 of 6 trials used to create a seventh (PostgreSQL, in CI)."""
    import threading

    import optuna

    from elalora_auto.search import join_study
    from elalora_auto.search.storage import open_storage, trial_gate

    assert main(["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "g",
                 "--trials", "2", "--create-only"]) == 0
    workdir = tmp_path / "runs"
    gate = trial_gate(None, workdir, open_storage(None, workdir), "g")
    gate.acquire()
    joined, errors = threading.Event(), []

    def work() -> None:
        try:
            join_study("g", None, {"workdir": str(workdir), "no_tracking": True},
                       echo=lambda line: joined.set(), progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=work)
    try:
        thread.start()
        assert joined.wait(timeout=60), errors
        wait_until_blocked(gate)  # the worker waits at the gate (the kernel's lock table says so), so it has
        assert [t.state for t in _study(tmp_path, "g").trials] == [optuna.trial.TrialState.WAITING]  # popped nothing
    finally:
        gate.release()
        thread.join(timeout=120)
    assert not errors and not thread.is_alive()
    study = _study(tmp_path, "g")
    assert [t.number for t in study.trials] == [0, 1] and all(t.state.is_finished() for t in study.trials)


def test_gpu_indices_count_the_gpus_torch_sees(monkeypatch) -> None:
    """`--gpus` indices number the GPUs this process sees (within its own CUDA_VISIBLE_DEVICES); a missing one
    fails before any worker starts. The GPU count is set here: this machine may have none."""
    import pytest
    import torch

    from elalora_auto.errors import UserError
    from elalora_auto.search.launcher import worker_slots

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert worker_slots(None, "1,0") == [("gpu 1", {"CUDA_VISIBLE_DEVICES": "5"}),
                                         ("gpu 0", {"CUDA_VISIBLE_DEVICES": "3"})]
    with pytest.raises(UserError, match=r"there is no GPU 2 here \(torch sees 2\); use --gpus 0,1"):
        worker_slots(None, "0,2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert worker_slots(None, "1") == [("gpu 1", {"CUDA_VISIBLE_DEVICES": "1"})]
    with pytest.raises(UserError, match="--device is cpu"):
        worker_slots(None, "0", "cpu")
