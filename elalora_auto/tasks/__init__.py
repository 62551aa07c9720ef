"""GLUE and custom tasks: registry, task families (families/), loaders, metrics and the tokenisation cache.

Names are imported lazily: the registry is light, while loaders/tokenize pull in datasets and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "TaskSpec": "registry",
    "TASKS": "registry",
    "get_task": "registry",
    "custom_task": "custom",
    "custom_block": "custom",
    "resolve_task": "custom",
    "TaskData": "loaders",
    "load_task_data": "loaders",
    "compute_metrics": "metrics",
    "tokenize_cached": "tokenize",
    "make_collator": "tokenize",
    "TaskFamily": "families",
    "FAMILIES": "families",
    "family_of": "families",
    "get_family": "families",
    "register_family": "families",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"elalora_auto.tasks.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'elalora_auto.tasks' has no attribute {name!r}")
