"""The Adapter interface, the method registry and what every method shares: the hyperparameter vocabulary, the
default targets per model type and the name tables derived from each method's aliases.

A method is one `Method` subclass in its own module (lora.py, adalora.py, elalora.py, eva.py) registered in
adapters/__init__.py: its own names (`aliases`, `native_keys`), its rules (`check`) and its build (`wrap`).
Light to import: torch and PEFT load when an adapter is built.

One vocabulary for hyperparameters that mean the same thing in every method (the search spaces use it):

| name here      | PEFT LoRA / EVA | PEFT AdaLoRA     | ElaLoRA (ElaLoraConfig) |
|----------------|-----------------|------------------|-------------------------|
| r_init         | r               | init_r           | r_init                  |
| r_target       | -               | target_r         | -                       |
| lora_alpha     | lora_alpha      | lora_alpha       | lora_alpha              |
| lora_dropout   | lora_dropout    | lora_dropout     | lora_dropout            |
| target_modules | target_modules  | target_modules   | target_modules          |
| t_init         | -               | tinit            | t_init                  |
| t_final        | -               | tfinal           | t_final                 |
| delta_t        | -               | deltaT           | delta_t                 |
| beta1, beta2   | -               | beta1, beta2     | beta1, beta2            |
| orth_reg_weight (or gamma) | -   | orth_reg_weight  | orth_reg_weight         |

The native names (r, init_r, target_r, tinit, tfinal, deltaT) are accepted too; method-only knobs (ElaLoRA's b,
k, e_lr_scale, ...; EVA's rho, tau, ...) pass through unchanged. The shared names obey one set of rules whatever
the method (ElaLoraConfig's: r_init >= 1, dropout and betas in [0, 1), ...). When the schedule (t_init, t_final,
delta_t) of a scheduled method is not given it is set from the run length: 10%, 20% and 5% of the total optimizer
steps (`schedule_defaults`), because the paper's absolute step counts assume runs of thousands of steps and would
leave no budgeting phase at all in a short search trial.

Default targets and heads per model type (`default_targets`):
- BERT: query/key/value, attention.output.dense, intermediate.dense, output.dense and pooler.dense (the pooler is
  pretrained, so it gets a low-rank update); the classifier is trained in full (modules_to_save).
- RoBERTa / ELECTRA: the same encoder matrices; the classification head ("classifier", a fresh dense + out_proj) is
  trained in full.
- DeBERTa-v2/v3: query_proj/key_proj/value_proj, attention.output.dense, intermediate.dense, output.dense; the
  "pooler" (ContextPooler, freshly initialised by the sequence-classification class) and "classifier" are trained
  in full.
- GPT-2: c_attn, c_proj, c_fc; the "score" head is trained in full.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping

from elalora_auto.errors import ConfigError, check_fields, lookup, reject_unknown
from elalora_auto.records import RoundRecord

if TYPE_CHECKING:
    import torch
    from torch import nn

# The shared vocabulary (the table above) and the other spellings every method accepts for it.
SHARED_NAMES = ("r_init", "r_target", "lora_alpha", "lora_dropout", "target_modules", "t_init", "t_final", "delta_t",
                "beta1", "beta2", "orth_reg_weight")
SYNONYMS = {"gamma": "orth_reg_weight"}
# Shared names whose rules ElaLoraConfig states, applied to every method's value of them.
RULED_NAMES = ("r_init", "lora_alpha", "lora_dropout", "t_init", "t_final", "delta_t", "beta1", "beta2",
               "orth_reg_weight")

_ENCODER_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
# Logical (BERT) module names -> the model's own, per model type: the one table behind the default targets below and
# the search spaces' module sets (a space's `module_aliases` may add to it).
MODULE_ALIASES: dict[str, dict[str, str]] = {
    "deberta-v2": {"query": "query_proj", "key": "key_proj", "value": "value_proj"},
    "distilbert": {"query": "q_lin", "key": "k_lin", "value": "v_lin", "attention.output.dense": "out_lin",
                   "intermediate.dense": "lin1", "output.dense": "lin2"},
}


def model_module_names(names: list[str], model_type: str | None, extra: dict[str, str] | None = None) -> list[str]:
    """Logical module names in a model type's own spelling (`extra` aliases win over MODULE_ALIASES)."""
    alias = {**MODULE_ALIASES.get(model_type or "", {}), **(extra or {})}
    return [alias.get(name, name) for name in names]


