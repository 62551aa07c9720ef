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
from pathlib import Path
from typing import Literal, Mapping, Sequence

from elalora_auto.errors import UserError

CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews_correlation")
REGRESSION_METRICS = ("pearson", "spearmanr")


@dataclass(frozen=True)
class TaskSpec:
    """Everything the loaders, metrics and trial need to know about one task.

    `text_columns` use the Hugging Face `glue` schema names; every loader renames its source to them, so the
    tokeniser never needs to know where the data came from. `files` is only set for custom tasks
    (split name -> path) and `source_label_column` names their label column.
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


def custom_task(
    name: str,
    train_file: str | Path,
    eval_file: str | Path | None = None,
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    task_type: Literal["classification", "regression"] = "classification",
    metric: str | None = None,
) -> TaskSpec:
    """A task over the user's own csv/tsv/jsonl/json/parquet files.

    The files are read once here to check the columns and to fix the label set (string labels are sorted and
    numbered; integer labels must already be 0..K-1), since the model's head size must be known before
    any data is tokenised. Without `eval_file`, `load_task_data` holds out a fixed 10% of train as
    "validation".
    """
    from elalora_auto.tasks.loaders import read_table, require_columns

    if task_type not in ("classification", "regression"):
        raise UserError(f"task_type must be 'classification' or 'regression', not {task_type!r}")
    regression = task_type == "regression"
    allowed = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
    metric = metric or allowed[0]
    if metric not in allowed:
        raise UserError(f"metric {metric!r} does not suit a {task_type} task; choose one of {', '.join(allowed)}")
    text_columns = tuple(text_columns)
    if not 1 <= len(text_columns) <= 2:
        raise UserError(f"text_columns takes one or two columns (a sentence or a pair), got {list(text_columns)}")

    files = {"train": str(train_file)}
    if eval_file is not None:
        files["validation"] = str(eval_file)
    labels: list = []
    for path in files.values():
        table = read_table(Path(path))
        require_columns(table, Path(path), [*text_columns, label_column], " (set text_columns / label_column)")
        labels.extend(table.column(label_column).to_pylist())
    if any(v is None for v in labels):
        raise UserError(
            f"column {label_column!r} has empty labels in {', '.join(files.values())}; fill or drop those rows"
        )

    if regression:
        label_names: tuple[str, ...] = ()
    elif all(isinstance(v, str) for v in labels):
        label_names = tuple(sorted(set(labels)))
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        if min(labels) < 0:
            raise UserError(f"integer labels in {label_column!r} must be 0..K-1, found {min(labels)}")
        label_names = tuple(str(i) for i in range(max(labels) + 1))
    else:
        raise UserError(
            f"labels in {label_column!r} must be all strings or all integers for a classification task "
            "(use task_type='regression' for scores)"
        )
    if not regression and len(label_names) < 2:
        raise UserError(f"a classification task needs at least two labels; {label_column!r} has {list(label_names)}")
    return TaskSpec(
        name=name,
        text_columns=text_columns,
        label_names=label_names,
        metrics=allowed,
        primary_metric=metric,
        files=files,
        source_label_column=label_column,
    )
