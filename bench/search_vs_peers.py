"""Search vs peers (issue 9.5): elalora-auto's own searches (ElaLoRA, LoRA, AdaLoRA) against transformers'
`Trainer.hyperparameter_search` over PEFT LoRA, at the same trial budget and optimizer steps per trial.

Per task (SST-2, the MNLI subset; MiniLM) and seed, each arm is one whole study of `--trials` trials. The
elalora-auto arms are `run_search` on the built-in study file (sst2-minilm, mnli-minilm) with the method's
built-in space and no pruning (`--pruning-json`), so every trial runs the study file's steps. The `trainer-hps`
arm is the stock route: a `model_init` building MiniLM + a PEFT LoraConfig, an Optuna `hp_space` over r,
lora_alpha and learning_rate with lora.yaml's ranges, eval accuracy as its single objective, on the same
tokenised rows, batch size, length, steps, linear schedule with 10% warm-up and seed. Its Optuna gets no pruner
and no enqueued trial 0 (the elalora-auto arms enqueue their space's defaults, as `search` does).

Results: one JSON line per finished trial and per finished study in bench/results/search_vs_peers.jsonl; a study
already there is skipped and a cut-short one resumes from its Optuna journal under bench/out/search_vs_peers/.

    OMP_NUM_THREADS=1 python bench/search_vs_peers.py                       # 2 tasks x 4 arms x 2 seeds x 12 trials
    python bench/search_vs_peers.py --table                                # the report from the JSONL
    python bench/search_vs_peers.py --markdown                             # the same as a BENCHMARKS.md section
    python bench/search_vs_peers.py --smoke                                # tiny model, synthetic task, ~1 min
    python bench/search_vs_peers.py --arms elalora --space elalora=bench/spaces/elalora-lean.yaml \
        --results bench/results/search_vs_peers_space_lean.jsonl --workdir bench/out/search_vs_peers_space_lean
                                                                  # an experiment: another space for one arm

The report per task: hypervolume of each study's (accuracy, trainable parameters) front against one reference
(majority-class accuracy, 1.1 x the largest size any arm reached), best accuracy at <= P parameters for three
budgets (the 25/50/75% quantiles of all arms' sizes, or `--budgets`), steps and wall time; then whether
ElaLoRA's front dominates the others per seed, and ElaLoRA's margin at each budget over the better of LoRA and
AdaLoRA (target: +1 point). A front plot per task goes to bench/out/search_vs_peers_TASK.png.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GLUE, OUT, ROOT, append_jsonl, command_line, machine_note, read_jsonl  # noqa: E402

ARMS = ("elalora", "lora", "adalora", "trainer-hps")
PROJECT_ARMS = ARMS[:3]  # the arms that are elalora-auto searches (and so take a --space)
STUDY_FILES = {"sst2": "sst2-minilm", "mnli": "mnli-minilm"}
SMOKE_TASK, SMOKE_FILE, SMOKE_TRIALS, SMOKE_STEPS = "smoke", "demo", 2, 20
RESULTS = ROOT / "bench" / "results" / "search_vs_peers.jsonl"
SMOKE_RESULTS = OUT / "search_vs_peers_smoke.jsonl"
WORKDIR = OUT / "search_vs_peers"
TRAINER_HPS = ("r_init", "lora_alpha", "learning_rate")  # lora.yaml's names: PEFT's r, lora_alpha, learning rate
GOAL_POINTS = 1.0
Record = dict[str, Any]
# transformers 5 warns on every PEFT model built (a deprecated name PEFT still calls): one line per trial of noise
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# -- results file ---------------------------------------------------------------------------------------------
def study_key(record: Record) -> tuple[Any, ...]:
    """What makes two studies the same experiment: a study with other steps or another budget is another one."""
    return record["task"], record["arm"], record["seed"], record["trials"], record["steps"]


def git_commit() -> str:
    """The checkout's commit, '-dirty' when it has uncommitted changes (the numbers belong to that code)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False).stdout

    return git("rev-parse", "--short", "HEAD").strip() + ("-dirty" if git("status", "--porcelain").strip() else "")


