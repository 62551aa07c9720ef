"""Replay a transformers.Trainer run in elalora-auto's own training loop (issue 27): a standing check that the
two loops train alike, so a difference between a Trainer arm and a project arm is the random stream, not the loop.

Both arms train PEFT LoRA at the lora space's defaults (r 8, alpha 16, dropout 0.05, the model's default targets
and fully trained head) on the same rows, batch size, steps, evaluation interval and head initialisation, with the
Trainer's settings: gradient clipping at its max_grad_norm (1.0), AdamW as the Trainer builds it (fused where torch
has it), its linear schedule with warm-up, and its use of the global random generator (`training.trainer_rng`: the
length-grouped shuffle and every DataLoader's base seed come from it, so each evaluation consumes one draw). The
Trainer arm is bench/search_vs_peers.py's trainer-hps arm (common/trainer_hps.py's `make_trainer`) outside the search.
The project arm is the real `setup_trial` + `train_loop`; only its optimizer and schedule are swapped for the ones
the Trainer builds. Exit 0 only when every per-step training loss matches to --tol; the last line printed is the
largest difference. (The tasks here have one evaluation split: with several, the loop would draw once per split
and the Trainer arm, which evaluates the primary split, once.)

    OMP_NUM_THREADS=1 python bench/loop_replay.py --steps 50           # MiniLM on the MNLI subset (GLUE folder)
    python bench/loop_replay.py --model tiny --steps 20                # tiny BERT, synthetic task: a smoke test
    python bench/loop_replay.py --model tiny --plant learning_rate=6e-4  # a planted difference: must exit 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GLUE, OUT, machine_note, versions  # noqa: E402
from common.studies import SMOKE_TASK, STUDY_FILES, arm_args, arm_settings  # noqa: E402
from common.trainer_hps import TrialLog, lora_hp_space, make_trainer  # noqa: E402

WORKDIR = OUT / "loop_replay"


def replay_plan(args: argparse.Namespace) -> Any:
    """The study plan both arms read (data, model, steps, batch, evaluation interval): the lora arm's settings of
    search_vs_peers, for the MNLI subset on MiniLM or (--model tiny) the demo's tiny BERT and synthetic task."""
    import dataclasses

    from elalora_auto.search.plan import plan_study

    task = SMOKE_TASK if args.model == "tiny" else args.task
    key = {"task": task, "arm": "trainer-hps", "seed": args.seed, "trials": 1, "steps": args.steps,
           "study": f"replay{args.seed}"}
    plan = plan_study(arm_settings(arm_args(args.workdir, args.data_dir, args.steps), key))
    return dataclasses.replace(plan, eval_every=args.eval_every) if args.eval_every else plan


class LossTap:
    """Every training forward's loss of the Trainer's model, in order (its logs round losses to 4 digits)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        self.losses: list[float] = []
        tap = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
                model.register_forward_hook(tap.record)

        self.callback = Callback()

    def record(self, module: Any, inputs: Any, output: Any) -> None:
        if module.training and getattr(output, "loss", None) is not None:
            self.losses.append(float(output.loss.detach()))


def trainer_arm(plan: Any, workdir: Path, learning_rate: float) -> tuple[list[float], float | None, Any]:
    """(per-step losses, final metric, the Trainer) of the trainer-hps arm's Trainer at lora.yaml's defaults."""
    hp_space, defaults = lora_hp_space()
    log = TrialLog(workdir / "trainer_log.jsonl", {}, plan.primary_metric)
    trainer = make_trainer(plan, workdir, log, hp_space, defaults)
    trainer.args.learning_rate = learning_rate
    tap = LossTap()
    trainer.add_callback(tap.callback)
    trainer.train()
    return tap.losses, log.value, trainer


def trial0_spec(plan: Any) -> Any:
    """The lora space's trial 0 as the study would run it (the Trainer arm takes its learning rate)."""
    import optuna

    return plan.trial_spec(optuna.trial.FixedTrial(plan.space.default_params()))


