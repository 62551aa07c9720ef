"""Sequence classification (and regression on one score): every GLUE task and every `custom:` task today.

A sentence or a sentence pair in, one label (or one score) out: AutoModelForSequenceClassification with a head
of the task's size (a checkpoint's head of another size is re-initialised), dynamic padding, argmax (or the one
score) as the prediction, the GLUE metrics of tasks/metrics.py, the majority class as the baseline.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from elalora_auto.tasks.families.base import Collator, Encoder, TaskFamily

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from elalora_auto.tasks.registry import TaskSpec


class SequenceClassification(TaskFamily):
    """One label (or one regression score) per row of one or two texts."""

    name = "sequence_classification"
    peft_task_type = "SEQ_CLS"
    pipeline_task = "text-classification"
    architectures: ClassVar[tuple[str, ...]] = ("ForSequenceClassification",)

    def model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def config_kwargs(self, task: TaskSpec) -> dict[str, Any]:
        return {"num_labels": task.num_labels, "problem_type": task.problem_type}

    def head_note(self, task: TaskSpec) -> str:
        return f"saved for another number of labels (this task needs {task.num_labels} output(s))"

    def encoder(self, task: TaskSpec, tokenizer: Any, max_length: int) -> Encoder:
        text_columns = list(task.text_columns)

        def encode(batch: dict[str, list]) -> dict[str, Any]:
            encoded = dict(tokenizer(*(batch[c] for c in text_columns), truncation=True, max_length=max_length))
            encoded["labels"] = batch["label"]
            return encoded

        return encode

    def pad(self, tokenizer: Any) -> Collator:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor],
                task: TaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        return (logits.squeeze(-1) if task.is_regression else logits.argmax(-1)), batch["labels"]

    def metrics(self, task: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        from elalora_auto.tasks.metrics import compute_metrics  # scikit-learn and scipy: loaded when scoring

        return compute_metrics(task, predictions, labels)

    def baseline(self, task: TaskSpec, labels: np.ndarray) -> tuple[float | None, float]:
        """Always answering the majority class; a regression task has none. With accuracy, the margin is two
        standard errors of that accuracy on this many rows when that is more than 0.02."""
        import numpy as np

        if task.is_regression:
            return None, 0.02
        majority = np.bincount(labels.astype(int), minlength=task.num_labels).argmax()
        baseline = self.metrics(task, np.full_like(labels, majority), labels)[task.primary_metric]
        margin = 0.02
        if task.primary_metric == "accuracy":
            margin = max(margin, 2 * math.sqrt(baseline * (1 - baseline) / len(labels)))
        return baseline, margin

    def label_config(self, task: TaskSpec) -> dict[str, Any]:
        """{id2label, label2id} from the task's label names ({} for regression)."""
        if not task.label_names:
            return {}
        return {"id2label": dict(enumerate(task.label_names)),
                "label2id": {name: i for i, name in enumerate(task.label_names)}}
