"""The bench toolkit: what every bench/ script shares, so each script holds only its own question.

One output convention: rows that must survive a cut-short run are JSON lines under bench/results/ (committed; a
re-run skips the rows already there), scratch output (caches, journals, plots, `NAME.json` dumps) goes under
bench/out/ (ignored; ELALORA_BENCH_OUT moves it, as the smoke tests do). A row notes the machine as the device
reports it, and the commit where its file's format has a place for one. The modules:

    results.py      paths, JSON-lines I/O with resume, scratch JSON, BENCHMARKS.md sections
    notes.py        the commit of a checkout, the machine (GPU or CPU model, cores, load), library versions and the
                    kind of machine whose kernels round a run's floats
    training.py     MiniLM, the SST-2 reference setting, the common command-line options
    studies.py      a search arm on a built-in study file (settings, listener, rows) and its command line
    trainer_hps.py  transformers' Trainer over PEFT LoRA as the peers' search runs it
    fronts.py       (accuracy, size) fronts: hypervolume, best at a budget, dominance, the front plot
    reruns.py       paired re-runs of one ElaLoRA study's configurations with a setting changed
    pairing.py      paired statistics: per-seed differences' t-interval, the detectable difference, same-draw pairs
    arms.py         paired.py's arm specs on its command line: search options, pools, per-arm trials
    cli_harness.py  the real CLI as processes under signals, a throw-away PostgreSQL, a storage's counts

Scripts import it as `common` (bench/ is the script's folder, so it is on sys.path).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from common.notes import command_line, git_commit, machine_note, versions  # noqa: E402
from common.results import (  # noqa: E402
    GLUE, OUT, RESULTS_DIR, ROOT, append_jsonl, append_section, publish, read_jsonl, write_json,
)
from common.training import add_common_args, minilm_path, sst2_spec  # noqa: E402

__all__ = ["GLUE", "OUT", "RESULTS_DIR", "ROOT", "add_common_args", "append_jsonl", "append_section", "command_line",
           "git_commit", "machine_note", "minilm_path", "publish", "read_jsonl", "sst2_spec", "versions",
           "write_json"]
