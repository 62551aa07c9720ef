"""ElaLoraCallback: makes a plain transformers.Trainer run ElaLoRA with no other code.

``on_optimizer_step`` is the one hook where the gradients of the step are still present (after the optimizer
step, before zero_grad); by ``on_step_end`` they are cleared and importance would be all zeros. The Trainer has
not yet incremented ``state.global_step`` there, so the step just taken is ``global_step + 1``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from elalora_auto.method.model import ElaLoraModel


class ElaLoraCallback(TrainerCallback):
    """Fills total_steps from the Trainer, validates, and calls update_and_allocate once per optimizer step."""

    def __init__(self, model: ElaLoraModel | None = None) -> None:
        self.model = model

    def _find(self, model: nn.Module | None) -> ElaLoraModel:
        if self.model is None:
            modules = model.modules() if model is not None else ()
            found = next((m for m in modules if isinstance(m, ElaLoraModel)), None)
            if found is None:
                raise TypeError("ElaLoraCallback needs an ElaLoraModel: train the model from get_elalora_model()")
            self.model = found
        return self.model

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        elalora = self._find(kwargs.get("model"))
        config = elalora.elalora_config
        if config.total_steps is None:
            config.total_steps = state.max_steps
        config.validate(num_matrices=len(elalora.layers))

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._find(kwargs.get("model")).update_and_allocate(state.global_step + 1, kwargs.get("optimizer"))
