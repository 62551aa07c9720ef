"""The trial's view of a method: PEFT LoRA, PEFT AdaLoRA and ElaLoRA behind one `Adapter` interface, so a trial
trains any of them alike (`build_adapter`). Light to import: torch and PEFT load when an adapter is built.

One vocabulary for hyperparameters that mean the same thing in every method (the search space uses it):

| name here      | PEFT LoRA     | PEFT AdaLoRA     | ElaLoRA (ElaLoraConfig) |
|----------------|---------------|------------------|-------------------------|
| r_init         | r             | init_r           | r_init                  |
| r_target       | -             | target_r         | -                       |
| lora_alpha     | lora_alpha    | lora_alpha       | lora_alpha              |
| lora_dropout   | lora_dropout  | lora_dropout     | lora_dropout            |
| target_modules | target_modules| target_modules   | target_modules          |
| t_init         | -             | tinit            | t_init                  |
| t_final        | -             | tfinal           | t_final                 |
| delta_t        | -             | deltaT           | delta_t                 |
| beta1, beta2   | -             | beta1, beta2     | beta1, beta2            |
| orth_reg_weight (or gamma) | -   | orth_reg_weight  | orth_reg_weight         |

The native names (r, init_r, target_r, tinit, tfinal, deltaT) are accepted too; ElaLoRA-only knobs (b, k,
e_lr_scale, grace_rounds, ...) pass through to ElaLoraConfig unchanged. When the
schedule (t_init, t_final, delta_t) is not given it is set from the run length: 10%, 20% and 5% of the total
optimizer steps (see `schedule_defaults`), because the paper's absolute step counts assume runs of thousands of
steps and would leave no budgeting phase at all in a short search trial.

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

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from elalora_auto.errors import ConfigError, reject_unknown

if TYPE_CHECKING:
    import torch
    from torch import nn

METHODS = ("elalora", "lora", "adalora")

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

# Shared names -> each method's native names (identity where absent).
_ALIASES: dict[str, dict[str, str]] = {
    "lora": {"r_init": "r"},
    "adalora": {
        "r_init": "init_r",
        "r_target": "target_r",
        "t_init": "tinit",
        "t_final": "tfinal",
        "delta_t": "deltaT",
        "gamma": "orth_reg_weight",
    },
    "elalora": {"r": "r_init", "gamma": "orth_reg_weight"},
}
_LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")
_ADALORA_KEYS = _LORA_KEYS[1:] + ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight")


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


def native_params(method: str, params: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """Translate shared names to `method`'s own and fill the run-length schedule defaults."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    aliases = _ALIASES[method]
    given = dict(params)
    if method in ("adalora", "elalora"):
        for key, value in schedule_defaults(total_steps).items():
            if key not in given and aliases.get(key, key) not in given:
                given[key] = value
    out: dict[str, Any] = {}
    for key, value in given.items():
        native = aliases.get(key, key)
        if native in out:
            raise ConfigError(f"parameter {native!r} given twice for {method} (as {key!r} and under another name)")
        out[native] = value
    return out


