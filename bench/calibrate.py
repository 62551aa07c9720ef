"""Calibration of the CPU-sized studies (issue 9.1): what PEFT LoRA and ElaLoRA reach with MiniLM, per task and
learning rate, at a few hundred steps, against the majority-class baseline the search prunes at.

The built-in studies (sst2-minilm, mnli-minilm, mrpc-minilm) take their steps, sample sizes and trial-0 learning
rate from this table. One JSON line per finished run goes to bench/results/calibration.jsonl; a run already there
(same task, method, learning rate, steps, evaluation interval and seed) is skipped, so a cut-short grid resumes.

    OMP_NUM_THREADS=1 python bench/calibrate.py --threads 1           # the default grid, in order
    python bench/calibrate.py --methods "elalora+init=lora" --lrs 1e-3  # a method label with extra params
    python bench/calibrate.py --table                                  # the markdown table from the JSONL

A method label is `lora`, `elalora`, or either followed by `+key=value` items (values parsed as YAML) that are
added to its parameters. ElaLoRA runs use the method's config with r_init 8 and lora_alpha 16, and the schedule
(t_init, t_final, delta_t) of the elalora search space's trial 0, as fractions of the run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GLUE, OUT, RESULTS_DIR, append_jsonl, git_commit, machine_note, read_jsonl  # noqa: E402

RESULTS = RESULTS_DIR / "calibration.jsonl"

# Per task: training sample (None: all rows), evaluation sample (None: the whole dev split), max length.
TASKS: dict[str, dict[str, Any]] = {
    "mnli": {"max_train_samples": 8000, "max_eval_samples": None, "max_length": 128},
    "mrpc": {"max_train_samples": None, "max_eval_samples": None, "max_length": 128},
    "sst2": {"max_train_samples": 4000, "max_eval_samples": None, "max_length": 64},
}
BASE_PARAMS: dict[str, dict[str, Any]] = {
    "lora": {"r_init": 8, "lora_alpha": 16},
    "elalora": {"r_init": 8, "lora_alpha": 16},
}
SCHEDULE_KEYS = ("t_init", "t_final", "delta_t")
# (task, method label, learning rate), most informative first: per task LoRA and ElaLoRA (its default LoRA-like
# init) at 5e-4 and 1e-3, then both at 2e-3 (issue 9 saw LoRA collapse there on MNLI at 400 steps), then the paper
# form (init: paper, e_lr_scale 300), which the studies used until the LoRA-like init became the default.
DEFAULT_GRID: list[tuple[str, str, float]] = [
    *[(task, label, lr) for task in ("mnli", "mrpc", "sst2") for label in ("lora", "elalora+init=lora")
      for lr in (5e-4, 1e-3)],
    *[(task, label, 2e-3) for task in ("sst2", "mrpc", "mnli") for label in ("lora", "elalora+init=lora")],
    *[(task, "elalora+init=paper", lr) for task in ("mnli", "mrpc", "sst2") for lr in (5e-4, 1e-3)],
]


def parse_method(label: str) -> tuple[str, dict[str, Any]]:
    """'elalora+init=lora' -> ('elalora', {r_init: 8, lora_alpha: 16, init: 'lora'})."""
    import yaml

    method, *extras = label.split("+")
    if method not in BASE_PARAMS:
        raise SystemExit(f"method label {label!r}: start with one of {', '.join(BASE_PARAMS)}")
    params = dict(BASE_PARAMS[method])
    for item in extras:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"method label {label!r}: {item!r} is not key=value")
        params[key] = yaml.safe_load(value)
    return method, params


def plan_for(task: str, method: str, steps: int, eval_every: int) -> Any:
    """The search's own plan of this setting: the majority baseline, margin and model type it uses."""
    from elalora_auto.search.plan import plan_study
    from elalora_auto.search.settings import SearchSettings

    cfg = TASKS[task]
    settings = SearchSettings(task=task, model="minilm", method=method, data_dir=str(GLUE), max_steps=steps,
                              eval_every=eval_every, max_length=cfg["max_length"],
                              max_train_samples=cfg["max_train_samples"], max_eval_samples=cfg["max_eval_samples"])
    return plan_study(settings)


def trial0_schedule(plan: Any) -> dict[str, int]:
    """t_init / t_final / delta_t of the space's trial 0, resolved for this run length."""
    import optuna

    fixed = optuna.trial.FixedTrial(plan.space.default_params())
    method_params, _ = plan.space.suggest(fixed, {"total_steps": plan.total_steps,
                                                  "model_type": plan.model_type})
    return {key: method_params[key] for key in SCHEDULE_KEYS if key in method_params}


def run_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["task"], row["method_label"], float(row["lr"]), row["steps"], row["eval_every"], row["seed"])


