"""A study's plan, checked before the study is touched: the space, the task and its data, the model's module
names, the run length and the majority-class baseline the pruning rule compares with."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
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

    @property
    def multi(self) -> bool:
        return self.settings.objective == "pareto"


def plan_study(settings: SearchSettings) -> StudyPlan:
    """Validate everything a trial would trip over (task, data, space, modules, model) and size the run.

    Runs before the study is touched, so a bad input leaves the storage as it was.
    """
    import numpy as np

    from elalora_auto.tasks import compute_metrics, load_task_data, resolve_task
    from elalora_auto.trial import TrainingSettings, resolve_model, total_steps

    space = SearchSpace.load(settings.space or settings.method)
    if space.method != settings.method:
        raise UserError(f"the space {space.source} is for {space.method}, but --method is {settings.method}; "
                        f"pass --method {space.method} or another --space")
    reject_unknown((p.name for p in space.params if p.section == "training_params"),
                   (f.name for f in dataclasses.fields(TrainingSettings)),
                   f"{space.source}: training_params: not a training setting:")
    task = resolve_task(settings.task, settings.custom)
    data = load_task_data(task, data_dir=settings.data_dir, max_train_samples=settings.max_train_samples,
                          max_eval_samples=settings.max_eval_samples, seed=0)
    if len(data.train) == 0 or not data.evals:
        raise UserError(f"task {task.name}: no training rows or no evaluation split found")
    model_path = resolve_model(settings.model)
    model_type = check_target_modules(model_path, task.num_labels, space)
    length = TrainingSettings(max_steps=settings.max_steps, batch_size=settings.batch_size,
                              epochs=settings.epochs or 1.0)
    steps = total_steps(length, len(data.train))
    if steps < 4:
        raise UserError(f"a run of {steps} steps is too short for a schedule; use --max-steps 4 or more")
    eval_every = settings.eval_every or max(1, steps // 4)

    first_split = next(iter(data.evals.values()))
    labels = np.asarray(first_split["label"])
    baseline, margin = None, 0.02
    if not task.is_regression:
        majority = np.bincount(labels.astype(int), minlength=task.num_labels).argmax()
        baseline = compute_metrics(task, np.full_like(labels, majority), labels)[task.primary_metric]
        if task.primary_metric == "accuracy":
            margin = max(margin, 2 * math.sqrt(baseline * (1 - baseline) / len(labels)))
    return StudyPlan(settings, space, task, model_path, model_type, steps, eval_every,
                    task.primary_metric, baseline, margin)


def check_target_modules(model_path: str, num_labels: int, space: SearchSpace) -> str:
    """Every module name of every set must exist in the model (checked on a weightless 'meta' copy).

    Returns the model_type, which picks the space's module aliases.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from elalora_auto.method.config import ElaLoraConfig

    try:
        config = AutoConfig.from_pretrained(model_path, num_labels=num_labels)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {model_path!r} ({type(exc).__name__}); pass --model PATH to a local "
                        "model folder, or --model minilm") from None
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    for set_name in space.module_sets:
        try:
            ElaLoraConfig(target_modules=space.module_names(set_name, config.model_type)).match_targets(model)
        except ConfigError as exc:
            raise ConfigError(f"{space.source}: module_sets.{set_name}: {exc} in {config.model_type} "
                              f"(add module_aliases.{config.model_type})") from None
    return config.model_type