def _check_keys(method: str, native: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Unknown keys named in the shared vocabulary (r_init, not PEFT's r)."""
    shared = {v: k for k, v in _ALIASES[method].items() if k != "gamma"}
    reject_unknown(native, allowed, f"unknown {method} parameter", valid=[shared.get(k, k) for k in allowed])


@dataclass
class Adapter(ABC):
    """A model with a trainable adapter and the few hooks a training loop needs, whatever the method."""

    model: nn.Module
    method: str
    round_history: list[dict[str, Any]] = field(default_factory=list)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: every trainable parameter at `lr` (ElaLoRA keeps its Parameter objects on resize)."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr}]

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
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


def _check_targets(model: nn.Module, targets: list[str] | str) -> None:
    """Fail with a one-line hint before PEFT does (its message spans lines and names no module)."""
    from elalora_auto.method.config import is_adaptable, target_matches

    names = [name for name, module in model.named_modules() if name and is_adaptable(module)]
    for target in [targets] if isinstance(targets, str) else targets:
        single = target if isinstance(targets, str) else [target]
        if not any(target_matches(single, name) for name in names):
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ConfigError(f"target module {target!r} matches no Linear layer; module names include: "
                              f"{', '.join(suffixes)}")


def _module_key(param_name: str, marker: str) -> str:
    """'base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default' -> 'bert...query'."""
    prefix = param_name.split(f".{marker}.")[0]
    return prefix.removeprefix("base_model.model.")


def unique_modules(names: Iterable[str] | None) -> list[str] | None:
    """modules_to_save without repeats, in order: PEFT's sequence-classification model appends its own head names
    ("classifier", "score") to the config's list, so a list naming "classifier" would be saved with it twice."""
    return None if names is None else list(dict.fromkeys(names))


def _head_parameters(model: nn.Module) -> int:
    """Trainable parameters outside the low-rank factors (the modules_to_save copies)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n)


class LoraAdapter(Adapter):
    """PEFT LoRA at one fixed rank everywhere."""

    def rank_map(self) -> dict[str, int]:
        return {
            _module_key(n, "lora_A"): p.shape[0] for n, p in self.model.named_parameters() if ".lora_A." in n
        }

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def export_lora(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        config = self.model.peft_config["default"]
        if base_model_name_or_path is not None:
            config.base_model_name_or_path = str(base_model_name_or_path)
        config.modules_to_save = unique_modules(config.modules_to_save)
        self.model.save_pretrained(str(path))
        return Path(path)


class AdaLoraAdapter(Adapter):
    """PEFT AdaLoRA, driven for the user: `update_and_allocate` runs after every optimizer step.

    PEFT masks E instead of shrinking tensors, so AdaLoRA trains with init_r shapes throughout;
    `num_trainable_parameters` counts what the final adapter keeps (unmasked components of A, E, B plus the
    heads), which is what an exported adapter costs, not what the optimizer updated during training.
    """

    def _peft(self) -> Any:
        return self.model.base_model  # the AdaLoraModel under the PeftModel

    def _config(self) -> Any:
        return self.model.peft_config["default"]

    def _live(self, pattern: dict[str, Any] | None) -> dict[str, list[bool]]:
        """Per module: which components are live under PEFT's `rank_pattern` (None: all, as before the first
        allocation); plain Python lists, so counting ranks reads no tensor."""
        pattern = pattern or {}
        live = {}
        for name, param in self.model.named_parameters():
            if ".lora_E." in name:
                key = name.removeprefix("base_model.model.")
                flags = pattern.get(name, pattern.get(key, pattern.get(key.replace(".default", ""))))
                live[_module_key(name, "lora_E")] = [True] * param.shape[0] if flags is None else [
                    bool(flag) for flag in flags]
        return live

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """PEFT's update; the ranks are read only when PEFT set a new rank_pattern (the ranks' one source), so a
        step without masking does no per-matrix work here."""
        config = self._config()
        pattern = config.rank_pattern
        self._peft().update_and_allocate(step)
        if config.rank_pattern is pattern:
            return None
        before, after = self._ranks(pattern), self.rank_map()
        if after == before:
            return None
        record = {
            "step": step,
            "changed": {k: [before[k], after[k]] for k in after if before[k] != after[k]},
            "total_rank": sum(after.values()),
        }
        self.round_history.append(record)
        return record

    def rank_map(self) -> dict[str, int]:
        return self._ranks(self._config().rank_pattern)

    def _ranks(self, pattern: dict[str, Any] | None) -> dict[str, int]:
        return {name: sum(flags) for name, flags in self._live(pattern).items()}

    def num_trainable_parameters(self) -> int:
        shapes = {}
        for name, param in self.model.named_parameters():
            if ".lora_A." in name:
                shapes.setdefault(_module_key(name, "lora_A"), [0, 0])[0] = param.shape[1]
            elif ".lora_B." in name:
                shapes.setdefault(_module_key(name, "lora_B"), [0, 0])[1] = param.shape[0]
        ranks = self.rank_map()
        return sum(r * (shapes[k][0] + shapes[k][1] + 1) for k, r in ranks.items()) + _head_parameters(self.model)

    def export_lora(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Convert to a stock LoRA folder: exact, since AdaLoRA's delta is B diag(E) A * alpha / init_r.

        Live components only: lora_A = diag(E) A * scaling / ranknum, lora_B = B, with rank_pattern =
        alpha_pattern = r per module (LoRA scaling 1). A module with no live component has a zero delta and is
        left out of the targets.
        """
        from peft import LoraConfig, get_peft_model_state_dict
        from safetensors.torch import save_file

        cfg = self._config()
        modules = dict(self._peft().model.named_modules())
        tensors: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        for key, flags in self._live(cfg.rank_pattern).items():
            layer = modules[key]
            live = [i for i, flag in enumerate(flags) if flag]
            if not live:
                continue
            a = layer.lora_A["default"].detach()[live]
            e = layer.lora_E["default"].detach()[live]
            scale = layer.scaling["default"] / (layer.ranknum["default"].item() + 1e-5)
            tensors[f"base_model.model.{key}.lora_A.weight"] = (e * a * scale).contiguous().cpu()
            tensors[f"base_model.model.{key}.lora_B.weight"] = layer.lora_B["default"].detach()[:, live].contiguous().cpu()
            ranks[key] = len(live)
        if not ranks:
            raise ConfigError("AdaLoRA masked every component; nothing to export (raise r_target)")
        with warnings.catch_warnings():  # PEFT warns about the zero-rank modules it resizes; they are dropped here
            warnings.simplefilter("ignore")
            state = get_peft_model_state_dict(self.model)
        heads = {k: v.cpu() for k, v in state.items() if ".lora_" not in k and "ranknum" not in k}
        # Full module names, so 'layer.0.output.dense' cannot also match 'layer.0.attention.output.dense'.
        pattern = dict(ranks)
        lora_cfg = LoraConfig(
            r=max(ranks.values()),
            lora_alpha=max(ranks.values()),
            lora_dropout=cfg.lora_dropout,
            target_modules=sorted(ranks),
            rank_pattern=pattern,
            alpha_pattern=dict(pattern),
            modules_to_save=unique_modules(cfg.modules_to_save),
            task_type=cfg.task_type,
            base_model_name_or_path=str(base_model_name_or_path or cfg.base_model_name_or_path),
        )
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        lora_cfg.save_pretrained(str(out))
        save_file({**tensors, **heads}, str(out / "adapter_model.safetensors"))
        return out