DEFAULT_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "bert": (_ENCODER_TARGETS + ["pooler.dense"], ["classifier"]),
    "roberta": (_ENCODER_TARGETS, ["classifier"]),
    "xlm-roberta": (_ENCODER_TARGETS, ["classifier"]),
    "electra": (_ENCODER_TARGETS, ["classifier"]),
    "deberta-v2": (model_module_names(_ENCODER_TARGETS, "deberta-v2"), ["pooler", "classifier"]),
    "deberta": (["in_proj", "attention.output.dense", "intermediate.dense", "output.dense"], ["pooler", "classifier"]),
    "distilbert": (model_module_names(_ENCODER_TARGETS, "distilbert"), ["pre_classifier", "classifier"]),
    "gpt2": (["c_attn", "c_proj", "c_fc"], ["score"]),
}


def default_targets(model_type: str) -> tuple[list[str], list[str]]:
    """(target_modules, modules_to_save) for a transformers model_type; UserError for an unknown type."""
    if model_type not in DEFAULT_TARGETS:
        raise ConfigError(
            f"no default target modules for model type {model_type!r}; set params.target_modules "
            f"(known types: {', '.join(sorted(DEFAULT_TARGETS))})"
        )
    targets, heads = DEFAULT_TARGETS[model_type]
    return list(targets), list(heads)


def schedule_defaults(total_steps: int) -> dict[str, int]:
    """t_init / t_final / delta_t as fractions (10% / 20% / 5%) of the run, so short runs still have rounds."""
    return {
        "t_init": max(1, round(0.10 * total_steps)),
        "t_final": max(1, round(0.20 * total_steps)),
        "delta_t": max(1, round(0.05 * total_steps)),
    }


