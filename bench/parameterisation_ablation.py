"""Which ElaLoRA parameterisation learns fastest and most stably: the paper form (E = 0) with e_lr_scale 1 and 300,
and the LoRA-like form (B = 0, E_eff = 1), 3 seeds x 2 learning rates on SST-2 with MiniLM, rounds on.

Setting: 4,000 sampled SST-2 training sentences, full dev (872), max length 64, batch 16, 200 optimizer steps,
dev accuracy every 50 steps, AdamW with linear decay and 10% warm-up, r_init 4, alpha 8, b 4, k 2, the schedule
from the run length (adapters.schedule_defaults), default BERT targets (37 matrices), classifier trained in full.
One JSON line per run is appended to bench/results/parameterisation_ablation.jsonl; a run already there (same
variant, lr, seed, steps and model) is skipped, so an interrupted ablation resumes where it stopped.

    python bench/parameterisation_ablation.py                  # the full ablation (18 runs, ~1-2 h on 2 CPU cores)
    python bench/parameterisation_ablation.py --variants lora peft-lora lora-params --lrs 5e-4   # optional extras
    python bench/parameterisation_ablation.py --smoke          # tiny local model and data, a few steps, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GLUE, OUT, RESULTS_DIR, ROOT, append_jsonl, read_jsonl  # noqa: E402

RESULTS = RESULTS_DIR / "parameterisation_ablation.jsonl"
SHAPE = {"r_init": 4, "lora_alpha": 8}
# (method, method params); ElaLoRA rounds use the method defaults b 4, k 2 and the run-length schedule.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "paper-s1": ("elalora", {**SHAPE, "init": "paper", "e_lr_scale": 1.0}),
    "paper-s300": ("elalora", {**SHAPE, "init": "paper", "e_lr_scale": 300.0}),
    "lora": ("elalora", {**SHAPE, "init": "lora"}),
    "lora-params": ("elalora", {**SHAPE, "init": "lora", "budget": "params"}),  # optional: the parameter budget
    "peft-lora": ("lora", dict(SHAPE)),  # reference: PEFT LoRA r=4, alpha 8
}
DEFAULT_VARIANTS = ["paper-s1", "paper-s300", "lora"]


def run_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["variant"], row["lr"], row["seed"], row["steps"], row["model"])


def smoke_setting(folder: Path) -> tuple[str, dict[str, Any]]:
    """A tiny local BERT and the demo's synthetic CSV task (no GLUE, no network)."""
    from elalora_auto.demo import demo_words, write_dataset
    from elalora_auto.tiny import build_tiny_bert

    model = build_tiny_bert(folder / "model", demo_words(), num_labels=2, hidden_size=32, num_layers=2, seed=0)
    train, evaluation = write_dataset(folder / "data", n_train=160, n_eval=64)
    custom = {"train_file": str(train), "eval_file": str(evaluation), "text_columns": ["text"], "label_column": "label"}
    return str(model), custom


def spec_for(args: argparse.Namespace, variant: str, lr: float, seed: int, model: str,
             custom: dict[str, Any] | None) -> Any:
    from elalora_auto.spec import DataSettings, TrainingSettings, TrialSpec

    method, params = VARIANTS[variant]
    training = TrainingSettings(learning_rate=lr, max_steps=args.steps, batch_size=args.batch_size,
                                max_length=args.max_length, warmup_ratio=0.1, eval_every=args.eval_every,
                                seed=seed, device=args.device)
    if custom is not None:
        return TrialSpec(task="keyword-sentiment", model=model, method=method, params=dict(params),
                         training=training, custom=custom)
    data = DataSettings(data_dir=str(args.data_dir), max_train_samples=args.train_samples,
                        cache_dir=str(OUT / "cache"))
    return TrialSpec(task="sst2", model=model, method=method, params=dict(params), training=training, data=data)


