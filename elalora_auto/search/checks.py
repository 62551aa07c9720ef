"""Every value a space lets a trial draw, checked against the method's rules before the study is touched.

A space is validated at its corners: each parameter at its low and high end (each choice of a categorical), the
others at their defaults, resolved by the space's own `suggest` (so fractions become step counts exactly as in a
trial) and skipped where the space's constraints prune the combination anyway. Each corner must make a valid
method configuration: ElaLoraConfig for ElaLoRA; for LoRA and AdaLoRA the same rules for the shared vocabulary
(r_init >= 1, dropout and betas in [0, 1), schedule steps, ...), r_target < r_init, and PEFT's own config;
training parameters obey the TrialSpec's training rules. Parameter names are checked first, naming the valid ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from elalora_auto.errors import ConfigError, check_fields, reject_unknown
from elalora_auto.search.space import Param, SearchSpace

# TrainingSettings fields that must be > 0 or >= 0 (the one rule set for `train` and the spaces' training_params).
TRAINING_POSITIVE = ("learning_rate", "max_steps", "epochs", "batch_size", "eval_batch_size", "grad_accum",
                     "max_length", "log_every")
TRAINING_NON_NEGATIVE = ("warmup_ratio", "weight_decay", "max_grad_norm", "eval_every", "seed")
DATA_POSITIVE = ("max_train_samples", "max_eval_samples")
DATA_NON_NEGATIVE = ("validation_fraction", "seed")
# Shared-vocabulary names whose rules ElaLoraConfig states for every method (native PEFT names mapped back).
_SHARED_RULES = {"r_init": "r_init", "r": "r_init", "init_r": "r_init", "lora_alpha": "lora_alpha",
                 "lora_dropout": "lora_dropout", "t_init": "t_init", "tinit": "t_init", "t_final": "t_final",
                 "tfinal": "t_final", "delta_t": "delta_t", "deltaT": "delta_t", "beta1": "beta1", "beta2": "beta2",
                 "orth_reg_weight": "orth_reg_weight", "gamma": "orth_reg_weight"}


def check_training(spec: Any) -> None:
    """Types and ranges of a TrialSpec's training and data settings (`train --set training.learning_rate=abc`)."""
    check_fields(spec.training, "training.", TRAINING_POSITIVE, TRAINING_NON_NEGATIVE)
    check_fields(spec.data, "data.", DATA_POSITIVE, DATA_NON_NEGATIVE)
    if not 0 <= spec.data.validation_fraction < 1:
        raise ConfigError(f"data.validation_fraction: must be in [0, 1), got {spec.data.validation_fraction}")


def elalora_names() -> list[str]:
    """What an ElaLoRA space may name: ElaLoraConfig's fields and the shared aliases (the run length is not one)."""
    from elalora_auto.method.config import ElaLoraConfig

    return sorted({f.name for f in dataclasses.fields(ElaLoraConfig)} - {"total_steps"} | {"r", "gamma"})


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
    """(where, method params, training params) at each end of each parameter, the others at their defaults;
    combinations the space's constraints prune are left out, as a trial never trains them."""
    import optuna

    base = {p.name: _middle(p) if p.default is None else p.default for p in space.params}
    yield "the defaults (midpoints where none)", *_resolve(space, base, total_steps, model_type)
    for param in space.params:
        ends = param.choices if param.type == "categorical" else (param.low, param.high)
        for end in ends:
            try:
                values = _resolve(space, {**base, param.name: end}, total_steps, model_type)
            except optuna.TrialPruned:
                continue
            yield f"{param.section}.{param.name} = {end!r}", *values


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
    """One corner's method parameters against the method's rules (ConfigError, one line)."""
    from elalora_auto.adapters import native_params
    from elalora_auto.method.config import ElaLoraConfig

    params = {k: v for k, v in params.items() if k not in ("target_modules", "modules_to_save")}
    if method == "elalora":
        reject_unknown(params, elalora_names(), "unknown elalora parameter")
    native = native_params(method, params, total_steps)
    try:
        if method == "elalora":
            config = ElaLoraConfig.from_dict({**native, "total_steps": total_steps})
        else:  # the shared vocabulary obeys ElaLoraConfig's rules whatever the method, then PEFT's own config
            config = ElaLoraConfig(**{_SHARED_RULES[k]: v for k, v in native.items() if k in _SHARED_RULES})
    except TypeError:  # a rule compared a number with text: name the text values instead
        text = {k: v for k, v in params.items() if isinstance(v, str)}
        raise ConfigError(f"a number is expected where these are text: {text or params}") from None
    check_fields(config)
    if method != "elalora":
        _check_peft_config(method, native, total_steps)


def _check_peft_config(method: str, native: dict[str, Any], total_steps: int) -> None:
    from peft import AdaLoraConfig, LoraConfig, TaskType

    try:
        if method == "lora":
            LoraConfig(task_type=TaskType.SEQ_CLS, **native)
            return
        config = AdaLoraConfig(task_type=TaskType.SEQ_CLS, total_step=total_steps, **native)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad {method} parameters: {' '.join(str(exc).split())}") from None
    if isinstance(config.target_r, bool) or not isinstance(config.target_r, int) or \
            not 1 <= config.target_r < config.init_r:
        raise ConfigError(f"r_target={config.target_r!r} must be a whole number in [1, r_init - 1 = "
                          f"{config.init_r - 1}] (PEFT's AdaLoRA fails when there is nothing to prune)")


def _check_training_values(training: dict[str, Any]) -> None:
    from elalora_auto.spec import TrainingSettings

    check_fields(TrainingSettings(**training), "training_params.", TRAINING_POSITIVE, TRAINING_NON_NEGATIVE)
