"""ElaLoRA (elalora_auto.method) as an adapter: its names are ElaLoraConfig's fields, its rules ElaLoraConfig's
own, its rounds run after optimizer steps, its export is the method's (a stock PEFT LoRA folder).

Two more names make a trial two-stage (`RetrainPlan`; the trial runs it, docs/METHOD.md "Two-stage"):
- `retrain`: `none` (default: one ElaLoRA run, as before) or `lora`: ElaLoRA only finds the rank map (stage 1), then
  a stock PEFT LoRA with that `rank_pattern` trains from scratch for the trial's full steps (stage 2) and is the
  trial's result and exported adapter. Modules whose rank ended at 0 are left out of its targets.
- `search_fraction` (0, 1], default 1.0: stage 1 runs round(search_fraction x the trial's steps) steps, its schedule
  (t_init, t_final, delta_t: step counts of the trial's run, as the spaces resolve them) scaled by the same
  fraction, so a space's fractions keep their meaning. At 1.0 stage 1 is exactly the one-stage trial. Inert with
  `retrain: none`, so a space can sample both.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from elalora_auto.adapters.base import Adapter, Method, RetrainPlan, numeric_config
from elalora_auto.errors import ConfigError, check_fields
from elalora_auto.records import RoundRecord

if TYPE_CHECKING:
    import torch
    from torch import nn


class ElaLoraAdapter(Adapter):
    """ElaLoRA from elalora_auto.method: rounds of prune-and-grow after optimizer steps."""

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> RoundRecord | None:
        record = self.model.update_and_allocate(step, optimizer)
        if record is None:
            return None
        self.round_history.append(RoundRecord.from_dict(record))  # the method's round dict, typed
        return self.round_history[-1]

    def rank_map(self) -> dict[str, int]:
        return dict(self.model.rank_map())

    def num_trainable_parameters(self) -> int:
        return int(self.model.num_trainable_parameters())

    def export_lora(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        self.model.export_lora(path, base_model_name_or_path=base_model_name_or_path)
        return Path(path)


RETRAIN_CHOICES = ("none", "lora")
TWO_STAGE_KEYS = ("retrain", "search_fraction")
SCHEDULE_KEYS = ("t_init", "t_final", "delta_t")


def _two_stage(native: dict[str, Any], total_steps: int) -> tuple[str, int, dict[str, Any]]:
    """(retrain, stage 1's steps, stage 1's configuration) of a translated configuration: the two-stage names
    checked and removed; with retrain `lora` the schedule scaled to stage 1 (delta_t at least 1)."""
    native = dict(native)
    retrain, fraction = native.pop("retrain", "none"), native.pop("search_fraction", 1.0)
    if retrain not in RETRAIN_CHOICES:
        raise ConfigError(f"retrain={retrain!r} must be one of {', '.join(RETRAIN_CHOICES)}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"search_fraction={fraction!r} must be a number in (0, 1] (the share of the trial's "
                          "steps ElaLoRA's search stage takes)")
    if retrain == "none":
        return retrain, total_steps, native
    steps = max(1, round(fraction * total_steps))
    for key in SCHEDULE_KEYS:
        if isinstance(native.get(key), int) and not isinstance(native[key], bool):  # others: the config refuses
            native[key] = max(int(key == "delta_t"), round(native[key] * steps / total_steps))
    return retrain, steps, native


class ElaLoraMethod(Method):
    """ElaLoRA: elastic ranks, a run-length schedule, the trial's seed for new component directions."""

    name = "elalora"
    aliases = {"r": "r_init"}
    scheduled = True
    seed_param = "seed"

    def native_keys(self) -> Iterable[str]:
        """ElaLoraConfig's fields; the run length is the trial's, not a parameter."""
        from elalora_auto.method.config import ElaLoraConfig

        return [f.name for f in dataclasses.fields(ElaLoraConfig) if f.name != "total_steps"] + list(TWO_STAGE_KEYS)

    def check(self, native: dict[str, Any], total_steps: int) -> None:
        """ElaLoraConfig's rules on the ElaLoRA run that trains: the whole trial, or a two-stage trial's stage 1."""
        _, steps, native = _two_stage(native, total_steps)
        self._config(native, steps)

    def _config(self, native: dict[str, Any], steps: int) -> Any:
        from elalora_auto.method.config import ElaLoraConfig

        def config(**values: Any) -> ElaLoraConfig:
            return ElaLoraConfig.from_dict({**values, "total_steps": steps})

        checked = numeric_config(config, native, "elalora parameters")
        check_fields(checked)
        return checked

    def retrain_plan(self, params: Mapping[str, Any], total_steps: int) -> RetrainPlan | None:
        """The two-stage plan of a configuration (shared names) for a `total_steps` trial; None with retrain none."""
        retrain, steps, native = _two_stage(self.translate(params, total_steps), total_steps)
        if retrain == "none":
            return None
        config = self._config(native, steps)
        return RetrainPlan(native, steps, total_steps, config.lora_alpha, config.lora_dropout, method=retrain)

    def wrap(self, model: nn.Module, native: dict[str, Any], total_steps: int, heads: list[str]) -> Adapter:
        """The ElaLoRA run (a two-stage trial builds its stage 1 from `retrain_plan`: the two-stage names left out)."""
        from elalora_auto.method import ElaLoraConfig, get_elalora_model

        own = {k: v for k, v in native.items() if k not in TWO_STAGE_KEYS}
        config = ElaLoraConfig.from_dict({**own, "total_steps": total_steps, "modules_to_save": heads})
        return ElaLoraAdapter(get_elalora_model(model, config), self.name)
