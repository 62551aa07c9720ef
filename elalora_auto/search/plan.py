"""A study's plan, checked before the study is touched: the space, the task and its data, the model's module
names, the run length and the majority-class baseline the pruning rule compares with."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from elalora_auto.errors import ConfigError, UserError, reject_unknown
from elalora_auto.search.settings import SearchSettings
from elalora_auto.search.space import SearchSpace
from elalora_auto.workdir import Workdir


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
                              cache_dir=str(Workdir(settings.workdir).cache)),
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
    load_base_model(model_path, task)  # cached: the process's trials reuse it
    model_type = check_target_modules(model_path, task, space)
    baseline, margin = majority_baseline(task, next(iter(data.evals.values())))
    return StudyPlan(settings, space, task, model_path, model_type, steps, eval_every, task.primary_metric,
                     baseline, margin, rungs)


def train_spec(base: Any, overrides: Sequence[str], fresh: bool) -> tuple[Any, int]:
    """The `train` command's TrialSpec and its run's optimizer steps: `base` (a trial config file's spec, or a fresh
    one when `fresh`) under the `overrides`, and whatever neither gives taken from the method's built-in space
    (`SearchSpace.defaults`, resolved for this run's length and model), where a study's trial 0 takes it from: so
    `train --method X --set ...` and a search's trial 0 with the same settings build the same adapter (issue 27). A
    config file gives all its training settings (export writes every field); given params win over the defaults
    under any alias. A run sized by epochs reads its training rows once here, for both sizings (the space's
    training defaults cannot move the data settings)."""
    spec = base.apply_overrides(overrides)
    rows = functools.cache(functools.partial(_train_rows, spec))
    params, training = SearchSpace.load(spec.method).defaults(
        {"total_steps": _run_steps(spec, rows), "model_type": _model_type(spec)})
    if fresh and training:
        spec = dataclasses.replace(base, training=dataclasses.replace(base.training, **training))
        spec = spec.apply_overrides(overrides)
    given = dict(spec.params)
    spec.params = {**{k: v for k, v in params.items() if not _named(spec.method, given, k)}, **given}
    return spec, _run_steps(spec, rows)


def _named(method: str, params: dict[str, Any], name: str) -> bool:
    """Whether `params` give `name` already, under it or an alias (a user's r for ElaLoRA's r_init)."""
    from elalora_auto.adapters import native_params

    if name in params:
        return True
    try:
        native_params(method, {**params, name: None}, 1)
    except ConfigError:  # "given twice": an alias of it is there
        return True
    return False


def _run_steps(spec: Any, rows: Callable[[], int]) -> int:
    """The run's optimizer steps: max_steps, else epochs over the `rows()` training rows (read only then)."""
    from elalora_auto.spec import total_steps

    if spec.training.max_steps is not None:
        return int(spec.training.max_steps)
    return total_steps(spec.training, rows())


def _train_rows(spec: Any) -> int:
    """The training rows the trial will read (its task and data settings, as `trial.setup_trial` reads them)."""
    from elalora_auto.tasks import load_task_data, resolve_task

    ds = spec.data
    data = load_task_data(resolve_task(spec.task, spec.custom), data_dir=ds.data_dir,
                          max_train_samples=ds.max_train_samples, max_eval_samples=ds.max_eval_samples,
                          validation_fraction=ds.validation_fraction, seed=ds.seed)
    return len(data.train)


def _model_type(spec: Any) -> str:
    """The model's type (its default targets, a module set's names); the base model is cached for the trial."""
    from elalora_auto.loading import load_base_model
    from elalora_auto.tasks import resolve_task

    task = resolve_task(spec.task, spec.custom)
    return load_base_model(spec.model, task)[0].config.model_type


def check_device(device: str) -> None:
    """`--device cuda` on a machine without one fails now, not in every trial."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA device is available here (torch.cuda.is_available() is False); "
                        "use --device auto or cpu")


def majority_baseline(task: Any, split: Any) -> tuple[float | None, float]:
    """The primary metric of the task family's trivial predictor (sequence classification: the majority class)
    on an eval split's labels, and the margin a learner must beat it by."""
    import numpy as np

    from elalora_auto.tasks import family_of

    return family_of(task).baseline(task, np.asarray(split["label"]))


def _meta_model(model_path: str, task: Any) -> Any:
    """A weightless ('meta') copy of the task family's model: module names and adapters without memory or time."""
    import torch
    from transformers import AutoConfig

    from elalora_auto.tasks import family_of

    family = family_of(task)
    config = AutoConfig.from_pretrained(model_path, **family.config_kwargs(task))
    with torch.device("meta"):
        return family.model_class().from_config(config)


def check_target_modules(model_path: str, task: Any, space: SearchSpace) -> str:
    """Every module name of every set, and the model type's default targets where the space can leave the
    targets to them, must exist in the model (checked on a meta copy).

    Returns the model_type, which picks the space's module aliases.
    """
    from elalora_auto.adapters import default_targets
    from elalora_auto.method.config import ElaLoraConfig
    from elalora_auto.search.space import DEFAULT_MODULES

    model = _meta_model(model_path, task)
    model_type = model.config.model_type
    sets = {f"module_sets.{name}": space.module_names(name, model_type) for name in space.module_sets}
    choice = next((p for p in space.params if p.name == "target_modules"), None)
    if choice is None or DEFAULT_MODULES in (choice.choices or ()):
        try:
            sets["target_modules: default"] = default_targets(model_type)[0]
        except ConfigError as exc:
            raise ConfigError(f"{space.source}: target_modules: {exc}") from None
    for where, names in sets.items():
        try:
            ElaLoraConfig(target_modules=names).match_targets(model)
        except ConfigError as exc:
            fix = ("name a module set" if not where.startswith("module_sets")
                   else "fix the regex" if isinstance(names, str) else f"add module_aliases.{model_type}")
            raise ConfigError(f"{space.source}: {where}: {exc} in {model_type} ({fix})") from None
    return model_type
