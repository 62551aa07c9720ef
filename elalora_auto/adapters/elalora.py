"""ElaLoRA (elalora_auto.method) as an adapter: its names are ElaLoraConfig's fields, its rules ElaLoraConfig's
own, its rounds run after optimizer steps, its export is the method's (a stock PEFT LoRA folder)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from elalora_auto.adapters.base import Adapter, Method, numeric_config
from elalora_auto.errors import check_fields
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


class ElaLoraMethod(Method):
    """ElaLoRA: elastic ranks, a run-length schedule, the trial's seed for new component directions."""

    name = "elalora"
    aliases = {"r": "r_init"}
    scheduled = True
    seed_param = "seed"

    def native_keys(self) -> Iterable[str]:
        """ElaLoraConfig's fields; the run length is the trial's, not a parameter."""
        from elalora_auto.method.config import ElaLoraConfig

        return [f.name for f in dataclasses.fields(ElaLoraConfig) if f.name != "total_steps"]

    def check(self, native: dict[str, Any], total_steps: int) -> None:
        from elalora_auto.method.config import ElaLoraConfig

        def config(**values: Any) -> ElaLoraConfig:
            return ElaLoraConfig.from_dict({**values, "total_steps": total_steps})

        check_fields(numeric_config(config, native, "elalora parameters"))

    def wrap(self, model: nn.Module, native: dict[str, Any], total_steps: int, heads: list[str]) -> Adapter:
        from elalora_auto.method import ElaLoraConfig, get_elalora_model

        config = ElaLoraConfig.from_dict({**native, "total_steps": total_steps, "modules_to_save": heads})
        return ElaLoraAdapter(get_elalora_model(model, config), self.name)
