"""What a crash or a Ctrl-C leaves behind: a torn journal line repaired on open, and one clean line on Ctrl-C
with the interrupted trial re-run by the same command."""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
from pathlib import Path

import yaml

from elalora_auto.cli import main
from elalora_auto.search.study import INTERRUPTED, counted_trials
from test_search_study import _space, _study, start_and_wait_until_evaluated, study_file  # noqa: F401


def test_a_journal_with_a_torn_last_line_is_repaired_and_resumes_to_the_exact_count(
        study_file: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    """What a kill during a write leaves: an unterminated last line. Left alone, Optuna skipped it and the next
    record was appended onto it, after which every command failed with a JSONDecodeError."""
    args = ["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "torn", "--quiet"]
    assert main([*args, "--trials", "1"]) == 0
    journal = tmp_path / "runs" / "optuna-journal.log"
    intact = journal.read_bytes()
    journal.write_bytes(intact + b'{"op_code":5,"worker_id":"dead-proce')
    capsys.readouterr()
    assert main([*args, "--trials", "2"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "repaired" in line]
    assert len(notes) == 1 and "unterminated last line" in notes[0] and str(journal) in notes[0]
    assert journal.read_bytes().startswith(intact) and journal.read_bytes().endswith(b"\n")
    study = _study(tmp_path, "torn")
    assert [t.number for t in study.trials] == [0, 1] and all(t.state.is_finished() for t in study.trials)
    assert main(["status", "--workdir", str(tmp_path / "runs")]) == 0
    assert "study torn: 2 trials" in capsys.readouterr().out


def test_ctrl_c_prints_one_line_exits_130_and_the_same_command_re_runs_the_trial(
        study_file: Path, tmp_path: Path) -> None:  # noqa: F811
    """A real SIGINT once the trial is training (it has stored an evaluation): no traceback, no Optuna "Trial 0
    failed ... KeyboardInterrupt" lines, exit 130, one line naming the trial and the command; that command
    then re-runs trial 0's configuration and ends with the budget."""
    config = yaml.safe_load(study_file.read_text())
    config["max_steps"] = 400
    study_file.write_text(yaml.safe_dump(config))
    args = ["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "c", "--trials", "2",
            "--quiet"]
    proc = start_and_wait_until_evaluated(args, tmp_path / "runs" / "optuna-journal.log", stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err
    assert [line for line in err.splitlines() if line.startswith("interrupted")] == [
        f"interrupted: trial 0 will be re-run; resume with: {shlex.join(['elalora-auto', *args])}"], err

    config["max_steps"] = 12
    study_file.write_text(yaml.safe_dump(config))
    assert main(args) == 0
    study = _study(tmp_path, "c")
    first, rerun = study.trials[0], study.trials[1]
    assert first.state.name == "FAIL" and first.user_attrs["fail_reason"] == INTERRUPTED
    assert rerun.params == first.params and rerun.user_attrs["rerun_of"] == 0 and "origin" in rerun.user_attrs
    assert len(study.trials) == 3 and counted_trials(study) == 2 and all(t.state.is_finished() for t in study.trials)


def test_ctrl_c_is_held_back_while_the_journal_lock_is_held(tmp_path: Path) -> None:
    """A SIGINT inside the journal lock's release once left it half released (FileNotFoundError and a traceback on
    the next write, seen with `search --workers 2`); now it waits until the lock is released, which is then whole."""
    import os

    import pytest

    from elalora_auto.search.storage import _InterruptSafeLock

    journal = tmp_path / "optuna-journal.log"
    journal.touch()
    lock = _InterruptSafeLock(str(journal))
    assert lock.acquire()
    os.kill(os.getpid(), signal.SIGINT)  # held back: no KeyboardInterrupt while the lock is held
    with pytest.raises(KeyboardInterrupt):
        lock.release()
    assert not list(tmp_path.glob("optuna-journal.log.lock*"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert lock.acquire()
    lock.release()


def test_ctrl_c_is_held_back_and_delivered_once_the_hold_ends() -> None:
    """The worker holds Ctrl-C while Optuna creates a trial and while it tells one (a SIGINT inside the tell ended
    a search with "AssertionError: Should not reach." in bench/chaos.py)."""
    import os

    import pytest

    from elalora_auto.search.storage import SigintHold

    hold = SigintHold()
    hold.start()
    os.kill(os.getpid(), signal.SIGINT)  # recorded, not raised
    with pytest.raises(KeyboardInterrupt):
        hold.release()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    hold.release()  # nothing held: a no-op
    hold.start()
    hold.release()  # no SIGINT came: nothing raised


def test_a_re_run_whose_worker_dies_again_is_re_queued_again(tmp_path: Path) -> None:
    """A kill -9 of the re-run of a killed trial (RetryHeartbeatStaleTrialCallback with max_retry=1 gave up
    on it: the trial counted toward the budget and was never run; bench/chaos.py on SQLite, 83 of 84)."""
    import optuna

    from elalora_auto.search.storage import MAX_RERUNS, open_storage
    from elalora_auto.search.study import recover_orphans

    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="r", storage=storage, directions=["maximize", "minimize"])
    study.enqueue_trial({"x": 1})
    dead = f"{socket.gethostname()}:{2**22 + 12345}"  # above any pid this machine hands out
    for attempt in range(MAX_RERUNS + 1):
        trial = study.ask({"x": optuna.distributions.IntDistribution(0, 2)})
        trial.set_user_attr("worker", dead)
        assert recover_orphans(study, storage) == [trial.number]
        waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        if attempt < MAX_RERUNS:
            assert len(waiting) == 1 and waiting[0].system_attrs["retry_history"][-1] == trial.number
            assert counted_trials(study) == 1  # the chain counts once, as its waiting re-run
        else:
            assert waiting == []  # a configuration whose worker always dies is given up after MAX_RERUNS
