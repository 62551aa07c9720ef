"""PEFT LoRA: one rank everywhere, or per module through PEFT's `rank_pattern` (a two-stage ElaLoRA trial's retraining
stage builds it so). Its names are PEFT's (r for the shared r_init), its rules the shared ones plus LoraConfig's own,
its export PEFT's save_pretrained."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from elalora_auto.adapters.base import Adapter, Method, check_targets, module_key, peft_config, unique_modules
from elalora_auto.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")


class LoraAdapter(Adapter):
    """A PEFT LoRA model (any rank pattern): ranks read from the lora_A shapes, everything trainable counted."""

    def rank_map(self) -> dict[str, int]:
        return {
            module_key(n, "lora_A"): p.shape[0] for n, p in self.model.named_parameters() if ".lora_A." in n
        }

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def export_lora(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        config = self.model.peft_config["default"]
        if base_model_name_or_path is not None:
            config.base_model_name_or_path = str(base_model_name_or_path)
        config.modules_to_save = unique_modules(config.modules_to_save)
        self.model.save_pretrained(str(path))
        return Path(path)


class LoraMethod(Method):
    """PEFT LoRA at the shared rank r_init."""

    name = "lora"
    aliases = {"r_init": "r"}

    def native_keys(self) -> Iterable[str]:
        return LORA_KEYS + ("rank_pattern",)

    def check(self, native: dict[str, Any], total_steps: int) -> None:
        self.check_shared_rules(native)
        check_rank_pattern(native.get("rank_pattern", {}))
        peft_config("LoraConfig", native, None, "lora parameters")

    def wrap(self, model: nn.Module, native: dict[str, Any], total_steps: int, heads: list[str]) -> Adapter:
        from peft import get_peft_model

        check_targets(model, native["target_modules"])
        config = peft_config("LoraConfig", native, heads, "lora parameters", model)
        return LoraAdapter(get_peft_model(model, config), self.name)


def check_rank_pattern(pattern: Any) -> None:
    """PEFT's rank_pattern: module-name patterns (regular expressions, matched at a name's end) to ranks >= 1;
    PEFT itself accepts a rank of 0 or a text and fails later, inside the model."""
    if not isinstance(pattern, dict):
        raise ConfigError(f"rank_pattern must map module names to ranks (e.g. {{query: 4}}), got {pattern!r}")
    for name, rank in pattern.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"rank_pattern[{name!r}]={rank!r} must be a whole number >= 1 (leave a module out of "
                              "target_modules instead of rank 0)")
