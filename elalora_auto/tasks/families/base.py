"""The TaskFamily interface and the family registry: what a kind of fine-tuning needs, whatever the task.

A family (sequence classification today; sequence-to-sequence, token or image classification, causal LM later)
owns everything that differs between kinds of tasks: the model class and its config for a task (head size), the
tokenisation of a row and the labels, the collation of a batch, a batch's predictions, the metrics over them, a
trivial baseline, the labels written into a saved config, and the names other libraries know the kind by (PEFT's
task_type, the transformers pipeline task). A task names its family (`TaskSpec.family`); the loading, the trial,
the search's plan and export ask `family_of(task)`, so adding a family is one module with a `TaskFamily` subclass
and its instance on the registry line in families/__init__.py.

Every metric a family reports is higher-is-better: the search maximises the task's primary metric (a family
whose natural score is a loss reports its negation).

Light to import: torch and transformers load when a family's methods run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from elalora_auto.errors import UserError, lookup
from elalora_auto.tasks.registry import DEFAULT_FAMILY

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from elalora_auto.tasks.registry import TaskSpec

__all__ = ["DEFAULT_FAMILY", "Collator", "DropLength", "Encoder", "TaskFamily", "family_of", "get_family",
           "peft_task_type", "register_family"]

Encoder = Callable[[dict[str, list]], dict[str, Any]]  # a batch of rows (column -> values) -> model inputs + labels
Collator = Callable[[list[dict[str, Any]]], dict[str, Any]]  # tokenised rows -> one padded batch of tensors


class DropLength:
    """A collator that first drops the "length" column (kept for length-grouped batching; no model takes it)."""

    def __init__(self, pad: Collator) -> None:
        self.pad = pad

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.pad([{k: v for k, v in f.items() if k != "length"} for f in features])


class TaskFamily(ABC):
    """One registry entry: a kind of fine-tuning. Subclass it in one module per family and add the instance to
    families/__init__.py's registry line; tasks name it by `name`."""

    name: ClassVar[str]
    peft_task_type: ClassVar[str]  # PEFT's TaskType value: which PeftModel class wraps the model
    pipeline_task: ClassVar[str]  # the transformers pipeline / MLflow transformers-flavour task
    architectures: ClassVar[tuple[str, ...]]  # endings of the transformers class names of this family's models

    @abstractmethod
    def model_class(self) -> Any:
        """The transformers auto class that loads a base model for this family (from_pretrained, from_config)."""

    @abstractmethod
    def config_kwargs(self, task: TaskSpec) -> dict[str, Any]:
        """The model config's keys for `task` (its head size), as `from_pretrained` and `AutoConfig` take them;
        hashable values: the base model is cached by them."""

    @abstractmethod
    def head_note(self, task: TaskSpec) -> str:
        """Why a checkpoint's head did not fit `task`, as said once when it is re-initialised."""

    @abstractmethod
    def encoder(self, task: TaskSpec, tokenizer: Any, max_length: int) -> Encoder:
        """Tokenise a batch of the task's rows (its text columns and "label") into model inputs and "labels",
        unpadded (the tokenisation cache stores them; `tokenize` adds "length")."""

    @abstractmethod
    def pad(self, tokenizer: Any) -> Collator:
        """The dynamic-padding collator: each batch padded to its own longest row."""

    @abstractmethod
    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor],
                task: TaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, labels) of one evaluation batch, on the batch's device, concatenable along dim 0 with
        other batches' (flattened where a batch's rows have several positions)."""

    @abstractmethod
    def metrics(self, task: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The task's metrics over one split's predictions: the primary metric among them, higher is better."""

    def baseline(self, task: TaskSpec, labels: np.ndarray) -> tuple[float | None, float]:
        """(the primary metric of a trivial predictor on these raw labels, the margin a learner must beat it by);
        None: no baseline (the pruning rule's baseline part stays off)."""
        return None, 0.02

    def label_config(self, task: TaskSpec) -> dict[str, Any]:
        """Config keys that name the labels in a saved model (transformers' id2label/label2id); {} when none."""
        return {}

    def collator(self, tokenizer: Any) -> Collator:
        """`pad` behind the drop of the "length" column."""
        return DropLength(self.pad(tokenizer))


_REGISTRY: dict[str, TaskFamily] = {}


def register_family(family: TaskFamily) -> TaskFamily:
    """Add a family to the registry (its `name` is what `TaskSpec.family` and a `custom:` block's `family:` say)."""
    _REGISTRY[family.name] = family
    return family


def get_family(name: str) -> TaskFamily:
    """The registered family called `name`; UserError naming the known ones."""
    return lookup(_REGISTRY, name, "task family", UserError)


def family_of(task: TaskSpec) -> TaskFamily:
    """The family of a task."""
    return get_family(task.family)


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's task_type for a transformers model, from the family whose architectures its class name ends with
    (None, PEFT's plain PeftModel, for a model of no registered family)."""
    class_name = type(model).__name__
    return next((family.peft_task_type for family in _REGISTRY.values()
                 if class_name.endswith(family.architectures)), None)
