"""What a crash or a Ctrl-C leaves behind: a torn journal line repaired on open, and one clean line on Ctrl-C
with the interrupted trial re-run by the same command."""

from __future__ import annotations

import shlex
import signal
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
