"""PEFT AdaLoRA, driven for the user (`update_and_allocate` after every optimizer step) and exported as a stock
LoRA folder. Its names are PEFT's (init_r, target_r, tinit, tfinal, deltaT), its rules the shared ones, PEFT's
AdaLoraConfig and r_target < r_init."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from elalora_auto.adapters.base import Adapter, Method, check_targets, module_key, peft_config, unique_modules
from elalora_auto.adapters.lora import LORA_KEYS
from elalora_auto.errors import ConfigError
from elalora_auto.records import RoundRecord, changed_ranks

if TYPE_CHECKING:
    import torch
    from torch import nn

ADALORA_KEYS = LORA_KEYS[1:] + ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight")


def _head_parameters(model: nn.Module) -> int:
    """Trainable parameters outside the low-rank factors (the modules_to_save copies)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n)


class AdaLoraAdapter(Adapter):
    """PEFT AdaLoRA, driven for the user: `update_and_allocate` runs after every optimizer step.

    PEFT masks E instead of shrinking tensors, so AdaLoRA trains with init_r shapes throughout;
    `num_trainable_parameters` counts what the final adapter keeps (unmasked components of A, E, B plus the
    heads), which is what an exported adapter costs, not what the optimizer updated during training.
    """

    def _peft(self) -> Any:
        return self.model.base_model  # the AdaLoraModel under the PeftModel

    def _config(self) -> Any:
        return self.model.peft_config["default"]

    def _live(self, pattern: dict[str, Any] | None) -> dict[str, list[bool]]:
        """Per module: which components are live under PEFT's `rank_pattern` (None: all, as before the first
        allocation); plain Python lists, so counting ranks reads no tensor."""
        pattern = pattern or {}
        live = {}
        for name, param in self.model.named_parameters():
            if ".lora_E." in name:
                key = name.removeprefix("base_model.model.")
                flags = pattern.get(name, pattern.get(key, pattern.get(key.replace(".default", ""))))
                live[module_key(name, "lora_E")] = [True] * param.shape[0] if flags is None else [
                    bool(flag) for flag in flags]
        return live

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> RoundRecord | None:
        """PEFT's update; the ranks are read only when PEFT set a new rank_pattern (the ranks' one source), so a
        step without masking does no per-matrix work here."""
        config = self._config()
        pattern = config.rank_pattern
        self._peft().update_and_allocate(step)
        if config.rank_pattern is pattern:
            return None
        before, after = self._ranks(pattern), self.rank_map()
        if after == before:
            return None
        record = changed_ranks(step, before, after)
        self.round_history.append(record)
        return record

    def rank_map(self) -> dict[str, int]:
        return self._ranks(self._config().rank_pattern)

    def _ranks(self, pattern: dict[str, Any] | None) -> dict[str, int]:
        return {name: sum(flags) for name, flags in self._live(pattern).items()}

    def num_trainable_parameters(self) -> int:
        shapes = {}
        for name, param in self.model.named_parameters():
            if ".lora_A." in name:
                shapes.setdefault(module_key(name, "lora_A"), [0, 0])[0] = param.shape[1]
            elif ".lora_B." in name:
                shapes.setdefault(module_key(name, "lora_B"), [0, 0])[1] = param.shape[0]
        ranks = self.rank_map()
        return sum(r * (shapes[k][0] + shapes[k][1] + 1) for k, r in ranks.items()) + _head_parameters(self.model)

    def export_lora(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Convert to a stock LoRA folder: exact, since AdaLoRA's delta is B diag(E) A * alpha / init_r.

        Live components only: lora_A = diag(E) A * scaling / ranknum, lora_B = B, with rank_pattern =
        alpha_pattern = r per module (LoRA scaling 1). A module with no live component has a zero delta and is
        left out of the targets.
        """
        from peft import LoraConfig, get_peft_model_state_dict
        from safetensors.torch import save_file

        cfg = self._config()
        modules = dict(self._peft().model.named_modules())
        tensors: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        for key, flags in self._live(cfg.rank_pattern).items():
            layer = modules[key]
            live = [i for i, flag in enumerate(flags) if flag]
            if not live:
                continue
            a = layer.lora_A["default"].detach()[live]
            e = layer.lora_E["default"].detach()[live]
            scale = layer.scaling["default"] / (layer.ranknum["default"].item() + 1e-5)
            tensors[f"base_model.model.{key}.lora_A.weight"] = (e * a * scale).contiguous().cpu()
            tensors[f"base_model.model.{key}.lora_B.weight"] = layer.lora_B["default"].detach()[:, live].contiguous().cpu()
            ranks[key] = len(live)
        if not ranks:
            raise ConfigError("AdaLoRA masked every component; nothing to export (raise r_target)")
        with warnings.catch_warnings():  # PEFT warns about the zero-rank modules it resizes; they are dropped here
            warnings.simplefilter("ignore")
            state = get_peft_model_state_dict(self.model)
        heads = {k: v.cpu() for k, v in state.items() if ".lora_" not in k and "ranknum" not in k}
        # Full module names, so 'layer.0.output.dense' cannot also match 'layer.0.attention.output.dense'.
        pattern = dict(ranks)
        lora_cfg = LoraConfig(
            r=max(ranks.values()),
            lora_alpha=max(ranks.values()),
            lora_dropout=cfg.lora_dropout,
            target_modules=sorted(ranks),
            rank_pattern=pattern,
            alpha_pattern=dict(pattern),
            modules_to_save=unique_modules(cfg.modules_to_save),
            task_type=cfg.task_type,
            base_model_name_or_path=str(base_model_name_or_path or cfg.base_model_name_or_path),
        )
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        lora_cfg.save_pretrained(str(out))
        save_file({**tensors, **heads}, str(out / "adapter_model.safetensors"))
        return out


class AdaLoraMethod(Method):
    """PEFT AdaLoRA from init_r down to target_r on average, on the run-length schedule."""

    name = "adalora"
    aliases = {"r_init": "init_r", "r_target": "target_r", "t_init": "tinit", "t_final": "tfinal",
               "delta_t": "deltaT"}
    scheduled = True

    def native_keys(self) -> Iterable[str]:
        return ADALORA_KEYS

    def check(self, native: dict[str, Any], total_steps: int) -> None:
        self.check_shared_rules(native)
        config = peft_config("AdaLoraConfig", native, None, "adalora parameters", total_step=total_steps)
        if isinstance(config.target_r, bool) or not isinstance(config.target_r, int) or \
                not 1 <= config.target_r < config.init_r:
            raise ConfigError(f"r_target={config.target_r!r} must be a whole number in [1, r_init - 1 = "
                              f"{config.init_r - 1}] (PEFT's AdaLoRA fails when there is nothing to prune)")

    def wrap(self, model: nn.Module, native: dict[str, Any], total_steps: int, heads: list[str]) -> Adapter:
        from peft import get_peft_model

        check_targets(model, native["target_modules"])
        config = peft_config("AdaLoraConfig", native, heads, "adalora parameters", model,
                             total_step=total_steps)
        return AdaLoraAdapter(get_peft_model(model, config), self.name)
