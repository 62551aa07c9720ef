"""Every value a space lets a trial draw, checked against the method's rules before the study is touched.

A space is validated at its corners: each parameter at its low and high end (each choice of a categorical), the
others at their defaults, resolved by the space's own `suggest` (so fractions become step counts exactly as in a
trial) and skipped where the space's constraints prune the combination anyway. Each corner must make a valid
method configuration by the method's own rules (`adapters.get_method(name).configure`: the names, naming the valid
ones; the shared vocabulary's rules; the method's config, e.g. ElaLoraConfig or PEFT's LoraConfig); training
parameters obey the TrialSpec's training rules.
"""

from __future__ import annotations

from typing import Any, Iterator

from elalora_auto.errors import ConfigError, check_fields
from elalora_auto.search.space import Param, SearchSpace

# TrainingSettings fields that must be > 0 or >= 0 (the one rule set for `train` and the spaces' training_params).
TRAINING_POSITIVE = ("learning_rate", "max_steps", "epochs", "batch_size", "eval_batch_size", "grad_accum",
                     "max_length", "log_every")
TRAINING_NON_NEGATIVE = ("warmup_ratio", "weight_decay", "max_grad_norm", "eval_every", "seed")
DATA_POSITIVE = ("max_train_samples", "max_eval_samples")
DATA_NON_NEGATIVE = ("validation_fraction", "seed")


def check_training(spec: Any) -> None:
    """Types and ranges of a TrialSpec's training and data settings (`train --set training.learning_rate=abc`)."""
    check_fields(spec.training, "training.", TRAINING_POSITIVE, TRAINING_NON_NEGATIVE)
    check_fields(spec.data, "data.", DATA_POSITIVE, DATA_NON_NEGATIVE)
    if not 0 <= spec.data.validation_fraction < 1:
        raise ConfigError(f"data.validation_fraction: must be in [0, 1), got {spec.data.validation_fraction}")


def check_space(space: SearchSpace, total_steps: int) -> None:
    """Every corner of the space (see the module docstring); a ConfigError names the corner and the rule."""
    for where, method_params, training in corners(space, total_steps):
        try:
            check_method_params(space.method, method_params, total_steps)
            _check_training_values(training)
        except ConfigError as exc:
            raise ConfigError(f"{space.source}: {where}: {exc}") from None


def corners(space: SearchSpace, total_steps: int,
            model_type: str | None = None) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, method params, training params) at each end of each parameter, the others at their defaults, then
    each anchor (a combination the ends alone do not try); combinations the space's constraints prune are left
    out, as a trial never trains them."""
    import optuna

    base = {p.name: _middle(p) if p.default is None else p.default for p in space.params}
    yield "the defaults (midpoints where none)", *_resolve(space, base, total_steps, model_type)
    by_name = {p.name: p for p in space.params}
    points = [(f"{p.section}.{p.name} = {end!r}", {p.name: end}) for p in space.params
              for end in (p.choices if p.type == "categorical" else (p.low, p.high))]
    points += [(f"anchors[{i}] ({', '.join(f'{by_name[k].section}.{k} = {v!r}' for k, v in anchor.items())})", anchor)
               for i, anchor in enumerate(space.anchors)]
    for where, change in points:
        try:
            values = _resolve(space, {**base, **change}, total_steps, model_type)
        except optuna.TrialPruned:
            continue
        yield where, *values


def _middle(param: Param) -> Any:
    """A value inside the range for a parameter with no default (the first choice of a categorical)."""
    if param.type == "categorical":
        return param.choices[0]
    if param.type == "int":
        return int((param.low + param.high) // 2)
    if param.type == "log":
        return float((param.low * param.high) ** 0.5)
    return param.low if param.type == "step" else (param.low + param.high) / 2


def _resolve(space: SearchSpace, raw: dict[str, Any], total_steps: int,
             model_type: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's own resolution (`SearchSpace.suggest`) on fixed values (module sets: `plan.check_target_modules`)."""
    import optuna

    return space.suggest(optuna.trial.FixedTrial(raw), {"total_steps": total_steps, "model_type": model_type})


def check_method_params(method: str, params: dict[str, Any], total_steps: int) -> None:
    """One corner's method parameters against the method's rules, as the registry states them (ConfigError, one
    line); the module names are checked on the model (`plan.check_target_modules`)."""
    from elalora_auto.adapters import check_params

    check_params(method, {k: v for k, v in params.items() if k != "target_modules"}, total_steps)


def _check_training_values(training: dict[str, Any]) -> None:
    from elalora_auto.spec import TrainingSettings

    check_fields(TrainingSettings(**training), "training_params.", TRAINING_POSITIVE, TRAINING_NON_NEGATIVE)