class ElaLoraAdapter(Adapter):
    """ElaLoRA from elalora_auto.method: rounds of prune-and-grow after optimizer steps."""

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        record = self.model.update_and_allocate(step, optimizer)
        if record is None:
            return None
        self.round_history.append(dict(record))  # the method's RoundRecord, one shape for every method
        return self.round_history[-1]

    def rank_map(self) -> dict[str, int]:
        return dict(self.model.rank_map())

    def num_trainable_parameters(self) -> int:
        return int(self.model.num_trainable_parameters())

    def export_lora(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        self.model.export_lora(path, base_model_name_or_path=base_model_name_or_path)
        return Path(path)


def build_adapter(
    model: nn.Module,
    method: str,
    params: dict[str, Any],
    total_steps: int,
    modules_to_save: list[str] | None = None,
) -> Adapter:
    """Wrap a transformers model with a fresh adapter of `method`; `params` use the shared vocabulary."""
    native = native_params(method, params, total_steps)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if "target_modules" not in native or modules_to_save is None:
        targets, heads = default_targets(model_type)
        native.setdefault("target_modules", targets)
        modules_to_save = heads if modules_to_save is None else modules_to_save
    try:
        if method == "elalora":
            from elalora_auto.method import ElaLoraConfig, get_elalora_model

            config = ElaLoraConfig.from_dict(
                {**native, "total_steps": total_steps, "modules_to_save": list(modules_to_save)}
            )
            return ElaLoraAdapter(get_elalora_model(model, config), method)
        from peft import AdaLoraConfig, LoraConfig, TaskType, get_peft_model

        _check_targets(model, native["target_modules"])

        if method == "lora":
            _check_keys(method, native, _LORA_KEYS)
            peft_cfg = LoraConfig(task_type=TaskType.SEQ_CLS, modules_to_save=list(modules_to_save), **native)
            return LoraAdapter(get_peft_model(model, peft_cfg), method)
        _check_keys(method, native, _ADALORA_KEYS)
        peft_cfg = AdaLoraConfig(
            task_type=TaskType.SEQ_CLS, modules_to_save=list(modules_to_save), total_step=total_steps, **native
        )
        return AdaLoraAdapter(get_peft_model(model, peft_cfg), method)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # an unknown keyword or a value PEFT rejects
        raise ConfigError(f"bad {method} parameters: {' '.join(str(exc).split())}") from exc