def project_spec(spec: Any, trainer_args: Any, plant: Sequence[str]) -> Any:
    """Trial 0 with the Trainer's clipping and random stream, a loss logged every step, and the planted
    overrides (none for the real check)."""
    spec.training.max_grad_norm = trainer_args.max_grad_norm
    spec.training.trainer_rng = True
    spec.training.log_every = 1
    return spec.apply_overrides(plant)


def project_arm(spec: Any, trainer: Any) -> tuple[list[float], float | None]:
    """(per-step losses, final metric) of elalora-auto's loop, with the optimizer and schedule the Trainer builds
    (its `create_optimizer` / `create_scheduler` on the loop's model) at the loop's learning rate."""
    from elalora_auto.trial import setup_trial, train_loop

    setup = setup_trial(spec)
    trainer.optimizer, trainer.lr_scheduler = None, None
    setup.optimizer = trainer.create_optimizer(setup.adapter.model)
    for group in setup.optimizer.param_groups:
        group["lr"] = spec.training.learning_rate
    setup.scheduler = trainer.create_scheduler(setup.total_steps, setup.optimizer)
    out = train_loop(spec, setup, None, [], progress=False)
    return [entry["loss"] for entry in out.loss_history], out.metrics.get(setup.primary_key)


def largest_difference(trainer: Sequence[float], loop: Sequence[float]) -> float:
    """The largest per-step |difference|; infinite when the arms took a different number of steps."""
    if len(trainer) != len(loop) or not trainer:
        return float("inf")
    return max(abs(a - b) for a, b in zip(trainer, loop))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps of each arm")
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm",
                        help="minilm: MiniLM-L6 on --task; tiny: elalora_auto.tiny on the demo's synthetic task")
    parser.add_argument("--task", choices=list(STUDY_FILES), default="mnli")
    parser.add_argument("--seed", type=int, default=43)
    parser.add_argument("--eval-every", type=int, default=None, help="default: the study file's")
    parser.add_argument("--tol", type=float, default=1e-6, help="largest per-step loss difference accepted")
    parser.add_argument("--plant", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrialSpec override for the project arm only (a planted difference, e.g. "
                             "learning_rate=6e-4): the check must then fail")
    parser.add_argument("--data-dir", type=Path, default=GLUE)
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.steps < 4:
        parser.error("--steps must be 4 or more (a schedule needs them)")
    if args.model == "minilm" and not args.data_dir.is_dir():
        parser.error(f"GLUE data not found at {args.data_dir}; pass --data-dir or use --model tiny")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    before, start = machine_note(), time.perf_counter()
    plan = replay_plan(args)
    spec = trial0_spec(plan)
    trainer_losses, trainer_metric, trainer = trainer_arm(plan, Path(plan.settings.workdir),
                                                          spec.training.learning_rate)
    trainer_args = trainer.args
    spec = project_spec(spec, trainer_args, args.plant)
    loop_losses, loop_metric = project_arm(spec, trainer)
    worst = largest_difference(trainer_losses, loop_losses)
    for step, (a, b) in enumerate(zip(trainer_losses, loop_losses), 1):
        if abs(a - b) > args.tol:
            print(f"first step over {args.tol:g}: {step} (Trainer {a:.8f}, loop {b:.8f})")
            break
    print(f"{plan.task.name} on {args.model}, seed {args.seed}, {plan.total_steps} steps, "
          f"evaluation every {plan.eval_every}; optimizer {trainer_args.optim}, clipping {trainer_args.max_grad_norm}"
          f"{'; planted ' + ' '.join(args.plant) if args.plant else ''}")
    print(f"steps: Trainer {len(trainer_losses)}, loop {len(loop_losses)}; final {plan.primary_metric}: Trainer "
          f"{trainer_metric}, loop {loop_metric}; {time.perf_counter() - start:.0f} s; "
          + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"machine: {before}")
    print(f"largest difference: {worst:.3e}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
