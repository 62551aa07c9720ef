"""A task over the user's own files: the `custom:` block of a trial or study file, checked key by key, and
`resolve_task`, which picks between such a task and a registered one (the trial, the search and export call it)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from elalora_auto.errors import UserError, reject_unknown
from elalora_auto.tasks.loaders import read_table, require_columns
from elalora_auto.tasks.registry import CLASSIFICATION_METRICS, DEFAULT_FAMILY, REGRESSION_METRICS, TaskSpec, get_task


def custom_task(
    name: str,
    train_file: str | Path,
    eval_file: str | Path | None = None,
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    task_type: Literal["classification", "regression"] = "classification",
    metric: str | None = None,
    family: str = DEFAULT_FAMILY,
) -> TaskSpec:
    """A task over the user's own csv/tsv/jsonl/json/parquet files.

    The files are read once here to check the columns and to fix the label set (string labels are sorted and
    numbered; integer labels must already be 0..K-1), since the model's head size must be known before
    any data is tokenised. Without `eval_file`, `load_task_data` holds out a fixed 10% of train as
    "validation". `family` names a registered task family (tasks/families/), sequence classification by default.
    """
    from elalora_auto.tasks.families import get_family

    get_family(family)
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

    label_names = () if regression else _label_names(labels, label_column)
    return TaskSpec(name=name, text_columns=text_columns, label_names=label_names, metrics=allowed,
                    primary_metric=metric, files=files, source_label_column=label_column, family=family)


def _label_names(labels: list, label_column: str) -> tuple[str, ...]:
    """A classification task's classes: sorted strings, or integers already numbered 0..K-1."""
    if all(isinstance(v, str) for v in labels):
        names = tuple(sorted(set(labels)))
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        if min(labels) < 0:
            raise UserError(f"integer labels in {label_column!r} must be 0..K-1, found {min(labels)}")
        names = tuple(str(i) for i in range(max(labels) + 1))
    else:
        raise UserError(
            f"labels in {label_column!r} must be all strings or all integers for a classification task "
            "(use task_type='regression' for scores)"
        )
    if len(names) < 2:
        raise UserError(f"a classification task needs at least two labels; {label_column!r} has {list(names)}")
    return names


def resolve_task(name: str, custom: Mapping[str, Any] | None = None) -> TaskSpec:
    """The one task resolver: a custom task over the user's files when `custom` (custom_task's keyword
    arguments) is given, else the registered task `name`."""
    if not custom:
        return get_task(name)
    task, arguments = custom_block(name, custom)
    return custom_task(name=task, **arguments)


def custom_block(task: str | None, custom: Any) -> tuple[str | None, dict[str, Any]]:
    """(task name, custom_task's other keyword arguments) of a `custom:` block, checked key by key.

    The block may repeat the task's name as `name:` (custom_task's own first argument): it names the task when
    `task:` is absent and must agree with it otherwise. Every other key must be one of custom_task's, so a typo
    or a missing `train_file` is one line naming the valid keys, not a TypeError.
    """
    keys = list(inspect.signature(custom_task).parameters)
    if not isinstance(custom, Mapping):
        raise UserError(f"custom: expected a mapping with the keys {', '.join(keys)}, got {custom!r}")
    reject_unknown(custom, keys, "custom: unknown key", UserError)
    arguments = dict(custom)
    name = arguments.pop("name", None)
    if name is not None and task is not None and str(name) != str(task):
        raise UserError(f"custom.name {name!r} differs from task {task!r}: drop custom.name (task: names the task)")
    if "train_file" not in arguments:
        raise UserError("custom: train_file is missing: the task's training rows (.csv, .tsv, .jsonl, .json or "
                        ".parquet)")
    if isinstance(arguments.get("text_columns"), str):  # one column named on its own, not a list of letters
        arguments["text_columns"] = [arguments["text_columns"]]
    return (task if task is not None else name), arguments
