"""Where library output goes, and that routing it imports no library: each case runs in a fresh process, so
whether a library is imported, and when, is the command's own doing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "ELALORA_AUTO_VERBOSE")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_cheap_commands_import_no_library_they_do_not_use(tmp_path: Path) -> None:
    """`--help`, `ui` and `status` on a missing store need neither Optuna nor transformers, `status` on a study only
    Optuna (it reads the study through it): library_output imported both at every command's start (about 0.7 s;
    2-3 s on a busy machine), and while a trial's outcome held Optuna's TrialState every TrialSpec loaded Optuna.
    None loads the MLflow tracker either (`tracking.__getattr__`)."""
    import optuna

    from elalora_auto.search.storage import open_storage

    runs = tmp_path / "runs"
    optuna.create_study(study_name="s", storage=open_storage(None, runs))
    done = _python(f"""
        import contextlib, io, sys
        from elalora_auto.cli import main
        watched = ("optuna", "transformers", "elalora_auto.tracking.tracker")
        loaded = lambda: sorted(m for m in watched if m in sys.modules)
        def run(*argv):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    return main(list(argv))
                except SystemExit as exc:
                    return exc.code
        assert run("--help") == 0
        print("help", loaded())
        assert run("ui", "--workdir", {str(tmp_path)!r}) == 2
        print("ui", loaded())
        assert run("status", "--workdir", {str(tmp_path)!r}) == 2
        print("status, no store", loaded())
        assert run("status", "--workdir", {str(runs)!r}) == 0
        print("status", loaded())
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["help []", "ui []", "status, no store []", "status ['optuna']"], done.stdout


def test_a_trials_outcome_loads_and_travels_without_optuna(tmp_path: Path) -> None:
    """The trial's data, its folder's reader, the tracker and its spool records: none imports Optuna (a trial's
    ending is `records.Ending`; only the search and the study's readers meet Optuna's TrialState)."""
    done = _python("""
        import json, sys
        from elalora_auto.events import Event
        from elalora_auto.records import Ending
        from elalora_auto.spec import TrialResult, TrialSpec
        from elalora_auto.tracking import MlflowTracker
        from elalora_auto.tracking.payload import from_record, to_record
        from elalora_auto.trial_output import read_result, write_trial_output
        result = TrialResult.unreached(Ending.PRUNED, "a space constraint")
        write_trial_output(__import__("pathlib").Path("t"), TrialSpec(task="sst2"), result, None)
        assert read_result("t") == result
        event = Event("trial_finished", 0, {"state": Ending.PRUNED, "result": result})
        assert from_record(json.loads(json.dumps(to_record(event, 1)))).data == event.data
        print("optuna" in sys.modules)
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"], done.stdout


def test_a_library_imported_within_is_quieted_like_one_imported_before(tmp_path: Path) -> None:
    """Optuna and transformers imported inside library_output: their log lines reach the log file, not the terminal,
    and transformers' progress bars are off until it ends."""
    done = _python("""
        import sys
        from elalora_auto.output import library_output
        with library_output("runs") as log:
            assert "transformers" not in sys.modules and "optuna" not in sys.modules
            import optuna
            from transformers.utils import logging as hf_logging
            optuna.logging.get_logger("optuna.probe").warning("optuna line")
            hf_logging.get_logger("transformers.probe").warning("transformers line")
            print("bars within", hf_logging.is_progress_bar_enabled())
        print("bars after", hf_logging.is_progress_bar_enabled())
        print(log.read_text())
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "optuna line" not in done.stderr and "transformers line" not in done.stderr, done.stderr
    out = done.stdout
    assert "bars within False" in out and "bars after True" in out
    assert "optuna.probe WARNING: optuna line" in out and "transformers.probe WARNING: transformers line" in out
