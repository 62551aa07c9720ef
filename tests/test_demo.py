"""`elalora-auto demo` end to end (offline): the trials learn, ElaLoRA ranks move, tracking and next steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

from elalora_auto.cli import main
from elalora_auto.demo import TASK_TEXT, write_dataset
from elalora_auto.output import VERBOSE_ENV, library_output
from elalora_auto.workdir import Workdir


def test_dataset_is_deterministic_and_balanced(tmp_path: Path) -> None:
    a = [p.read_text() for p in write_dataset(tmp_path / "a")]
    b = [p.read_text() for p in write_dataset(tmp_path / "b")]
    assert a == b
    labels = [line.rsplit(",", 1)[1] for line in a[0].splitlines()[1:]]
    assert labels.count("positive") == labels.count("negative") == 400


def test_demo_learns_moves_ranks_tracks_and_says_what_next(tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert TASK_TEXT in out and "Pareto front" in out
    for command in ("elalora-auto ui", "elalora-auto status", "elalora-auto report", "elalora-auto export"):
        assert command in out
    result = json.loads((workdir / "trials" / "demo" / "0" / "result.json").read_text())  # trial 0: the default
    assert result["primary"] >= 0.75, result["eval_history"]  # chance is 0.5
    assert result["rank_history"], "no ElaLoRA round moved a rank"
    ranks = set(result["rank_map"].values())
    assert ranks != {10}, "ranks never left r_init"
    assert (workdir / "mlflow.db").is_file()
    for folder in (workdir / "trials" / "demo").iterdir():  # every trial, pruned ones too, leaves its record
        ended = json.loads((folder / "result.json").read_text())
        assert ended["state"] in ("COMPLETE", "PRUNED") and ended["trainable_params"] and ended["rank_map"]
        assert (folder / "rank_heatmap.png").is_file() and (folder / "adapter").is_dir() == (ended["state"] == "COMPLETE")
    export = workdir / "export"  # the knee, standing alone: tokenizer beside the adapter, the base model copied
    assert (export / "adapter" / "tokenizer_config.json").is_file() and (export / "base-model" / "config.json").is_file()
    assert str(workdir) not in (export / "README.md").read_text() + (export / "adapter" / "adapter_config.json").read_text()


def test_search_config_demo_runs_the_builtin_demo_study(tmp_path: Path, capsys) -> None:
    """The built-in `demo` study that docs/commands/search.md lists works with plain `search` too (it builds its own model and data)."""
    workdir = tmp_path / "search-demo"
    assert main(["search", "--config", "demo", "--workdir", str(workdir), "--trials", "1", "--no-tracking",
                 "--quiet"]) == 0
    assert "study demo: 1 trials" in capsys.readouterr().out
    result = json.loads((workdir / "trials" / "demo" / "0" / "result.json").read_text())
    assert result["state"] == "COMPLETE" and result["primary"] >= 0.75


def test_demo_prints_no_library_warning_or_log_line(tmp_path: Path) -> None:
    """The real command in its own process: stdout and stderr hold our lines and progress bars only; the library
    warnings and log lines (transformers' FutureWarning, Optuna's study line, MLflow's migration) go to the log file."""
    import os
    import subprocess
    import sys

    workdir = tmp_path / "quiet-demo"
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", VERBOSE_ENV)}
    done = subprocess.run([sys.executable, "-m", "elalora_auto.cli", "demo", "--workdir", str(workdir), "--trials", "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in (done.stdout + done.stderr).replace("\r", "\n").splitlines() if line.strip()]
    noise = [line for line in lines if re.search(r"Warning|warn\(|\bINFO\b|^\[[IWE] |Writing model shards", line)]
    assert not noise, noise
    bars = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert all(re.search(r"\| *\d+/\d+ \[", line) for line in bars), bars  # tqdm bars only
    log = Workdir(workdir).log.read_text()
    assert "A new study created" in log and "mlflow" in log, log[:2000]


def test_library_output_goes_to_the_log_file_and_to_stderr_only_when_verbose(tmp_path: Path, capsys,
                                                                            monkeypatch) -> None:
    import logging
    import warnings

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    for verbose in (False, True):
        with library_output(tmp_path / str(verbose), verbose=verbose) as log:
            warnings.warn(f"library says {verbose}", FutureWarning)
            logging.getLogger("optuna.storages").warning(f"optuna line {verbose}")  # passes any level set
            logging.getLogger("elalora_auto.tracking").warning(f"our own warning {verbose}")
        err = capsys.readouterr().err
        text = log.read_text()
        for line in (f"library says {verbose}", f"optuna line {verbose}", f"our own warning {verbose}"):
            assert line in text
        assert f"our own warning {verbose}" in err  # the project's warnings always reach the user
        assert (f"library says {verbose}" in err) is verbose and (f"optuna line {verbose}" in err) is verbose
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with warnings.catch_warnings(record=True) as seen:  # restored afterwards: warnings flow as before
        warnings.simplefilter("always")
        warnings.warn("after", UserWarning)
    assert [str(w.message) for w in seen] == ["after"]