def run_one(spec: Any, variant: str, lr: float, seed: int, model_label: str) -> dict[str, Any]:
    from elalora_auto.trial import run_trial

    row: dict[str, Any] = {"variant": variant, "method": spec.method, "params": spec.params, "lr": lr, "seed": seed,
                           "steps": spec.training.max_steps, "model": model_label,
                           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        result = run_trial(spec, progress=False)
    except Exception as exc:  # a diverged run (non-finite loss) is a result of the ablation, not a crash of it
        return {**row, "status": "FAILED", "error": f"{type(exc).__name__}: {exc}"}
    curve = [{"step": e["step"], "metric": e["metrics"][result.primary_metric]} for e in result.eval_history]
    return {**row, "status": result.state.name, "metric": result.primary_metric, "final": result.primary,
            "curve": curve, "trainable_params": result.trainable_params, "total_rank": sum(result.rank_map.values()),
            "rounds": len(result.rank_history), "train_time_s": result.train_time_s,
            "loss_last": result.train_loss_history[-1]["loss"] if result.train_loss_history else None}


def summary(rows: list[dict[str, Any]]) -> str:
    """Mean (min over seeds) of the metric at every eval step, per variant and lr."""
    steps = sorted({point["step"] for row in rows for point in row.get("curve", [])})
    lines = ["| variant | lr | seeds | " + " | ".join(f"step {s}" for s in steps) + " | final trainable params |",
             "|---|---|---|" + "---|" * len(steps) + "---|"]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["lr"]), []).append(row)
    for (variant, lr), group in groups.items():
        complete = [r for r in group if r["status"] == "COMPLETE"]
        cells = []
        for step in steps:
            values = [p["metric"] for r in complete for p in r["curve"] if p["step"] == step]
            cells.append(f"{100 * statistics.mean(values):.1f} ({100 * min(values):.1f})" if values else "-")
        params = statistics.mean(r["trainable_params"] for r in complete) if complete else float("nan")
        failed = len(group) - len(complete)
        lines.append(f"| {variant} | {lr:g} | {len(complete)}{f' +{failed} failed' if failed else ''} | "
                     + " | ".join(cells) + f" | {params:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--lrs", nargs="+", type=float, default=[5e-4, 1e-3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--data-dir", type=Path, default=GLUE)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"JSON lines file, appended and resumed (default {RESULTS.relative_to(ROOT)}; "
                        "with --smoke a temporary file)")
    parser.add_argument("--smoke", action="store_true", help="tiny local model and synthetic data, 6 steps, 1 seed")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        custom = None
        model = model_label = "minilm"
        if args.smoke:
            args.steps, args.eval_every, args.seeds, args.max_length = 6, 3, args.seeds[:1], 32
            args.results = args.results or Path(scratch) / "smoke.jsonl"
            model, custom = smoke_setting(Path(scratch))
            model_label = "tiny-bert"
        elif not args.data_dir.is_dir():
            sys.exit(f"GLUE data not found at {args.data_dir}; pass --data-dir DIR (or --smoke)")
        args.results = args.results or RESULTS
        done = {run_key(row) for row in read_jsonl(args.results)}  # a diverged (FAILED) run is a result too
        # Seed-major order: a cut-short ablation still has every variant at the first seeds.
        for seed in args.seeds:
            for lr in args.lrs:
                for variant in args.variants:
                    key = (variant, lr, seed, args.steps, model_label)
                    if key in done:
                        print(f"skip {key} (already in {args.results})", flush=True)
                        continue
                    row = run_one(spec_for(args, variant, lr, seed, model, custom), variant, lr, seed, model_label)
                    append_jsonl(args.results, row)
                    print(json.dumps({k: row.get(k) for k in ("variant", "lr", "seed", "status", "final")}),
                          flush=True)
        rows = [row for row in read_jsonl(args.results)
                if row["steps"] == args.steps and row["model"] == model_label and row["variant"] in args.variants]
        print(f"\n{args.results}: dev metric % as mean over seeds (min over seeds)\n")
        print(summary(rows))


if __name__ == "__main__":
    main()