# -- the studies ----------------------------------------------------------------------------------------------
def planned_steps(args: argparse.Namespace, task: str) -> int:
    """Optimizer steps per trial: --max-steps, else the smoke size, else the study file's."""
    from elalora_auto.search.space import read_yaml, resolve_resource

    if args.max_steps is not None:
        return args.max_steps
    if task == SMOKE_TASK:
        return SMOKE_STEPS
    return int(read_yaml(resolve_resource(STUDY_FILES[task], "studies"))["max_steps"])


def arm_settings(args: argparse.Namespace, key: Record) -> Any:
    """The study file with this arm's method, budget, seed, study name, workdir and pruning on top; the
    trainer-hps arm gets the lora arm's settings (data, model, steps), which it reads but does not search with."""
    from elalora_auto.search import SearchSettings

    method = "lora" if key["arm"] == "trainer-hps" else key["arm"]
    workdir = args.workdir / key["task"]
    overrides: dict[str, Any] = {"data_dir": str(args.data_dir)}
    config = STUDY_FILES.get(key["task"], SMOKE_FILE)
    if key["task"] == SMOKE_TASK:
        from elalora_auto.demo import demo_inputs

        overrides = demo_inputs(workdir.resolve())
    overrides |= {"method": method, "space": key.get("space", method), "trials": key["trials"], "seed": key["seed"],
                  "max_steps": key["steps"], "study": key["study"], "workdir": str(workdir), "no_tracking": True,
                  "pruning": json.loads(args.pruning_json)}
    return SearchSettings.from_sources(config, overrides)


def trial_record(key: Record, number: int, state: str, accuracy: float | None, size: int | None,
                 steps: int | None, wall: float | None, params: dict[str, Any]) -> Record:
    return {"kind": "trial", **key, "number": number, "state": state, "accuracy": accuracy,
            "trainable_params": size, "steps_done": steps, "wall_time_s": wall, "params": params}


def trial_listener(results: Path, key: Record) -> Callable[[Any], None]:
    """The elalora-auto arms' per-trial lines, written from the search's `trial_finished` event."""
    def listen(event: Any) -> None:
        if event.kind != "trial_finished":
            return
        data = event.data
        done = data["result"] if data["state"].name == "COMPLETE" else None  # steps and time of complete trials
        values = data.get("values") or [None, None]
        size = None if values[1] is None else int(values[1])  # Optuna keeps objective values as floats
        append_jsonl(results, trial_record(key, data["trial_number"], data["state"].name, values[0], size,
                                            done and done.steps_done, done and done.wall_time_s, data["params"]))

    return listen


def run_project_arm(settings: Any, results: Path, key: Record) -> tuple[Any, Any, Path]:
    """elalora-auto's own search; resumes the study when it exists (journal in the workdir)."""
    from elalora_auto.search import run_search
    from elalora_auto.search.plan import plan_study
    from elalora_auto.workdir import Workdir

    study = run_search(settings, [trial_listener(results, key)], progress=False)
    return study, plan_study(settings), Workdir(settings.workdir).trials(study.study_name)


def study_rows_of(study: Any, trials_dir: Path | None) -> list[Record]:
    """Every trial as the project's reader sees it (accuracy, size, steps from result.json), with the steps and
    wall time the trainer-hps arm keeps in user attrs, and Optuna's duration where a trial recorded none."""
    from elalora_auto.results import study_rows

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for row in study_rows(study, trials_dir):
        trial = trials[row.number]
        wall = trial.user_attrs.get("wall_time_s") or (trial.duration and trial.duration.total_seconds())
        rows.append({"number": row.number, "state": row.state.name, "accuracy": row.metric,
                     "trainable_params": row.trainable_params,
                     "steps_done": row.reached.steps_done if row.reached.steps_done is not None
                     else trial.user_attrs.get("steps_done"), "wall_time_s": wall, "params": dict(row.params)})
    return rows


