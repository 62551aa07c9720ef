"""Train one fixed LoRA configuration with transformers' Trainer exactly as search_vs_peers' trainer-hps arm builds
it (same data, tokens, model, head seed and TrainingArguments), outside hyperparameter_search.

Why: it tells whether a Trainer-HPS trial's accuracy belongs to its configuration or to the search loop around it
(state carried between trials). Appends one JSON line per run to bench/results/mnli_trainer_config_probe.jsonl.

    OMP_NUM_THREADS=1 python bench/trainer_probe.py --seed 43 --r 4 --alpha 32 --lr 6.254e-4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_vs_peers as peers  # noqa: E402
from common import ROOT, append_jsonl  # noqa: E402

from elalora_auto.search.plan import plan_study  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "mnli_trainer_config_probe.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=43)
    parser.add_argument("--r", type=int, default=4)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6.254e-4)
    parser.add_argument("--task", choices=list(peers.STUDY_FILES), default="mnli")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/trainer_probe"))
    args = parser.parse_args()
    bench = peers.parse_args(["--tasks", args.task, "--workdir", str(args.workdir)])
    key = {"task": args.task, "arm": "trainer-hps", "seed": args.seed, "trials": 1,
           "steps": peers.planned_steps(bench, args.task), "study": f"probe{args.seed}"}
    plan = plan_study(peers.arm_settings(bench, key))
    hp_space, defaults = peers.lora_hp_space()
    log = peers.TrialLog(args.workdir / "log.jsonl", key, plan.primary_metric)
    trainer = peers.make_trainer(plan, args.workdir, log, hp_space,
                                 dict(defaults, r_init=args.r, lora_alpha=args.alpha))
    trainer.args.learning_rate = args.lr
    start = time.perf_counter()
    trainer.train()
    metrics = trainer.evaluate()
    record = {"loop": "trainer", "method": "lora", "seed": args.seed, "r_init": args.r, "lora_alpha": args.alpha,
              "learning_rate": args.lr, "max_steps": plan.total_steps, "max_grad_norm": trainer.args.max_grad_norm,
              "metrics": {plan.primary_metric: metrics[f"eval_{plan.primary_metric}"]},
              "wall_time_s": round(time.perf_counter() - start, 1), "commit": peers.git_commit()}
    append_jsonl(RESULTS, record)
    print(record, flush=True)


if __name__ == "__main__":
    main()
