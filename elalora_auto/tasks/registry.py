"""The GLUE task registry and user-defined tasks: what to read, how to score it, and what to optimise.

Primary metrics (the search objective), chosen once so every study optimises the same number:
- CoLA: matthews_correlation (the only metric GLUE reports for it).
- STS-B: pearson (the single correlation LoRA/AdaLoRA-style papers report; spearmanr is still computed).
- MRPC, QQP: f1 (the minority-sensitive one of GLUE's two; accuracy is still computed).
- MNLI: accuracy on `validation_matched` (the `primary_split`); mismatched is reported beside it.
- all others: accuracy.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Mapping

from elalora_auto.errors import UserError

CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews_correlation")
REGRESSION_METRICS = ("pearson", "spearmanr")
DEFAULT_FAMILY = "sequence_classification"  # the family of every GLUE task and of a `custom:` task by default


@dataclass(frozen=True)
class TaskSpec:
    """Everything the loaders, metrics and trial need to know about one task.

    `text_columns` use the Hugging Face `glue` schema names; every loader renames its source to them, so the
    tokeniser never needs to know where the data came from. `files` is only set for custom tasks
    (split name -> path) and `source_label_column` names their label column. `family` names the task family
    (tasks/families/) that builds, feeds and scores its model.
    """

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]  # empty for a regression task
    metrics: tuple[str, ...]
    primary_metric: str
    eval_splits: tuple[str, ...] = ("validation",)
    primary_split: str = "validation"
    glue_folder: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    source_label_column: str = "label"
    family: str = DEFAULT_FAMILY

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        """Model outputs: one score for regression, one logit per class otherwise."""
        return len(self.label_names) or 1

    @property
    def problem_type(self) -> str:
        """The transformers `config.problem_type` (regression -> MSE loss on one output)."""
        return "regression" if self.is_regression else "single_label_classification"

    @property
    def is_custom(self) -> bool:
        return bool(self.files)


def _glue(
    name: str,
    folder: str,
    text_columns: tuple[str, ...],
    label_names: tuple[str, ...],
    metrics: tuple[str, ...] = ("accuracy",),
    primary: str = "accuracy",
    eval_splits: tuple[str, ...] = ("validation",),
) -> TaskSpec:
    return TaskSpec(
        name=name,
        text_columns=text_columns,
        label_names=label_names,
        metrics=metrics,
        primary_metric=primary,
        eval_splits=eval_splits,
        primary_split=eval_splits[0],
        glue_folder=folder,
    )


_PAIR = ("sentence1", "sentence2")
_NLI = ("entailment", "not_entailment")

# Label orders follow the Hugging Face `nyu-mll/glue` ClassLabel features, so ids agree with the hub data.
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"),
              ("matthews_correlation",), "matthews_correlation"),
        _glue("sst2", "SST-2", ("sentence",), ("negative", "positive")),
        _glue("mrpc", "MRPC", _PAIR, ("not_equivalent", "equivalent"), ("accuracy", "f1"), "f1"),
        _glue("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"), "f1"),
        _glue("stsb", "STS-B", _PAIR, (), REGRESSION_METRICS, "pearson"),
        _glue("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
              eval_splits=("validation_matched", "validation_mismatched")),
        _glue("qnli", "QNLI", ("question", "sentence"), _NLI),
        _glue("rte", "RTE", _PAIR, _NLI),
        _glue("wnli", "WNLI", _PAIR, ("not_entailment", "entailment")),
    )
}

# Names people write for the same task, after `task_key` normalisation.
_ALIASES = {"mnlim": "mnli", "mnlimatched": "mnli", "stsbenchmark": "stsb"}


def task_key(name: str) -> str:
    """Case, dashes, underscores and spaces do not matter: "SST-2", "sst_2" and "sst2" are one task."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_task(name: str) -> TaskSpec:
    """The GLUE task called `name` (aliases accepted); a UserError lists the valid names otherwise."""
    key = task_key(name)
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    close = difflib.get_close_matches(key, TASKS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(
        f"unknown task {name!r}{hint}; valid tasks: {', '.join(TASKS)}, or a custom task from your own files"
    )
