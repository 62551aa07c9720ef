"""The peers' stock route: transformers' `Trainer.hyperparameter_search` (Optuna backend) over MiniLM + a PEFT
LoraConfig, on the same tokenised rows, batch size, length, steps, linear schedule with 10% warm-up and seed as an
elalora-auto trial, its `hp_space` drawn from lora.yaml's ranges. search_vs_peers.py runs it as an arm;
loop_replay.py replays one of its Trainers in the project's loop."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

from common.results import append_jsonl
from common.studies import Record, trial_record

TRAINER_HPS = ("r_init", "lora_alpha", "learning_rate")  # lora.yaml's names: PEFT's r, lora_alpha, learning rate


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
        base, missing = load_base_model(plan.model_path, task)
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


