"""ElaLoraModel: injects elastic layers into any nn.Module (transformers or not) and drives the allocator.

Attribute layout (chosen so transformers.Trainer and PEFT-style code both work):
- ``.base_model`` is the wrapped model (its target layers replaced by ElaLoraLayer);
- ``.elalora_config`` is the ElaLoraConfig;
- any other attribute not found on the wrapper is looked up on the base model, so ``.config`` is the base
  model's transformers config (as Trainer expects), like PEFT's PeftModel does.
- ``forward`` passes through to the base model and carries the base model's signature, also at class level
  (each wrapped model class gets a thin subclass), so the Trainer keeps dataset columns and finds ``labels``.

State: ``state_dict()`` holds only tensors (safetensors, hence ``Trainer.save_model``, can write it): the
parameters, every layer's importance statistics and birth rounds (buffers), and the allocator's round index,
last step and generator state (``elalora_allocator.*``). A state dict saved after rounds loads into a model
freshly built with the same config (each layer resizes itself first). Not in it: the round history (a log; kept by
``save_checkpoint``) and optimizer state, which never is in a model's state dict: an optimizer built before
``load_state_dict`` keeps the same Parameter objects and works as long as it has no state yet; to resume Adam
moments use ``save_checkpoint(path, optimizer)`` / ``load_checkpoint(path, optimizer)``.
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
from elalora_auto.method.layer import ElaLoraLayer, torch_optimizer

CHECKPOINT_FORMAT = 2
# state_dict keys (under the wrapper's prefix) of the allocator's tensor state; see ElaLoraModel._save_to_state_dict.
ALLOCATOR_PREFIX = "elalora_allocator."
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
                init=config.init,
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
        """The base model's forward; when training, adds orth_reg_weight * orthogonal_regularization() to loss (with
        orth_reg_every n > 1: n times that, on optimizer steps 1, n + 1, 2n + 1, ... only; every micro-batch of a
        step alike, as the step is the allocator's last one plus one)."""
        outputs = self.base_model(*args, **kwargs)
        config = self.elalora_config
        weight, every = config.orth_reg_weight, config.orth_reg_every
        if self.training and weight > 0 and isinstance(outputs, Mapping) and outputs.get("loss") is not None:
            if (self.allocator.last_step or 0) % every == 0:
                outputs["loss"] = outputs["loss"] + weight * every * self.orthogonal_regularization()
        return outputs

    def orthogonal_regularization(self) -> Tensor:
        """Mean over matrices of their ``orth_penalty()`` (||A A^T - I||_F + ||B^T B - I||_F in the paper init),
        computed for all matrices at once (method/batched.py)."""
        return self.allocator.batch.orthogonal_regularization()

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
        """Write a stock PEFT LoRA adapter folder (per-matrix rank via rank_pattern, scaling 1 via alpha_pattern);
        a matrix at rank 0 (min_rank 0) is left as its base layer."""
        from peft import LoraConfig, get_peft_model

        path = Path(path)
        ranks = {name: rank for name, rank in self.rank_map().items() if rank > 0}  # PEFT LoRA has no rank 0
        plain = copy.deepcopy(self.base_model)
        for name in self.layers:
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
        saved_config = peft_model.peft_config["default"]
        saved_config.base_model_name_or_path = base_model_name_or_path  # get_peft_model resets it
        # PEFT's sequence-classification model appends its head names to the list: saved once each.
        if saved_config.modules_to_save is not None:
            saved_config.modules_to_save = list(dict.fromkeys(saved_config.modules_to_save))
        inner = peft_model.base_model.model
        with torch.no_grad():
            for name in ranks:
                layer, target = self.layers[name], inner.get_submodule(name)
                scaled_a = layer.lora_E * (layer.e_lr_scale * layer.scaling) * layer.lora_A
                target.lora_A["default"].weight.copy_(scaled_a)
                target.lora_B["default"].weight.copy_(layer.lora_B)
        peft_model.save_pretrained(str(path))
        return path

    # ------------------------------------------------------------------ state dict
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, value in self.allocator.tensor_state().items():
            destination[prefix + ALLOCATOR_PREFIX + key] = value

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        own = prefix + ALLOCATOR_PREFIX
        unexpected_keys[:] = [key for key in unexpected_keys if not key.startswith(own)]
        values = {key[len(own) :]: value for key, value in state_dict.items() if key.startswith(own)}
        missing = [own + key for key in self.allocator.tensor_state() if key not in values]
        if missing:
            missing_keys.extend(missing)
        else:
            self.allocator.load_tensor_state(values)

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The state_dict entries ElaLoRA owns: trainable weights, statistics, birth rounds, allocator state."""
        keys = {"base_model." + n for n, p in self.base_model.named_parameters() if p.requires_grad}
        for name, layer in self.layers.items():
            keys |= {f"base_model.{name}.{buffer}" for buffer, _ in layer.named_buffers(recurse=False)}
        return {k: v for k, v in self.state_dict().items() if k in keys or k.startswith(ALLOCATOR_PREFIX)}

    # ------------------------------------------------------------------ native checkpoint
    def save_checkpoint(self, path: str | Path, optimizer: object | None = None) -> None:
        """Everything needed to resume bit-exactly: adapter_state_dict, round history and optimizer state."""
        optimizer = torch_optimizer(optimizer)
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.elalora_config.to_dict(),
            "ranks": self.rank_map(),
            "state": {k: v.detach().clone() for k, v in self.adapter_state_dict().items()},
            "history": [dict(record) for record in self.allocator.history],
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)

    def load_checkpoint(self, path: str | Path, optimizer: object | None = None) -> None:
        """Restore a save_checkpoint file into this model (built with the same config) and optionally optimizer.

        Ranks are restored by load_state_dict (the layers resize themselves), so the model may be fresh at r_init.
        """
        optimizer = torch_optimizer(optimizer)
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"checkpoint {path} has format {state.get('format')}, expected {CHECKPOINT_FORMAT}; "
                              "re-save it with this version")
        if set(state["ranks"]) != set(self.layers):
            raise ConfigError(f"checkpoint {path} adapts other modules than this model; rebuild with its config")
        result = self.load_state_dict(state["state"], strict=False)
        missing = sorted(set(self.adapter_state_dict()) & set(result.missing_keys))
        if result.unexpected_keys or missing:
            raise ConfigError(f"checkpoint {path} does not fit this model (unexpected "
                              f"{result.unexpected_keys[:3]}, missing {missing[:3]}); rebuild with its config")
        self.allocator.history = [dict(record) for record in state["history"]]
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
