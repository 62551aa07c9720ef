"""Task families: every kind of fine-tuning behind one `TaskFamily` interface and one registry.

base.py holds the interface and the registry; each family is one module (its model class, tokenisation,
collation, predictions, metrics, baseline and export names). Adding a family: a module with a `TaskFamily`
subclass, and its instance on the registry line below.
"""

from __future__ import annotations

from elalora_auto.tasks.families import seq_cls
from elalora_auto.tasks.families.base import (DEFAULT_FAMILY, TaskFamily, family_of, get_family, peft_task_type,
                                              register_family)

# The registry: one line per family.
FAMILIES = tuple(register_family(f).name for f in (seq_cls.SequenceClassification(),))  # the built-in ones

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "TaskFamily", "family_of", "get_family", "peft_task_type",
           "register_family"]
