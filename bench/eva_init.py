"""What EVA's initialisation costs a trial: setup seconds of an EVA trial against a LoRA trial of the same spec
(the difference is EVA's SVD, run in the adapter's `prepare` before the first optimizer step), the forward passes
it took until every layer's components settled, and how far it moved the ranks.

Reference setting (bench/common/training.py, sst2_spec): SST-2, MiniLM-L6, batch 16, length 64, default BERT targets.

    python bench/eva_init.py --configs 8:2 16:3 --batches 64 --append-to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, machine_note, publish, sst2_spec  # noqa: E402

import torch  # noqa: E402


def setup_seconds(method: str, params: dict[str, Any]) -> tuple[float, int, dict[str, int]]:
    """(seconds in setup_trial, forward passes during it, the rank map it ends with) for one method."""
    from elalora_auto.adapters import build_adapter
    from elalora_auto.trial import setup_trial

    passes = [0]

    def build_and_count(*args: Any) -> Any:
        adapter = build_adapter(*args)
        adapter.model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
        return adapter

    start = time.perf_counter()
    setup = setup_trial(sst2_spec(method, params, seed=42, steps=300), adapter_factory=build_and_count)
    return time.perf_counter() - start, passes[0], setup.adapter.rank_map()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["8:2", "16:3"], help="r_init:rho pairs")
    parser.add_argument("--batches", type=int, default=64, help="eva_batches")
    add_common_args(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = machine_note()
    rows, lines = [], ["| r_init | rho | LoRA setup s | EVA setup s | EVA forward passes | rank min / max | total rank |",
                       "|---|---|---|---|---|---|---|"]
    for config in args.configs:
        r, rho = int(config.split(":")[0]), float(config.split(":")[1])
        setup_seconds("lora", {"r_init": r})  # warm the caches (data, tokenised splits, base model) for both
        lora_s = setup_seconds("lora", {"r_init": r})[0]
        eva_s, passes, ranks = setup_seconds("eva", {"r_init": r, "rho": rho, "eva_batches": args.batches})
        rows.append({"r_init": r, "rho": rho, "lora_setup_s": lora_s, "eva_setup_s": eva_s, "passes": passes,
                     "rank_map": ranks})
        lines.append(f"| {r} | {rho} | {lora_s:.1f} | {eva_s:.1f} | {passes} | {min(ranks.values())} / "
                     f"{max(ranks.values())} | {sum(ranks.values())} (LoRA: {r * len(ranks)}) |")
    publish("eva_init", "EVA initialisation cost (bench/eva_init.py)", args, before, {"rows": rows},
            "\n".join(lines), f"eva_batches {args.batches}, tau 0.99 (PEFT's default); {args.threads} torch threads.")


if __name__ == "__main__":
    main()