def study_record(key: Record, study: Any, plan: Any, trials_dir: Path | None, before: str, elapsed: float,
                 threads: int) -> Record:
    rows = study_rows_of(study, trials_dir)
    settings = plan.settings
    return {"kind": "study", **key, "metric": plan.primary_metric, "baseline": plan.baseline,
            "steps_per_trial": plan.total_steps, "eval_every": plan.eval_every, "batch_size": settings.batch_size,
            "max_length": settings.max_length, "max_train_samples": settings.max_train_samples,
            "pruning": settings.pruning.rule, "rows": rows,
            "steps_total": sum(r["steps_done"] or 0 for r in rows),
            "wall_time_s": round(sum(r["wall_time_s"] or 0.0 for r in rows), 1), "elapsed_s": round(elapsed, 1),
            "threads": threads, "command": command_line(), "machine_before": before, "machine_after": machine_note(),
            "commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# -- the trainer-hps arm --------------------------------------------------------------------------------------
class TrialLog:
    """Records each Trainer trial's size, steps and wall time on its Optuna trial and logs it as it ends: the
    Trainer's search takes no Optuna callback. Also asks for an evaluation at the last step, where the
    elalora-auto loop always evaluates, so the objective is the final accuracy whatever eval_every is."""

    def __init__(self, results: Path, key: Record, metric: str) -> None:
        from transformers import TrainerCallback

        self.results, self.key, self.metric = results, key, metric
        self.trial: Any = None
        self.started = 0.0
        self.value: float | None = None
        log = self

        class Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step >= state.max_steps:
                    control.should_evaluate = True

            def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
                log.value = (metrics or {}).get(f"eval_{log.metric}", log.value)

            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                log.ended(state.global_step)

        self.callback = Callback()

    def start(self, trial: Any, model: Any) -> None:
        """From model_init: the trial (None when the Trainer builds its first model) and its trainable size."""
        self.trial, self.started, self.value = trial, time.perf_counter(), None
        if trial is not None:
            trial.set_user_attr("trainable_params", sum(p.numel() for p in model.parameters() if p.requires_grad))

    def ended(self, steps: int) -> None:
        if self.trial is None:
            return
        wall = round(time.perf_counter() - self.started, 2)
        self.trial.set_user_attr("steps_done", steps)
        self.trial.set_user_attr("wall_time_s", wall)
        size = self.trial.user_attrs["trainable_params"]
        append_jsonl(self.results, trial_record(self.key, self.trial.number, "COMPLETE", self.value, size, steps,
                                                 wall, dict(self.trial.params)))
        print(f"trial {self.trial.number}: {self.metric} {self.value:.4f}, {size:,} trainable parameters, "
              f"{wall:.1f} s", flush=True)


def lora_hp_space() -> tuple[Callable[[Any], dict[str, Any]], dict[str, Any]]:
    """The trainer's hp_space drawn from lora.yaml's own ranges (so the two LoRA arms search the same box), and
    lora.yaml's defaults (the Trainer's first model, and the fixed dropout)."""
    from elalora_auto.search.space import SearchSpace

    params = {p.name: p for p in SearchSpace.load("lora").params}

    def hp_space(trial: Any) -> dict[str, Any]:
        return {name: params[name].suggest(trial) for name in TRAINER_HPS}

    return hp_space, {name: p.default for name, p in params.items()}


def trainer_data(plan: Any, workdir: Path) -> tuple[Any, Any, Any]:
    """(train, eval split, tokenizer): the rows and tokens the elalora-auto trials train on (same sample seed,
    same tokenisation cache), and the split their objective is measured on."""
    from elalora_auto.loading import load_tokenizer
    from elalora_auto.spec import DataSettings
    from elalora_auto.tasks import load_task_data, tokenize_cached

    settings, task = plan.settings, plan.task
    data = load_task_data(task, data_dir=settings.data_dir, max_train_samples=settings.max_train_samples,
                          max_eval_samples=settings.max_eval_samples, seed=DataSettings().seed)
    tokenizer = load_tokenizer(plan.model_path)
    data = tokenize_cached(data, tokenizer, settings.max_length, workdir / "cache")
    split = task.primary_split if task.primary_split in data.evals else next(iter(data.evals))
    return data.train, data.evals[split], tokenizer


def trainer_args(plan: Any, out: Path) -> Any:
    """The elalora-auto trial's training settings in TrainingArguments: batch, steps, eval interval, AdamW without
    weight decay, linear decay after 10% warm-up, length-grouped batches, bf16 on a CUDA device that has it."""
    import torch
    from transformers import TrainingArguments

    from elalora_auto.spec import TrainingSettings

    settings, defaults = plan.settings, TrainingSettings()
    return TrainingArguments(
        output_dir=str(out), max_steps=plan.total_steps, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=defaults.eval_batch_size, learning_rate=defaults.learning_rate,
        weight_decay=defaults.weight_decay, lr_scheduler_type="linear",
        warmup_steps=round(defaults.warmup_ratio * plan.total_steps), seed=settings.seed, eval_strategy="steps",
        eval_steps=plan.eval_every, save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        train_sampling_strategy="group_by_length", use_cpu=settings.device == "cpu",
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=settings.device != "cpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def make_trainer(plan: Any, workdir: Path, log: TrialLog, hp_space: Callable[[Any], dict[str, Any]],
                 defaults: dict[str, Any]) -> Any:
    """A Trainer whose model_init builds MiniLM + PEFT LoRA (the project's default BERT targets and heads) with
    the trial's r and alpha; the fresh head is drawn from the seed as in an elalora-auto trial."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import PrinterCallback, Trainer

    from elalora_auto.adapters import default_targets
    from elalora_auto.loading import load_base_model, reset_fresh_head
    from elalora_auto.tasks import compute_metrics, make_collator

    task, seed = plan.task, plan.settings.seed
    targets, heads = default_targets(plan.model_type)

    def model_init(trial: Any = None) -> Any:
        # transformers 5 calls model_init before hp_space: suggesting here first gives the same values there.
        hp = defaults if trial is None else hp_space(trial)
        base, missing = load_base_model(plan.model_path, task.num_labels, task.problem_type)
        model = copy.deepcopy(base)
        reset_fresh_head(model, missing, seed)
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=hp["r_init"], lora_alpha=hp["lora_alpha"],
                            lora_dropout=defaults["lora_dropout"], target_modules=targets, modules_to_save=heads)
        model = get_peft_model(model, config)
        log.start(trial, model)
        return model

    def metrics(prediction: Any) -> dict[str, float]:
        return compute_metrics(task, prediction.predictions.argmax(-1), prediction.label_ids)

    train, evaluation, tokenizer = trainer_data(plan, workdir)
    trainer = Trainer(model_init=model_init, args=trainer_args(plan, workdir / "trainer-hps" / plan.settings.study),
                      train_dataset=train, eval_dataset=evaluation, data_collator=make_collator(tokenizer),
                      compute_metrics=metrics, callbacks=[log.callback])
    trainer.remove_callback(PrinterCallback)  # its metric dicts: TrialLog prints one line per trial instead
    return trainer


def run_trainer_arm(settings: Any, results: Path, key: Record) -> tuple[Any, Any, None]:
    """Trainer.hyperparameter_search on its own journal; on a resumed study only the remaining trials run, and
    the sampler's seed moves with the trials done so a resume draws fresh configurations."""
    import optuna

    from elalora_auto.search.plan import plan_study
    from elalora_auto.search.storage import open_storage
    from elalora_auto.search.worker import sampler_seed

    plan = plan_study(settings)
    workdir = Path(settings.workdir)
    storage = open_storage(None, workdir / "trainer-hps")
    done = 0
    if settings.study in optuna.get_all_study_names(storage=storage):
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        done = len(optuna.load_study(study_name=settings.study, storage=storage).get_trials(states=finished))
    if done < settings.trials:
        print(f"trainer-hps study {settings.study}: {done} of {settings.trials} trials done, "
              f"{plan.total_steps} steps per trial", flush=True)
        hp_space, defaults = lora_hp_space()
        log = TrialLog(results, key, plan.primary_metric)
        trainer = make_trainer(plan, workdir, log, hp_space, defaults)
        trainer.hyperparameter_search(
            hp_space=hp_space, compute_objective=lambda m: m[f"eval_{plan.primary_metric}"],
            n_trials=settings.trials - done, direction="maximize", backend="optuna", storage=storage,
            study_name=settings.study, load_if_exists=True, pruner=optuna.pruners.NopPruner(),
            sampler=optuna.samplers.TPESampler(seed=sampler_seed(settings.seed, done, 0)))
    return optuna.load_study(study_name=settings.study, storage=storage), plan, None


def run_all(args: argparse.Namespace) -> None:
    """Every (seed, task, arm) study not yet in the results, seed-major: a cut-short run has every arm of the
    first seed."""
    import torch

    torch.set_num_threads(args.threads)
    done = {study_key(r) for r in read_jsonl(args.results) if r["kind"] == "study"}
    todo = [(seed, task, arm) for seed in args.seeds for task in args.tasks for arm in args.arms]
    for i, (seed, task, arm) in enumerate(todo, 1):
        key = {"task": task, "arm": arm, "seed": seed, "trials": args.trials, "steps": planned_steps(args, task)}
        key["study"] = f"{task}-{arm}-seed{seed}-{key['steps']}steps"
        if arm in args.space:
            key["space"] = args.space[arm]
        if study_key(key) in done:
            print(f"[{i}/{len(todo)}] skip {key['study']} (complete in {args.results})", flush=True)
            continue
        print(f"[{i}/{len(todo)}] {time.strftime('%H:%M:%S')} {key['study']}: {args.trials} trials", flush=True)
        before, start = machine_note(), time.perf_counter()
        settings = arm_settings(args, key)
        runner = run_trainer_arm if arm == "trainer-hps" else run_project_arm
        study, plan, trials_dir = runner(settings, args.results, key)
        if plan.primary_metric != "accuracy":
            raise SystemExit(f"{task}: the report compares accuracy, but the task's metric is {plan.primary_metric}")
        append_jsonl(args.results, study_record(key, study, plan, trials_dir, before,
                                                 time.perf_counter() - start, args.threads))


# -- the report -----------------------------------------------------------------------------------------------
def complete_points(study: Record) -> list[tuple[float, float]]:
    return [(r["accuracy"], float(r["trainable_params"])) for r in study["rows"]
            if r["state"] == "COMPLETE" and r["accuracy"] is not None and r["trainable_params"]]


def select_studies(records: Iterable[Record], args: argparse.Namespace) -> dict[str, list[Record]]:
    """Per task, the latest complete study of each requested (arm, seed) with this run's budget and steps."""
    wanted = {(task, arm, seed, args.trials, planned_steps(args, task))
              for task in args.tasks for arm in args.arms for seed in args.seeds}
    latest = {study_key(r): r for r in records if r["kind"] == "study" and study_key(r) in wanted}
    by_task: dict[str, list[Record]] = {}
    for key in sorted(latest, key=lambda k: (args.tasks.index(k[0]), ARMS.index(k[1]), k[2])):
        by_task.setdefault(key[0], []).append(latest[key])
    return by_task


def reference(studies: Sequence[Record]) -> tuple[float, float]:
    """One reference per task: (majority-class accuracy, 1.1 x the largest size seen in any arm)."""
    sizes = [p[1] for s in studies for p in complete_points(s)]
    return float(studies[0]["baseline"]), 1.1 * max(sizes, default=1.0)


def task_budgets(studies: Sequence[Record], given: Sequence[int] | None) -> list[int]:
    """--budgets, else the 25/50/75% quantiles of every arm's sizes (observed sizes: each budget holds a trial)."""
    import numpy as np

    if given:
        return list(given)
    sizes = [p[1] for s in studies for p in complete_points(s)]
    return [int(q) for q in np.quantile(sizes, [0.25, 0.5, 0.75], method="lower")] if sizes else []


def best_at(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    fitting = [m for m, c in points if c <= budget]
    return max(fitting) if fitting else None


def normalised_hv(points: Sequence[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Hypervolume as a share of the reference box ((1 - floor) x ceiling): 1 would be 100% at no cost."""
    from elalora_auto.search.pareto import hypervolume

    return hypervolume(points, ref) / ((1.0 - ref[0]) * ref[1])


def covers(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> bool:
    """Every point of b is matched or beaten in both objectives by some point of a."""
    return all(any(p[0] >= q[0] and p[1] <= q[1] for p in a) for q in b)


def relation(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> str:
    if covers(a, b) and covers(b, a):
        return "equals"
    if covers(a, b):
        return "dominates"
    return "is dominated by" if covers(b, a) else "neither dominates nor is dominated by"


def fmt(value: float | None, spec: str = ".1f", scale: float = 100.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else statistics.mean(values)  # type: ignore[arg-type]


def arm_lines(arm: str, studies: Sequence[Record], ref: tuple[float, float], budgets: Sequence[int]) -> list[str]:
    """The table rows of one arm: one per seed, then the mean over seeds."""
    cells: list[list[float | None]] = []
    lines = []
    for study in studies:
        points = complete_points(study)
        trials = len(study["rows"])
        values = [normalised_hv(points, ref), *(best_at(points, b) for b in budgets), best_at(points, float("inf")),
                  study["steps_total"], study["wall_time_s"], study["wall_time_s"] / max(trials, 1)]
        cells.append(values)
        lines.append(f"| {arm} | {study['seed']} | {trials} ({len(points)}) | {fmt(values[0], '.4f', 1)} | "
                     + " | ".join(fmt(v) for v in values[1:len(budgets) + 2])
                     + f" | {values[-3]:,} | {values[-2] / 60:.1f} | {values[-1]:.1f} |")
    means = [mean_or_none(column) for column in zip(*cells)]
    lines.append(f"| {arm} | mean | | {fmt(means[0], '.4f', 1)} | "
                 + " | ".join(fmt(v) for v in means[1:len(budgets) + 2])
                 + f" | {means[-3]:,.0f} | {means[-2] / 60:.1f} | {means[-1]:.1f} |")
    return lines


def task_table(task: str, studies: Sequence[Record], given: Sequence[int] | None) -> tuple[str, list[int]]:
    """The markdown table of one task (every arm, each seed and the mean) and its budgets."""
    ref, budgets = reference(studies), task_budgets(studies, given)
    first = studies[0]
    source = "--budgets" if given else "25/50/75% quantiles of all arms' sizes"
    head = [f"### {task}: {first['steps_per_trial']} optimizer steps per trial, batch {first['batch_size']}, "
            f"max length {first['max_length']}, {first['trials']} trials per study, pruning {first['pruning']}",
            "", f"Reference: accuracy floor {ref[0]:.4f} (majority class of the eval split), cost ceiling "
            f"{ref[1]:,.0f} parameters (1.1 x the largest trainable size of any arm). Budgets P: "
            + ", ".join(f"{b:,}" for b in budgets) + f" ({source}). Accuracy in %.", "",
            "| arm | seed | trials (complete) | HV (normalised) | " + " | ".join(f"best <= {b:,}" for b in budgets)
            + " | best | optimizer steps | wall (min) | s/trial |", "|---" * (8 + len(budgets)) + "|"]
    rows = []
    for arm in ARMS:
        mine = [s for s in studies if s["arm"] == arm]
        rows += arm_lines(arm, mine, ref, budgets) if mine else []
    return "\n".join(head + rows), budgets


def dominance_lines(by_task: dict[str, list[Record]]) -> list[str]:
    """Per task and seed: ElaLoRA's front against each other arm's front of the same seed."""
    lines, wins, pairs = [], 0, 0
    for task, studies in by_task.items():
        ref = reference(studies)
        for seed in dict.fromkeys(s["seed"] for s in studies):
            of_seed = {s["arm"]: complete_points(s) for s in studies if s["seed"] == seed}
            if "elalora" not in of_seed or len(of_seed) < 2:
                continue
            mine = of_seed.pop("elalora")
            parts = [f"{relation(mine, pts)} {arm} (HV {normalised_hv(mine, ref):.4f} vs "
                     f"{normalised_hv(pts, ref):.4f})" for arm, pts in of_seed.items()]
            pairs += 1
            wins += all(covers(mine, pts) for pts in of_seed.values())
            lines.append(f"- {task}, seed {seed}: ElaLoRA's front " + "; ".join(parts))
    if pairs:
        lines.append(f"- ElaLoRA's front dominates every other arm's in {wins} of {pairs} (task, seed) pairs.")
    return lines


def seed_mean_best(studies: Sequence[Record], arm: str, budget: int) -> float | None:
    """The arm's best accuracy at <= budget, averaged over its seeds (None when a seed has no trial there)."""
    return mean_or_none([best_at(complete_points(s), budget) for s in studies if s["arm"] == arm])


def goal_lines(by_task: dict[str, list[Record]], budgets: dict[str, list[int]]) -> list[str]:
    """Per budget level: ElaLoRA's seed-mean best at <= P minus the best of the peers' (LoRA and AdaLoRA, the
    Trainer's search over LoRA included: it finds LoRA adapters too), per task and as the mean over tasks, against
    the +1 point target. A peer with no trial at or under P is left out."""
    lines = []
    for level in range(3):
        diffs, parts = [], []
        for task, studies in by_task.items():
            if level >= len(budgets[task]):
                continue
            budget = budgets[task][level]
            mine = seed_mean_best(studies, "elalora", budget)
            peers = {a: v for a in ARMS[1:] if (v := seed_mean_best(studies, a, budget)) is not None}
            if mine is None or not peers:
                found = " / ".join(f"{a} {100 * v:.1f}" for a, v in peers.items()) or "no peer either"
                none = "ElaLoRA none this small, " if mine is None else ""
                parts.append(f"{task} (P {budget:,}): not measurable ({none}{found})")
                continue
            diffs.append(100 * (mine - max(peers.values())))
            parts.append(f"{task} (P {budget:,}): ElaLoRA {100 * mine:.1f} vs "
                         + " / ".join(f"{a} {100 * v:.1f}" for a, v in peers.items()) + f" = {diffs[-1]:+.1f}")
        verdict = "no task measurable"
        if diffs:
            mean = statistics.mean(diffs)
            verdict = (f"mean {mean:+.1f} points over {len(diffs)} task(s): target +{GOAL_POINTS:.0f} "
                       + ("met" if mean >= GOAL_POINTS else "NOT met"))
        lines.append(f"- P{level + 1}: " + "; ".join(parts) + f" -> {verdict}")
    return lines


def report(records: list[Record], args: argparse.Namespace) -> str:
    """The tables of every task, the dominance lines and the goal line; plots are written beside."""
    by_task = select_studies(records, args)
    if not by_task:
        return f"no complete study in {args.results} for these tasks, arms, seeds, --trials and steps"
    parts, budgets = [], {}
    for task, studies in by_task.items():
        table, budgets[task] = task_table(task, studies, args.budgets)
        path = plot_task(task, studies, reference(studies), args.plots)
        parts.append(f"{table}\n\nFront plot: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    missing = [f"{t}/{a}/seed {s}" for t in args.tasks for a in args.arms for s in args.seeds
               if not any(r["arm"] == a and r["seed"] == s for r in by_task.get(t, []))]
    goal = ["**Goal (ElaLoRA best at <= P minus the best peer's (LoRA, AdaLoRA, Trainer HPS) at <= P, seed means; "
            "mean over tasks; "
            f"target +{GOAL_POINTS:.0f} point):**", *goal_lines(by_task, budgets)]
    text = "\n\n".join(parts + ["**Fronts (per task, per seed):**\n" + "\n".join(dominance_lines(by_task)),
                                "\n".join(goal)])
    return text + (f"\n\nNot run or not complete yet (not shown): {', '.join(missing)}" if missing else "")


def plot_task(task: str, studies: Sequence[Record], ref: tuple[float, float], folder: Path) -> Path:
    """All arms and seeds on one figure: every complete trial as a dot, each study's front as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elalora_auto.search.pareto import pareto_front

    colours = dict(zip(ARMS, ("tab:red", "tab:blue", "tab:green", "tab:purple")))
    seeds = list(dict.fromkeys(s["seed"] for s in studies))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for study in studies:
        points = complete_points(study)
        if not points:
            continue
        style = ("-", "--", ":", "-.")[seeds.index(study["seed"]) % 4]
        marker = ("o", "s", "^", "D")[seeds.index(study["seed"]) % 4]
        colour = colours[study["arm"]]
        ax.scatter([c for _, c in points], [100 * m for m, _ in points], color=colour, marker=marker, alpha=0.35, s=22)
        front = [points[i] for i in pareto_front(points)]
        xs = [c for _, c in front] + [ref[1]]
        ys = [100 * m for m, _ in front] + [100 * front[-1][0]]
        ax.step(xs, ys, where="post", color=colour, linestyle=style, linewidth=1.8,
                label=f"{study['arm']} seed {study['seed']}")
    ax.axhline(100 * ref[0], color="grey", linestyle=":", linewidth=1, label=f"majority class {100 * ref[0]:.1f}%")
    first = studies[0]
    ax.set_title(f"{task}: search fronts, {first['trials']} trials x {first['steps_per_trial']} steps per study")
    # the legend outside: never over the fronts
    return save_front_plot(fig, ax, folder / f"search_vs_peers_{task}.png", loc="upper left",
                           bbox_to_anchor=(1.01, 1.0))


def save_front_plot(fig: Any, ax: Any, path: Path, **legend: Any) -> Path:
    """The axes every front plot shares (size on a log scale, accuracy in %), then the PNG."""
    import matplotlib.pyplot as plt

    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, **legend)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(records: list[Record], args: argparse.Namespace, text: str) -> str:
    """A BENCHMARKS.md section: the commands that produced the studies, dates, machine, then the report."""
    studies = [s for group in select_studies(records, args).values() for s in group]
    if not studies:
        return text
    commands = "; ".join(f"`{c}`" for c in dict.fromkeys(s["command"] for s in studies))
    commits = ", ".join(dict.fromkeys(s["commit"] for s in studies))
    return (f"## Search vs peers (issue 9.5): ElaLoRA, LoRA and AdaLoRA searches vs Trainer.hyperparameter_search\n\n"
            f"Command: {commands}  \nDates: {studies[0]['date']} to {studies[-1]['date']}; commit {commits}; "
            f"{studies[0]['threads']} torch thread(s)  \nMachine at start: {studies[0]['machine_before']}  \n"
            f"Machine at end: {studies[-1]['machine_after']}\n\n"
            "Every arm: the same trial budget and optimizer steps per trial, no pruning. elalora-auto arms: "
            "`run_search` with the built-in study file and the method's own space (trial 0 = the space's defaults "
            "with the file's trial-0 learning rate). trainer-hps: `Trainer.hyperparameter_search(backend=\"optuna\")` "
            "over PEFT LoRA (r, lora_alpha, learning_rate from lora.yaml's ranges; dropout and targets at lora.yaml's "
            "defaults), single objective = eval accuracy, no trial 0. HV: hypervolume of the (accuracy, trainable "
            "parameters) front as a share of the reference box.\n\n" + text + "\n")


# -- command line ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(STUDY_FILES), default=list(STUDY_FILES))
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--trials", type=int, default=None, help=f"per study (default 12; {SMOKE_TRIALS} with --smoke)")
    parser.add_argument("--max-steps", type=int, default=None, help="per trial (default: the study file's)")
    parser.add_argument("--data-dir", type=Path, default=GLUE)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--pruning-json", default='{"rule": "none"}',
                        help="the pruning settings of every elalora-auto arm, as JSON")
    parser.add_argument("--space", nargs="+", default=[], metavar="ARM=YAML",
                        help="another search space for an elalora-auto arm (an experiment: use its own --results)")
    parser.add_argument("--budgets", nargs=3, type=int, default=None, help="P values (default: size quantiles)")
    parser.add_argument("--results", type=Path, default=None, help=f"JSONL (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="study journals, trial folders, caches")
    parser.add_argument("--plots", type=Path, default=OUT, help="folder of the front plots")
    parser.add_argument("--table", action="store_true", help="print the report from the results and exit")
    parser.add_argument("--markdown", action="store_true", help="print the report as a BENCHMARKS.md section")
    parser.add_argument("--smoke", action="store_true", help="tiny model, synthetic task, 2 trials, 20 steps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tasks = [SMOKE_TASK]
    spaces = dict(item.partition("=")[::2] for item in args.space)
    if any(arm not in PROJECT_ARMS or not path for arm, path in spaces.items()):
        parser.error(f"--space takes ARM=YAML with ARM one of {', '.join(PROJECT_ARMS)}, got {' '.join(args.space)}")
    args.space = spaces
    args.trials = args.trials or (SMOKE_TRIALS if args.smoke else 12)
    args.results = args.results or (SMOKE_RESULTS if args.smoke else RESULTS)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.table or args.markdown):
        run_all(args)
    records = read_jsonl(args.results)
    text = report(records, args)
    print(markdown(records, args, text) if args.markdown else text)


if __name__ == "__main__":
    main()
