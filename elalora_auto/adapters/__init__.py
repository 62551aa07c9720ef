"""The trial's view of a method: every method behind one `Adapter` interface and one registry (as PEFT's tuners).

base.py holds the interface, the registry, the shared hyperparameter vocabulary and the default targets; each
method is one module (its names, rules, build and export). Adding a method: a module with a `Method` subclass,
and its instance on the registry line below.
"""

from __future__ import annotations

from elalora_auto.adapters import adalora, elalora, eva, lora
from elalora_auto.adapters.adalora import AdaLoraAdapter
from elalora_auto.adapters.base import (DEFAULT_TARGETS, MODULE_ALIASES, SHARED_NAMES, SYNONYMS, Adapter, Method,
                                        RetrainPlan, build_adapter, check_params, check_targets, default_targets,
                                        get_method, method_names, model_module_names, native_params, register,
                                        retrain_plan, schedule_defaults, unique_modules)
from elalora_auto.adapters.elalora import ElaLoraAdapter
from elalora_auto.adapters.eva import EvaAdapter
from elalora_auto.adapters.lora import LoraAdapter

# The registry: one line per method.
for _method in (elalora.ElaLoraMethod(), lora.LoraMethod(), adalora.AdaLoraMethod(), eva.EvaMethod()):
    register(_method)

METHODS = method_names()  # the built-in methods; method_names() also lists any registered later

__all__ = ["AdaLoraAdapter", "Adapter", "DEFAULT_TARGETS", "ElaLoraAdapter", "EvaAdapter", "LoraAdapter",
           "METHODS", "MODULE_ALIASES", "Method", "RetrainPlan", "SHARED_NAMES", "SYNONYMS", "build_adapter",
           "check_params", "check_targets", "default_targets", "get_method", "method_names", "model_module_names",
           "native_params", "register", "retrain_plan", "schedule_defaults", "unique_modules"]
