"""Learning speed of the SVD form: PEFT LoRA r=4 vs ElaLoRA with rounds off (b=0) for several e_lr_scale values.

ElaLoRA starts from E = 0, so E (r numbers per matrix) is its only path to a non-zero Delta W; at LoRA's learning
rate it learns far slower (ELALORA.md: 50.9% on SST-2, chance). e_lr_scale s uses E_eff = s * E, an s-times
larger Adam step for E alone. With b=0 no rank moves, so this isolates the learning speed from the allocation.

    python bench/learning_speed.py --scales 1 10 100 --orth-reg-weights 0.1 0 --seeds 42 43 --append-to BENCHMARKS.md
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


def runs(scales: list[float], orth_weights: list[float]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, params): LoRA first, then ElaLoRA per orthogonality weight and scale, all rank 4, alpha 8."""
    out = [("LoRA r=4", "lora", {"r_init": 4, "lora_alpha": 8})]
    for orth in orth_weights:
        for scale in scales:
            out.append((f"ElaLoRA e_lr_scale={scale:g}, orth_reg_weight={orth:g}", "elalora",
                        {"r_init": 4, "lora_alpha": 8, "b": 0, "e_lr_scale": float(scale),
                         "orth_reg_weight": float(orth)}))
    return out


def _mean_loss(group: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in group if r[key] is not None]
    return f"{statistics.mean(values):.3f}" if values else "-"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | seeds | dev accuracy % (per seed) | mean | train loss, 1st / 2nd half | mean abs(E_eff) | "
             "s/step |", "|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys(r["label"] for r in rows):
        group = [r for r in rows if r["label"] == label]
        acc = [100 * r["accuracy"] for r in group]
        e_eff = [r["mean_abs_e_eff"] for r in group if "mean_abs_e_eff" in r]
        lines.append(
            f"| {label} | {', '.join(str(r['seed']) for r in group)} | {' / '.join(f'{a:.1f}' for a in acc)} | "
            f"{statistics.mean(acc):.1f} | {_mean_loss(group, 'loss_first_half')} / "
            f"{_mean_loss(group, 'loss_second_half')} | "
            f"{f'{statistics.mean(e_eff):.4f}' if e_eff else '-'} | "
            f"{statistics.median(r['s_per_step'] for r in group):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", type=float, default=[1, 10, 100, 300])
    parser.add_argument("--orth-reg-weights", nargs="+", type=float, default=[0.1],
                        help="ElaLoRA's orthogonality regulariser weights to cross with --scales (0.1 = default)")
    add_sst2_args(parser, seeds=[42, 43])
    add_common_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = machine_note()
    rows = sst2_grid("learning_speed", args, before, runs(args.scales, args.orth_reg_weights))
    publish("learning_speed", "Learning speed: e_lr_scale (bench/learning_speed.py)", args, before, {"rows": rows},
            table(rows), (
        "SST-2, MiniLM-L6, {args.max_train_samples:,} sampled training sentences, full dev (872), length "
        f"64, batch 16, {args.steps} steps, lr 5e-4, AdamW, linear decay, 10% warm-up; rank 4 on the 37 default "
        "BERT matrices (query/key/value/every dense incl. the pooler), alpha 8, classifier trained in full. "
        "ElaLoRA with b=0: importance is tracked but no round moves rank, so only the E parametrisation differs "
        "from LoRA. Train loss = mean of the losses logged every 10 steps over each half of the run (for ElaLoRA it "
        "includes orth_reg_weight x the orthogonality penalty, so compare ElaLoRA rows by accuracy). "
        "mean abs(E_eff) = mean over all components of |e_lr_scale * E| at the end."
    ))


if __name__ == "__main__":
    main()
