"""A study's plan, checked before the study is touched: the space, the task and its data, the model's module
names, the run length and the majority-class baseline the pruning rule compares with."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elalora_auto.errors import ConfigError, UserError, reject_unknown
from elalora_auto.search.settings import SearchSettings
from elalora_auto.search.space import SearchSpace


@dataclass
class StudyPlan:
    """What every trial of a study shares (task, model, run length, the baseline), checked once before the
    study is created or joined."""

    settings: SearchSettings
    space: SearchSpace
    task: Any  # tasks.TaskSpec
    model_path: str
    model_type: str
    total_steps: int
    eval_every: int
    primary_metric: str
    baseline: float | None  # the majority-class value of the primary metric
    baseline_margin: float
    rungs: list[int]  # the halving rule's rung steps (empty under the other rules)

    @property
    def multi(self) -> bool:
        return self.settings.objective == "pareto"

    def trial_spec(self, trial: Any) -> Any:
        """The TrialSpec of one configuration: the space's suggestions on top of the study's settings.

        `trial` is an Optuna trial, or an `optuna.trial.FixedTrial` to re-run a known configuration exactly as the
        study would have. A configuration that breaks a space constraint raises optuna.TrialPruned.
        """
        import optuna

        spec, broken = self.drawn_spec(trial)
        if broken is not None:
            raise optuna.TrialPruned(broken)
        return spec

    def drawn_spec(self, trial: Any) -> tuple[Any, str | None]:
        """(`trial_spec`'s TrialSpec, the space constraint it breaks or None): the worker writes a pruned
        configuration's folder too."""
        from elalora_auto.trial import DataSettings, TrainingSettings, TrialSpec

        settings = self.settings
        method_params, overrides, broken = self.space.draw(
            trial, {"total_steps": self.total_steps, "model_type": self.model_type})
        training = TrainingSettings(max_steps=self.total_steps, batch_size=settings.batch_size,
                                    eval_every=self.eval_every, max_length=settings.max_length,
                                    seed=settings.seed, device=settings.device)
        return TrialSpec(
            task=self.task.name, model=self.model_path, method=self.space.method, params=method_params,
            training=dataclasses.replace(training, **overrides),
            data=DataSettings(data_dir=settings.data_dir, max_train_samples=settings.max_train_samples,
                              max_eval_samples=settings.max_eval_samples,
                              cache_dir=str(Path(settings.workdir) / "cache")),
            custom=settings.custom,
        ), broken


def plan_study(settings: SearchSettings) -> StudyPlan:
    """Validate everything a trial would trip over (space names and values, device, task, data, model weights,
    tokenizer, modules) and size the run: cheap checks first, the model last.

    Runs before the study is touched, so a bad input leaves the storage as it was.
    """
    from elalora_auto.search.checks import check_space
    from elalora_auto.tasks import load_task_data, resolve_task
    from elalora_auto.trial import TrainingSettings, load_base_model, load_tokenizer, resolve_model, total_steps

    space = SearchSpace.load(settings.space or settings.method)
    if space.method != settings.method:
        raise UserError(f"the space {space.source} is for {space.method}, but --method is {settings.method}; "
                        f"pass --method {space.method} or another --space")
    reject_unknown((p.name for p in space.params if p.section == "training_params"),
                   (f.name for f in dataclasses.fields(TrainingSettings)),
                   f"{space.source}: training_params: not a training setting:")
    check_device(settings.device)
    model_path = resolve_model(settings.model)
    task = resolve_task(settings.task, settings.custom)
    data = load_task_data(task, data_dir=settings.data_dir, max_train_samples=settings.max_train_samples,
                          max_eval_samples=settings.max_eval_samples, seed=0)
    if len(data.train) == 0 or not data.evals:
        raise UserError(f"task {task.name}: no training rows or no evaluation split found")
    length = TrainingSettings(max_steps=settings.max_steps, batch_size=settings.batch_size,
                              epochs=settings.epochs or 1.0)
    steps = total_steps(length, len(data.train))
    if steps < 4:
        raise UserError(f"a run of {steps} steps is too short for a schedule; use --max-steps 4 or more")
    check_space(space, steps)
    eval_every = settings.eval_every or max(1, steps // 4)
    rungs = settings.pruning.rungs(eval_every, steps)
    space.default_params(settings.trial0)  # trial 0's overrides: names and ranges, before the study is touched
    load_tokenizer(model_path)
    load_base_model(model_path, task.num_labels, task.problem_type)  # cached: the process's trials reuse it
    model_type = check_target_modules(model_path, task.num_labels, space)
    check_adapter(model_path, task.num_labels, space, steps, model_type)
    baseline, margin = majority_baseline(task, next(iter(data.evals.values())))
    return StudyPlan(settings, space, task, model_path, model_type, steps, eval_every, task.primary_metric,
                     baseline, margin, rungs)


def check_device(device: str) -> None:
    """`--device cuda` on a machine without one fails now, not in every trial."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA device is available here (torch.cuda.is_available() is False); "
                        "use --device auto or cpu")


def majority_baseline(task: Any, split: Any) -> tuple[float | None, float]:
    """The primary metric of always answering the majority class, and the margin a learner must beat it by."""
    import numpy as np

    from elalora_auto.tasks import compute_metrics

    if task.is_regression:
        return None, 0.02
    labels = np.asarray(split["label"])
    majority = np.bincount(labels.astype(int), minlength=task.num_labels).argmax()
    baseline = compute_metrics(task, np.full_like(labels, majority), labels)[task.primary_metric]
    margin = 0.02
    if task.primary_metric == "accuracy":
        margin = max(margin, 2 * math.sqrt(baseline * (1 - baseline) / len(labels)))
    return baseline, margin


def _meta_model(model_path: str, num_labels: int) -> Any:
    """A weightless ('meta') copy of the model: module names and adapters without memory or time."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_path, num_labels=num_labels)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def check_target_modules(model_path: str, num_labels: int, space: SearchSpace) -> str:
    """Every module name of every set must exist in the model (checked on a meta copy).

    Returns the model_type, which picks the space's module aliases.
    """
    from elalora_auto.method.config import ElaLoraConfig

    model = _meta_model(model_path, num_labels)
    model_type = model.config.model_type
    for set_name in space.module_sets:
        try:
            ElaLoraConfig(target_modules=space.module_names(set_name, model_type)).match_targets(model)
        except ConfigError as exc:
            raise ConfigError(f"{space.source}: module_sets.{set_name}: {exc} in {model_type} "
                              f"(add module_aliases.{model_type})") from None
    return model_type


def check_adapter(model_path: str, num_labels: int, space: SearchSpace, steps: int, model_type: str) -> None:
    """Trial 0 built for real on a meta copy: the adapter's own parameter-name check (naming the valid ones) and
    PEFT's, for the PEFT methods (ElaLoRA's names and values are checked without a model, by `check_space`)."""
    from elalora_auto.adapters import build_adapter
    from elalora_auto.search.checks import corners

    if space.method == "elalora":
        return
    _, params, _ = next(corners(space, steps, model_type))
    try:
        build_adapter(_meta_model(model_path, num_labels), space.method, params, steps)
    except ConfigError as exc:
        raise ConfigError(f"{space.source}: method_params: {exc}") from None