@dataclass
class Adapter(ABC):
    """A model with a trainable adapter and the few hooks a training loop needs, whatever the method."""

    model: nn.Module
    method: str
    round_history: list[RoundRecord] = field(default_factory=list)

    def prepare(self, batches: Iterable[dict[str, Any]]) -> None:
        """Data-dependent initialisation, after the model is on its device and before the optimizer is built.

        `batches` is a lazy iterator of training batches; a method that needs none never draws from it, so its
        trial's random stream is the same as without this hook.
        """

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: every trainable parameter at `lr` (ElaLoRA keeps its Parameter objects on resize)."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr}]

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> RoundRecord | None:
        """Call after optimizer.step(), before zero_grad(); returns a round record when ranks moved."""
        return None

    @abstractmethod
    def rank_map(self) -> dict[str, int]:
        """Current rank of every adapted matrix, by full module name."""

    @abstractmethod
    def num_trainable_parameters(self) -> int:
        """What the adapter costs: live low-rank components plus the fully trained heads."""

    @abstractmethod
    def export_lora(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Write a stock PEFT LoRA folder that PeftModel.from_pretrained loads without this package."""


@dataclass(frozen=True)
class RetrainPlan:
    """A two-stage trial: ElaLoRA (`search_params`, for `search_steps`) finds the rank map, then `method` (stock PEFT
    LoRA) retrains from scratch for `total_steps` (the trial's run) at ElaLoRA's lora_alpha and lora_dropout."""

    search_params: dict[str, Any]
    search_steps: int
    total_steps: int
    lora_alpha: float
    lora_dropout: float
    method: str = "lora"

    def retrain_params(self, rank_map: Mapping[str, int]) -> dict[str, Any]:
        """Stage 2's LoRA parameters for stage 1's final `rank_map`: every module with a rank > 0 targeted by its
        full name, its rank through PEFT's rank_pattern (names escaped: PEFT reads the keys as patterns). Scaling is
        the lora adapter's, lora_alpha / r per module, so each module trains as a `--method lora` one of its rank."""
        ranks = {name: rank for name, rank in rank_map.items() if rank > 0}
        if not ranks:
            raise ConfigError("ElaLoRA's search stage ended with every rank at 0: nothing to retrain; raise "
                              "final_budget or min_rank")
        return {"r_init": max(ranks.values()), "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": list(ranks), "rank_pattern": {re.escape(n): r for n, r in ranks.items()}}


class Method(ABC):
    """One registry entry: a method's names, its rules and its build. Subclass it in one module per method and add
    it to adapters/__init__.py's registry line; the search's checks, `train` and the trial ask the registry."""

    name: ClassVar[str]
    aliases: ClassVar[Mapping[str, str]] = {}  # shared (or another method's) name -> this method's own name
    scheduled: ClassVar[bool] = False  # t_init / t_final / delta_t default to fractions of the run
    seed_param: ClassVar[str | None] = None  # a parameter the trial fills with its seed when not given

    @abstractmethod
    def native_keys(self) -> Iterable[str]:
        """The method's own parameter names a configuration may hold."""

    @abstractmethod
    def check(self, native: dict[str, Any], total_steps: int) -> None:
        """The method's rules on a translated configuration; ConfigError (one line) names the rule."""

    @abstractmethod
    def wrap(self, model: nn.Module, native: dict[str, Any], total_steps: int, heads: list[str]) -> Adapter:
        """A fresh adapter around `model` from a checked configuration with its targets filled in."""

    def retrain_plan(self, params: Mapping[str, Any], total_steps: int) -> RetrainPlan | None:
        """A two-stage configuration's plan (ElaLoRA's `retrain`); None: the trial is one run of this method."""
        return None

    def shared_name(self, native: str) -> str:
        """The shared-vocabulary spelling of one of the method's own names (derived from `aliases`)."""
        inverse = {own: shared for shared, own in self.aliases.items() if shared in SHARED_NAMES}
        return inverse.get(native, native)

    def names(self) -> list[str]:
        """What a configuration may name, as the error hint spells it: the shared names and the other accepted
        spellings, sorted."""
        keys = set(self.native_keys())
        shared = {self.shared_name(k) for k in keys}
        return sorted(shared | {a for a, own in self.aliases.items() if own in keys}
                      | {s for s, target in SYNONYMS.items() if target in shared})

    def native(self, params: Mapping[str, Any], total_steps: int) -> dict[str, Any]:
        """Shared names translated to the method's own, the run-length schedule filled in."""
        own = {key: self.aliases.get(SYNONYMS.get(key, key), SYNONYMS.get(key, key)) for key in params}
        given = dict(params)
        if self.scheduled:
            for key, value in schedule_defaults(total_steps).items():
                if key not in given and self.aliases.get(key, key) not in own.values():
                    given[key] = value
                    own[key] = self.aliases.get(key, key)
        out: dict[str, Any] = {}
        for key, value in given.items():
            if own[key] in out:
                raise ConfigError(f"parameter {own[key]!r} given twice for {self.name} "
                                  f"(as {key!r} and under another name)")
            out[own[key]] = value
        return out

    def translate(self, params: Mapping[str, Any], total_steps: int) -> dict[str, Any]:
        """`native`, refusing a name the method does not know (the valid ones named): a name that cannot be
        translated cannot be built, so this runs on every build."""
        native = self.native(params, total_steps)
        reject_unknown(native, self.native_keys(), f"unknown {self.name} parameter", valid=self.names())
        return native

    def configure(self, params: Mapping[str, Any], total_steps: int) -> dict[str, Any]:
        """The validation of a configuration: `translate`, then the method's rules. Runs once, where a
        configuration enters (the search's plan for every corner of a space, `train` before the data, a direct
        `build_adapter` call); returns the translated configuration that `build` takes."""
        native = self.translate(params, total_steps)
        self.check(native, total_steps)
        return native

    def check_shared_rules(self, native: dict[str, Any]) -> None:
        """The shared names' rules (ElaLoraConfig's) on this method's values of them."""
        from elalora_auto.method.config import ElaLoraConfig

        shared = {self.shared_name(k): v for k, v in native.items()}
        check_fields(numeric_config(ElaLoraConfig, {k: v for k, v in shared.items() if k in RULED_NAMES}))

    def build(self, model: nn.Module, native: dict[str, Any], total_steps: int,
              modules_to_save: list[str] | None = None) -> Adapter:
        """`wrap` with the model type's default targets and heads where the configuration names none."""
        native = dict(native)
        if "target_modules" not in native or modules_to_save is None:
            targets, heads = default_targets(getattr(getattr(model, "config", None), "model_type", ""))
            native.setdefault("target_modules", targets)
            modules_to_save = heads if modules_to_save is None else modules_to_save
        try:
            return self.wrap(model, native, total_steps, list(modules_to_save))
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a value PEFT rejects on the model
            raise ConfigError(f"bad {self.name} parameters: {' '.join(str(exc).split())}") from exc


def numeric_config(factory: Callable[..., Any], values: dict[str, Any], what: str = "parameters") -> Any:
    """factory(**values): a TypeError from a rule comparing a number with text names the text values; any other
    rejection (TypeError, ValueError: PEFT's configs) becomes a one-line ConfigError "bad {what}: ..."."""
    try:
        return factory(**values)
    except ConfigError:
        raise
    except TypeError as exc:
        text = {k: v for k, v in values.items() if isinstance(v, str)}
        if text:
            raise ConfigError(f"a number is expected where these are text: {text}") from None
        raise ConfigError(f"bad {what}: {' '.join(str(exc).split())}") from None
    except ValueError as exc:
        raise ConfigError(f"bad {what}: {' '.join(str(exc).split())}") from None


def peft_config(config_class: str, native: dict[str, Any], heads: list[str] | None, what: str,
                model: nn.Module | None = None, **fixed: Any) -> Any:
    """One of PEFT's configs (`config_class`: "LoraConfig", "AdaLoraConfig"), its own checks as one-line
    ConfigErrors; `heads` (modules_to_save) when known; for a `model`, the PEFT task_type of its task family
    (`tasks.families.peft_task_type`: sequence classification -> SEQ_CLS), which picks the PeftModel class."""
    import peft

    from elalora_auto.tasks.families import peft_task_type

    saved = {} if heads is None else {"modules_to_save": list(heads)}
    task = {} if model is None else {"task_type": peft_task_type(model)}
    return numeric_config(getattr(peft, config_class), {**task, **saved, **native, **fixed}, what)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (its `name` is what --method, spaces and TrialSpecs say)."""
    _REGISTRY[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method called `name`; ConfigError naming the known ones."""
    return lookup(_REGISTRY, name, "method")


def native_params(method: str, params: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """Translate shared names to `method`'s own and fill the run-length schedule defaults."""
    return get_method(method).native(params, total_steps)


def retrain_plan(method: str, params: Mapping[str, Any], total_steps: int) -> RetrainPlan | None:
    """The two-stage plan of a configuration for a `total_steps` trial (None: one stage); the trial runs it."""
    return get_method(method).retrain_plan({k: v for k, v in params.items() if k != "modules_to_save"}, total_steps)


def check_params(method: str, params: Mapping[str, Any], total_steps: int) -> None:
    """A configuration against its method's rules before anything is built (the search's corners, `train`); the
    targets are checked on the model at build time, the heads are not method parameters."""
    get_method(method).configure({k: v for k, v in params.items() if k != "modules_to_save"}, total_steps)


def build_adapter(
    model: nn.Module,
    method: str,
    params: dict[str, Any],
    total_steps: int,
    modules_to_save: list[str] | None = None,
    *,
    validate: bool = True,
) -> Adapter:
    """Wrap a transformers model with a fresh adapter of `method`; `params` use the shared vocabulary.

    `validate=False` (the trial's build) translates the names only: the configuration was validated where it
    entered (`check_params`: the search's plan checked every corner of the space, `train` its configuration).
    """
    spec = get_method(method)
    native = spec.configure(params, total_steps) if validate else spec.translate(params, total_steps)
    return spec.build(model, native, total_steps, modules_to_save)


def check_targets(model: nn.Module, targets: list[str] | str) -> None:
    """Fail with a one-line hint before PEFT does (its message spans lines and names no module)."""
    from elalora_auto.method.config import is_adaptable, target_matches

    names = [name for name, module in model.named_modules() if name and is_adaptable(module)]
    for target in [targets] if isinstance(targets, str) else targets:
        single = target if isinstance(targets, str) else [target]
        if not any(target_matches(single, name) for name in names):
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ConfigError(f"target module {target!r} matches no Linear layer; module names include: "
                              f"{', '.join(suffixes)}")


def module_key(param_name: str, marker: str) -> str:
    """'base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default' -> 'bert...query'."""
    prefix = param_name.split(f".{marker}.")[0]
    return prefix.removeprefix("base_model.model.")


def unique_modules(names: Iterable[str] | None) -> list[str] | None:
    """modules_to_save without repeats, in order: PEFT's sequence-classification model appends its own head names
    ("classifier", "score") to the config's list, so a list naming "classifier" would be saved with it twice."""
    return None if names is None else list(dict.fromkeys(names))
