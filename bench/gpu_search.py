"""Part (c) of bench/gpu_check.py: a TRIALS-trial search through the CLI as a user runs it, two worker
processes sharing one device, then the exact trial count and distinct trial numbers read back from its journal,
and (with tracking) one MLflow child run per trial."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

import torch  # noqa: E402

STUDY = "gpu-check"
TRIALS = 4


def search_phases(search: list[str], worker: list[str]) -> list[list[list[str]]]:
    """The processes that run the study, in phases: those of one phase side by side, phase after phase.

    Today `search --create-only` makes the study, then two `worker` processes share it. Once
    `search --workers N` exists this is the one line to change: `return [[search + ["--workers", "2"]]]`.
    """
    return [[search + ["--create-only"]], [worker, worker]]


def run_phases(phases: list[list[list[str]]], logdir: Path, timeout_s: int) -> list[int]:
    """Every process's exit code (-9: killed at the timeout), each logging to logdir/<n>.log; a phase with a
    failed process ends the run."""
    deadline = time.monotonic() + timeout_s
    codes: list[int] = []
    for phase in phases:
        procs = []
        for command in phase:
            log = open(logdir / f"{len(codes) + len(procs)}.log", "w")
            procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
        for proc, log in procs:
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
            log.close()
        if any(codes):
            break
    return codes


def search_check(steps: int, timeout_s: int, tracking: bool, device: torch.device, data_dir: Path, workdir: Path,
                 smoke_config: Path | None) -> dict[str, Any]:
    """The study through the CLI as a user runs it, then the exact count read back from its journal file."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = workdir / "optuna-journal.log"
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}" if tracking else None
    cli = [sys.executable, "-m", "elalora_auto.cli"]
    where = ["--study", STUDY, "--storage", str(storage), "--workdir", str(workdir), "--device", device.type,
             "--quiet", *(["--tracking-uri", tracking_uri] if tracking_uri else ["--no-tracking"])]
    config = ["--config", str(smoke_config)] if smoke_config else ["--config", "sst2-minilm", "--data-dir",
                                                                     str(data_dir)]
    search = [*cli, "search", *config, "--trials", str(TRIALS), "--max-steps", str(steps), *where]
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    codes = run_phases(search_phases(search, [*cli, "worker", *where]), logs, timeout_s)
    elapsed = time.perf_counter() - start
    for n, code in enumerate(codes):
        log = (logs / f"{n}.log").read_text()
        if code:
            print(f"(c) process {n} exited {code}; its log:\n{log[-3000:]}", flush=True)
        for line in [line for line in log.splitlines() if "MLflow tracking skipped" in line][:3]:
            print(f"(c) process {n}: {line}", flush=True)
    study = optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(storage))))
    trials = study.get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    workers = Counter(str(t.user_attrs.get("worker", "?")) for t in trials)
    return {
        "exit_codes": codes, "elapsed_s": elapsed, "numbers": numbers,
        "exact": numbers == list(range(TRIALS)) and not any(codes),
        "mlflow_trial_runs": None if tracking_uri is None else mlflow_trial_runs(tracking_uri),
        # the tracker swallows its failures by design (a warning per lost event): count them in the logs
        "tracking_skipped": sum(path.read_text().count("MLflow tracking skipped") for path in logs.glob("*.log")),
        "states": dict(Counter(t.state.name for t in trials)), "workers": dict(workers),
        "trials": [{"number": t.number, "state": t.state.name, "worker": t.user_attrs.get("worker"),
                    "primary": t.user_attrs.get("primary"), "trainable_params": t.user_attrs.get("trainable_params"),
                    "wall_time_s": t.user_attrs.get("wall_time_s"),
                    "reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason")}
                   for t in sorted(trials, key=lambda t: t.number)],
    }


def mlflow_trial_runs(tracking_uri: str) -> list[int]:
    """The trial numbers of the study's MLflow child runs (one per trial expected), as the tracker tags them."""
    from mlflow import MlflowClient

    from elalora_auto.tracking import TAG_ROLE, TAG_STUDY, TAG_TRIAL

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(STUDY)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{TAG_STUDY}` = '{STUDY}' and tags.`{TAG_ROLE}` = 'trial'")
    return sorted(int(run.data.tags[TAG_TRIAL]) for run in runs)


def count_line(result: dict[str, Any]) -> str:
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result["states"].items()))
    shares = ", ".join(f"{worker} ran {n}" for worker, n in sorted(result["workers"].items()))
    head = (f"search: exactly {TRIALS} trials, numbers {result['numbers']} distinct" if result["exact"] else
            f"search: WRONG trial count: numbers {result['numbers']}, expected 0..{TRIALS - 1}; exit codes "
            f"{result['exit_codes']}")
    runs, skipped = result["mlflow_trial_runs"], result["tracking_skipped"]
    tracked = "MLflow off" if runs is None else (
        f"MLflow child runs for trials {runs}"
        + ("" if runs == list(range(TRIALS)) else f" (MISSED: expected one per trial 0..{TRIALS - 1})")
        + (f", {skipped} tracking events skipped (MISSED; see the workers' warnings)" if skipped else ""))
    return f"{head} ({states}; {len(result['workers'])} workers: {shares}; {tracked}; {result['elapsed_s']:.0f} s)"


def search_table(result: dict[str, Any]) -> str:
    lines = ["| trial | state | worker | metric | trainable params | wall s | reason |",
             "|---|---|---|---|---|---|---|"]
    for t in result["trials"]:
        metric = "-" if t["primary"] is None else f"{t['primary']:.4f}"
        params = "-" if t["trainable_params"] is None else f"{t['trainable_params']:,}"
        lines.append(f"| {t['number']} | {t['state'].lower()} | {t['worker']} | {metric} | {params} | "
                     f"{t['wall_time_s'] or '-'} | {t['reason'] or ''} |")
    return "\n".join(lines + ["", count_line(result)])