def run_one(task: str, label: str, lr: float, steps: int, eval_every: int, seed: int) -> dict[str, Any]:
    """One real fine-tune through run_trial; the row holds the eval history and the baseline it must clear."""
    import elalora_auto
    from elalora_auto.spec import DataSettings, TrainingSettings, TrialSpec
    from elalora_auto.trial import run_trial

    method, params = parse_method(label)
    plan = plan_for(task, method, steps, eval_every)
    if method == "elalora":
        params = {**trial0_schedule(plan), **params}
    cfg = TASKS[task]
    spec = TrialSpec(
        task=task, model=plan.model_path, method=method, params=params,
        training=TrainingSettings(learning_rate=lr, max_steps=steps, batch_size=16, eval_every=eval_every,
                                  max_length=cfg["max_length"], seed=seed, device="cpu"),
        data=DataSettings(data_dir=str(GLUE), max_train_samples=cfg["max_train_samples"],
                          max_eval_samples=cfg["max_eval_samples"], cache_dir=str(OUT / "cache")),
    )
    start = time.time()
    result = run_trial(spec, progress=False)
    metric = result.primary_metric
    history = [{"step": e["step"], metric: round(e["metrics"][metric], 4),
                **({"accuracy": round(e["metrics"]["accuracy"], 4)} if metric != "accuracy" else {})}
               for e in result.eval_history]
    losses = [e["loss"] for e in result.train_loss_history]
    return {
        "task": task, "method": method, "method_label": label, "lr": lr, "params": params, "steps": steps,
        "eval_every": eval_every, "seed": seed, "metric": metric, "history": history,
        "final": round(result.primary, 4), "best": max(h[metric] for h in history),
        "majority_baseline": round(plan.baseline, 4), "margin": round(plan.baseline_margin, 4),
        "cleared": result.primary > plan.baseline + plan.baseline_margin,
        "trainable_params": result.trainable_params, "total_rank": sum(result.rank_map.values()),
        "loss_last_50": round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None,
        "wall_time_s": round(time.time() - start, 1), "s_per_step": round(result.train_time_s / steps, 3),
        "train_rows": cfg["max_train_samples"], "max_length": cfg["max_length"],
        "package": str(Path(elalora_auto.__file__).parent), "commit": git_commit(Path(elalora_auto.__file__).parent),
        "machine": machine_note(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def grid(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """The runs to do, in order: the default grid, narrowed (or replaced) by --tasks, --methods and --lrs."""
    if args.methods or args.lrs:
        return [(task, label, lr) for task in args.tasks or list(TASKS) for label in args.methods or ["lora", "elalora"]
                for lr in args.lrs or [5e-4, 1e-3]]
    return [run for run in DEFAULT_GRID if not args.tasks or run[0] in args.tasks]


def table(rows: list[dict[str, Any]]) -> str:
    """Every run (grouped by task, method and steps; best final metric marked), then each group's best lr."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (list(TASKS).index(r["task"]), r["method_label"], r["steps"], r["lr"])):
        groups.setdefault((row["task"], row["method_label"], row["steps"]), []).append(row)
    best = {key: max(group, key=lambda r: r["final"]) for key, group in groups.items()}
    lines = ["| task | method | steps | lr | metric at each eval (step: value) | final | majority (+margin) | "
             "cleared | trainable params | s/step |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, group in groups.items():
        for row in group:
            hist = ", ".join(f"{h['step']}: {h[row['metric']]:.3f}" for h in row["history"])
            mark = " **(best)**" if best[key] is row else ""
            cleared = "yes" if row["cleared"] else "no"
            lines.append(f"| {row['task']} | {row['method_label']} | {row['steps']} | {row['lr']:g}{mark} | "
                         f"{row['metric']} {hist} | {row['final']:.3f} | {row['majority_baseline']:.3f} "
                         f"(+{row['margin']:.3f}) | {cleared} | "
                         f"{row['trainable_params']:,} | {row['s_per_step']:.2f} |")
    lines += ["", "| task | method | steps | best lr | final there | majority (+margin) | every lr tried: final |",
              "|---|---|---|---|---|---|---|"]
    for (task, label, steps), group in groups.items():
        top = best[(task, label, steps)]
        tried = ", ".join(f"{r['lr']:g}: {r['final']:.3f}" + ("" if r["cleared"] else " (not cleared)")
                          for r in group)
        lines.append(f"| {task} | {label} | {steps} | {top['lr']:g} | {top['final']:.3f} | "
                     f"{top['majority_baseline']:.3f} (+{top['margin']:.3f}) | {tried} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the markdown table from the JSONL and exit")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", help="method labels, e.g. lora elalora 'elalora+init=lora'")
    parser.add_argument("--lrs", nargs="+", type=float)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSONL the runs go to (and are read from)")
    parser.add_argument("--max-samples", type=int, help="cap training and evaluation rows (a smoke run: give it "
                        "its own --results, the rows do not say they were capped in their key)")
    args = parser.parse_args()
    if args.table:
        print(table(read_jsonl(args.results)))
        return
    if args.max_samples:
        for cfg in TASKS.values():
            cfg.update(max_train_samples=args.max_samples, max_eval_samples=args.max_samples)
    import torch

    torch.set_num_threads(args.threads)
    done = {run_key(r) for r in read_jsonl(args.results)}
    todo = grid(args)
    for i, (task, label, lr) in enumerate(todo, 1):
        key = (task, label, float(lr), args.steps, args.eval_every, args.seed)
        if key in done:
            print(f"[{i}/{len(todo)}] skip {task} {label} lr={lr:g} (already in {args.results.name})", flush=True)
            continue
        print(f"[{i}/{len(todo)}] {time.strftime('%H:%M:%S')} {task} {label} lr={lr:g} ...", flush=True)
        row = run_one(task, label, lr, args.steps, args.eval_every, args.seed)
        append_jsonl(args.results, row)
        print(f"    {row['metric']} {[h[row['metric']] for h in row['history']]} final {row['final']} "
              f"(majority {row['majority_baseline']}, cleared {row['cleared']}) {row['wall_time_s']} s, "
              f"{row['s_per_step']} s/step", flush=True)


if __name__ == "__main__":
    main()
