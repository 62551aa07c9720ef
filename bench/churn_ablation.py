"""Churn on real data: ElaLoRA rounds on SST-2/MiniLM with and without the churn fixes (grace_rounds, new_importance).

Churn = prune and grow events that cancel out (a component grown at one round and pruned at the next). Reported
per variant: prune events, grow events, the rank actually moved (net), events / net, and dev accuracy.

    python bench/churn_ablation.py --variants paper fix --seeds 42 --append-to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, add_sst2_args, machine_note, publish, sst2_grid  # noqa: E402

import torch  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"grace_rounds": 0, "new_importance": "zero"},
    "fix": {"grace_rounds": 2, "new_importance": "matrix_mean"},
    "grace-only": {"grace_rounds": 2, "new_importance": "zero"},
    "mean-only": {"grace_rounds": 0, "new_importance": "matrix_mean"},
}


def schedule(args: argparse.Namespace) -> dict[str, Any]:
    return {"r_init": 4, "lora_alpha": 8, "b": args.b, "k": args.k, "t_init": args.t_init, "t_final": args.t_final,
            "delta_t": args.delta_t, "e_lr_scale": args.e_lr_scale, "orth_reg_weight": args.orth_reg_weight}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | grace_rounds | new_importance | seed | rounds | prune events | grow events | net rank moved "
             "| events / net | dev accuracy % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        churn, knobs = row["churn"], VARIANTS[row["label"]]
        net = churn["net_rank_moved"]
        ratio = f"{churn['prune_events'] / net:.1f}" if net else "inf"
        lines.append(f"| {row['label']} | {knobs['grace_rounds']} | {knobs['new_importance']} | {row['seed']} | "
                     f"{churn['rounds']} | {churn['prune_events']} | {churn['grow_events']} | {net} | {ratio} | "
                     f"{100 * row['accuracy']:.1f} |")
    if len({r["seed"] for r in rows}) > 1:
        lines += ["", "| variant | mean prune events | mean net rank moved | mean dev accuracy % |",
                  "|---|---|---|---|"]
        for label in dict.fromkeys(r["label"] for r in rows):
            group = [r for r in rows if r["label"] == label]
            lines.append(f"| {label} | {statistics.mean(r['churn']['prune_events'] for r in group):.1f} | "
                         f"{statistics.mean(r['churn']['net_rank_moved'] for r in group):.1f} | "
                         f"{statistics.mean(100 * r['accuracy'] for r in group):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["paper", "fix"], choices=list(VARIANTS))
    add_sst2_args(parser, seeds=[42])
    parser.add_argument("--b", type=int, default=4)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--t-init", type=int, default=20)
    parser.add_argument("--t-final", type=int, default=40)
    parser.add_argument("--delta-t", type=int, default=10)
    parser.add_argument("--e-lr-scale", type=float, default=300.0)
    parser.add_argument("--orth-reg-weight", type=float, default=0.1)
    add_common_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = machine_note()
    rows = sst2_grid("churn_ablation", args, before,
                     [(label, "elalora", {**schedule(args), **VARIANTS[label]}) for label in args.variants])
    publish("churn_ablation", "Churn ablation on real data (bench/churn_ablation.py)", args, before, {"rows": rows},
            table(rows), (
        f"SST-2, MiniLM-L6, the learning-speed setting ({args.max_train_samples:,} sampled training "
        f"sentences, full dev, length 64, batch 16, {args.steps} steps, lr 5e-4, 10% warm-up, 37 matrices), "
        f"ElaLoRA r_init 4, b {args.b}, k {args.k}, t_init {args.t_init}, t_final {args.t_final}, delta_t "
        f"{args.delta_t} (cubic decay of b), e_lr_scale {args.e_lr_scale:g}, orth_reg_weight {args.orth_reg_weight:g}. "
        "Net rank moved = sum over matrices of "
        "|final rank - initial rank| / 2; events / net = prune events per unit of rank that really moved "
        "(1.0 = no churn)."
    ))


if __name__ == "__main__":
    main()
