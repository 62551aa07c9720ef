"""ElaLoraModel: injects elastic layers into any nn.Module (transformers or not) and drives the allocator.

Attribute layout (chosen so transformers.Trainer and PEFT-style code both work):
- ``.base_model`` is the wrapped model (its target layers replaced by ElaLoraLayer);
- ``.elalora_config`` is the ElaLoraConfig;
- any other attribute not found on the wrapper is looked up on the base model, so ``.config`` is the base
  model's transformers config (as Trainer expects), like PEFT's PeftModel does.
- ``forward`` passes through to the base model and carries the base model's signature, also at class level
  (each wrapped model class gets a thin subclass), so the Trainer keeps dataset columns and finds ``labels``.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from elalora_auto.errors import ConfigError
from elalora_auto.method.allocator import RankAllocator, RoundRecord
from elalora_auto.method.config import ElaLoraConfig, target_matches
from elalora_auto.method.layer import PARTS, ElaLoraLayer, torch_optimizer

CHECKPOINT_FORMAT = 1
# transformers class-name suffix -> PEFT task type, so exported adapters load with the right PeftModel class.
_TASK_TYPES = {
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForCausalLM": "CAUSAL_LM",
    "LMHeadModel": "CAUSAL_LM",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
}


class ElaLoraModel(nn.Module):
    """A model with elastic-rank adapters; call ``update_and_allocate`` after every optimizer step."""

    def __init__(self, model: nn.Module, config: ElaLoraConfig) -> None:
        super().__init__()
        names = config.match_targets(model)
        config.validate(num_matrices=len(names))
        self.base_model = model
        self.elalora_config = config
        generator = torch.Generator().manual_seed(config.seed)
        for param in model.parameters():
            param.requires_grad_(False)
        layers: dict[str, ElaLoraLayer] = {}
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            layer = ElaLoraLayer(
                getattr(parent, child),
                r_init=config.r_init,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                e_lr_scale=config.e_lr_scale,
                generator=generator,
            )
            setattr(parent, child, layer)
            layers[name] = layer
        self._saved = self._mark_modules_to_save()
        self.allocator = RankAllocator(layers, config, generator)
        self.__class__ = _wrapper_class(type(model))

    def _mark_modules_to_save(self) -> list[str]:
        targets = self.elalora_config.modules_to_save
        saved = [name for name, _ in self.base_model.named_modules() if name and target_matches(targets, name)]
        for target in targets:
            if not any(target_matches([target], name) for name in saved):
                raise ConfigError(f"modules_to_save entry {target!r} matches no module of the model")
        for name in saved:
            self.base_model.get_submodule(name).requires_grad_(True)
        return saved

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # ------------------------------------------------------------------ forward and regulariser
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward; when training, adds orth_reg_weight * orthogonal_regularization() to loss."""
        outputs = self.base_model(*args, **kwargs)
        weight = self.elalora_config.orth_reg_weight
        if self.training and weight > 0 and isinstance(outputs, Mapping) and outputs.get("loss") is not None:
            outputs["loss"] = outputs["loss"] + weight * self.orthogonal_regularization()
        return outputs

    def orthogonal_regularization(self) -> Tensor:
        """Mean over matrices of ||A A^T - I||_F + ||B^T B - I||_F."""
        return torch.stack([layer.orth_penalty() for layer in self.layers.values()]).mean()

    # ------------------------------------------------------------------ allocation
    @property
    def layers(self) -> dict[str, ElaLoraLayer]:
        """Elastic layers by full module name (relative to the base model)."""
        return self.allocator.layers

    @property
    def round_history(self) -> list[RoundRecord]:
        return self.allocator.history

    def update_and_allocate(self, global_step: int, optimizer: object | None = None) -> RoundRecord | None:
        """Update importance and maybe run a round; call after optimizer.step(), before zero_grad().

        Pass the optimizer (torch or accelerate's wrapper) whenever one holds state for the adapters: its
        state is resized with the parameters. Returns the round record when ranks moved.
        """
        return self.allocator.step(global_step, torch_optimizer(optimizer))

    def rank_map(self) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers.items()}

    def churn_stats(self) -> dict[str, int]:
        return self.allocator.churn_stats()

    def num_trainable_parameters(self) -> int:
        """Active components r (in + out + 1) of every matrix plus the modules_to_save parameters."""
        adapters = sum(layer.rank * (layer.in_features + layer.out_features + 1) for layer in self.layers.values())
        saved = {id(p): p for name in self._saved for p in self.base_model.get_submodule(name).parameters()}
        return adapters + sum(p.numel() for p in saved.values())

    # ------------------------------------------------------------------ export
    def export_lora(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Write a stock PEFT LoRA adapter folder (per-matrix rank via rank_pattern, scaling 1 via alpha_pattern)."""
        from peft import LoraConfig, get_peft_model

        path = Path(path)
        ranks = self.rank_map()
        plain = copy.deepcopy(self.base_model)
        for name in ranks:
            parent_name, _, child = name.rpartition(".")
            parent = plain.get_submodule(parent_name)
            setattr(parent, child, getattr(parent, child).base_layer)
        plain.requires_grad_(False)
        if base_model_name_or_path is None:
            base_model_name_or_path = getattr(getattr(plain, "config", None), "name_or_path", None) or None
        pattern = {re.escape(name): rank for name, rank in ranks.items()}
        lora_config = LoraConfig(
            r=max(ranks.values()),
            lora_alpha=max(ranks.values()),
            lora_dropout=self.elalora_config.lora_dropout,
            target_modules=list(ranks),
            rank_pattern=pattern,
            alpha_pattern=dict(pattern),
            modules_to_save=list(self.elalora_config.modules_to_save) or None,
            fan_in_fan_out=any(layer.fan_in_fan_out for layer in self.layers.values()),
            task_type=_task_type(type(self.base_model).__name__),
        )
        peft_model = get_peft_model(plain, lora_config)
        peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path  # get_peft_model resets it
        inner = peft_model.base_model.model
        with torch.no_grad():
            for name, layer in self.layers.items():
                target = inner.get_submodule(name)
                scaled_a = layer.lora_E * (layer.e_lr_scale * layer.scaling) * layer.lora_A
                target.lora_A["default"].weight.copy_(scaled_a)
                target.lora_B["default"].weight.copy_(layer.lora_B)
        peft_model.save_pretrained(str(path))
        return path

    # ------------------------------------------------------------------ native checkpoint
    def save_checkpoint(self, path: str | Path, optimizer: object | None = None) -> None:
        """Everything needed to resume bit-exactly: ranks, trainable weights, statistics, allocator, optimizer."""
        optimizer = torch_optimizer(optimizer)
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.elalora_config.to_dict(),
            "ranks": self.rank_map(),
            "weights": {n: p.detach().clone() for n, p in self.base_model.named_parameters() if p.requires_grad},
            "stats": {
                name: {"bar": dict(layer.ipt_bar), "unc": dict(layer.ipt_unc), "born": list(layer.born)}
                for name, layer in self.layers.items()
            },
            "allocator": self.allocator.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)

    def load_checkpoint(self, path: str | Path, optimizer: object | None = None) -> None:
        """Restore a save_checkpoint file into this model (built with the same config) and optionally optimizer."""
        optimizer = torch_optimizer(optimizer)
        state = torch.load(path, map_location="cpu", weights_only=False)
        if set(state["ranks"]) != set(self.layers):
            raise ConfigError(f"checkpoint {path} adapts other modules than this model; rebuild with its config")
        for name, layer in self.layers.items():
            rank = state["ranks"][name]
            for part in PARTS:
                param = layer.param(part)
                shape = list(param.shape)
                shape[0 if part != "B" else 1] = rank
                with torch.no_grad():
                    param.set_(torch.empty(shape, dtype=param.dtype, device=param.device))
                param.grad = None
            stats = state["stats"][name]
            device = layer.lora_A.device
            layer.ipt_bar = {part: t.to(device) for part, t in stats["bar"].items()}
            layer.ipt_unc = {part: t.to(device) for part, t in stats["unc"].items()}
            layer.born = list(stats["born"])
        params = dict(self.base_model.named_parameters())
        with torch.no_grad():
            for name, value in state["weights"].items():
                params[name].copy_(value)
        self.allocator.load_state_dict(state["allocator"])
        if optimizer is not None:
            if state["optimizer"] is None:
                raise ConfigError(f"checkpoint {path} holds no optimizer state; load without an optimizer")
            optimizer.load_state_dict(state["optimizer"])


def get_elalora_model(model: nn.Module, config: ElaLoraConfig) -> ElaLoraModel:
    """Wrap ``model``: adapt the target Linear/Conv1D layers, freeze the rest except modules_to_save."""
    return ElaLoraModel(model, config)


def _task_type(class_name: str) -> str | None:
    return next((task for suffix, task in _TASK_TYPES.items() if class_name.endswith(suffix)), None)


_WRAPPER_CLASSES: dict[type, type] = {}


def _wrapper_class(base_class: type) -> type:
    """An ElaLoraModel subclass whose forward carries ``base_class.forward``'s signature (Trainer inspects it)."""
    if base_class not in _WRAPPER_CLASSES:

        def forward(self: ElaLoraModel, *args: Any, **kwargs: Any) -> Any:
            return ElaLoraModel.forward(self, *args, **kwargs)

        forward.__signature__ = inspect.signature(base_class.forward)  # type: ignore[attr-defined]
        forward.__doc__ = ElaLoraModel.forward.__doc__
        _WRAPPER_CLASSES[base_class] = type(
            f"ElaLoraModel[{base_class.__name__}]", (ElaLoraModel,), {"forward": forward, "__module__": __name__}
        )
    return _WRAPPER_CLASSES[base_class]
