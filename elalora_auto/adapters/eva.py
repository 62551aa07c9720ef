"""EVA (Explained Variance Adaptation, PEFT's `init_lora_weights="eva"`): stock PEFT LoRA whose A matrices start
as the top right-singular vectors of each layer's input activations, computed from training batches before the
optimizer exists. With rho > 1 the ranks are redistributed across layers by explained variance (each layer gets
at most round(r * rho), the total stays the LoRA budget), so rank allocation costs no training time. Its export
is a stock LoRA folder whose rank_pattern/alpha_pattern carry the redistribution.

Names: LoRA's (r_init -> r, lora_alpha, lora_dropout, target_modules, bias) plus EvaConfig's rho, tau, whiten,
adjust_scaling_factors, and eva_batches: how many of the first training batches the SVD may use (the adapter's own
knob; the first epoch's order, so the same batches the training starts with).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from elalora_auto.adapters.base import Adapter, Method, check_targets, numeric_config, peft_config
from elalora_auto.adapters.lora import LORA_KEYS, LoraAdapter
from elalora_auto.errors import ConfigError
from elalora_auto.records import changed_ranks

if TYPE_CHECKING:
    from torch import nn

EVA_KEYS = ("rho", "tau", "whiten", "adjust_scaling_factors")
# EVA's SVD takes batches until every layer's components settle (cosine >= tau, PEFT's default 0.99), cycling when
# they run out. Measured on MiniLM-L6 / SST-2 (BENCHMARKS.md, "EVA initialisation cost"): 64 batches of 16 settle
# after 45 forward passes (r 8, rho 2) and 97 (r 16, rho 3); 8 batches of 32 cycled had not settled after 200.
DEFAULT_BATCHES = 64
# A ceiling on the passes (per distinct batch), so a non-settling SVD fails its trial instead of hanging it.
MAX_PASSES_PER_BATCH = 10


def _split(native: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(LoraConfig part, EvaConfig part, eva_batches) of a translated configuration."""
    lora = {k: v for k, v in native.items() if k in LORA_KEYS}
    return lora, {k: v for k, v in native.items() if k in EVA_KEYS}, native.get("eva_batches", DEFAULT_BATCHES)


def _eva_lora_config(native: dict[str, Any], heads: list[str] | None, model: nn.Module | None = None) -> Any:
    from peft import EvaConfig

    lora, eva, _ = _split(native)
    eva_config = numeric_config(EvaConfig, eva, "eva parameters")
    return peft_config("LoraConfig", lora, heads, "eva parameters", model, init_lora_weights="eva",
                       eva_config=eva_config)


def _bounded_forward(limit: int, tau: float) -> Callable[[Any, dict[str, Any]], Any]:
    """PEFT's forward_fn with a ceiling on the passes, so a non-converging SVD fails the trial instead of hanging."""
    passes = itertools.count(1)

    def forward(model: Any, inputs: dict[str, Any]) -> Any:
        if next(passes) > limit:
            raise RuntimeError(f"EVA's SVD did not converge within {limit} forward passes (tau={tau}); "
                               f"lower tau or give more eva_batches")
        return model(**inputs)

    return forward


def _merge(batches: list[dict[str, Any]], rows: int) -> list[dict[str, Any]]:
    """Consecutive batches joined until each holds at least `rows` rows, right-padded with zeros (positions the
    attention mask hides); a remainder too small is dropped."""
    import torch
    from torch.nn.functional import pad

    merged, group = [], []
    for batch in batches:
        group.append(batch)
        if sum(len(b["input_ids"]) for b in group) >= rows:
            length = max(b["input_ids"].shape[1] for b in group)
            merged.append({k: torch.cat([pad(b[k], (0, length - b[k].shape[1])) for b in group]) for k in batch})
            group = []
    return merged


def _layer_rows(layer_input: Any, token_rows: Any, layer_name: str) -> Any:
    """A layer's SVD input: its unpadded token rows, or every row of a sequence-level input (B, H)."""
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    return x.contiguous() if x.dim() == 2 else x[token_rows.T.unbind()]


@dataclass
class EvaAdapter(LoraAdapter):
    """PEFT LoRA initialised by EVA in `prepare`; until then its ranks are the plain LoRA ones."""

    eva_batches: int = DEFAULT_BATCHES
    planned: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.planned = LoraAdapter.rank_map(self)  # every target, so a layer EVA gives rank 0 still shows as 0

    def prepare(self, batches: Iterable[dict[str, Any]]) -> None:
        """EVA from the first `eva_batches` training batches, recorded as a round at step 0. Labels are left out
        (a sequence label is not a token mask); batches are merged until each has a row per component, as a
        sequence-level layer (BERT's pooler) sees one input row per sequence."""
        from peft import initialize_lora_eva_weights

        config = self.model.peft_config["default"]
        components = round(config.r * config.eva_config.rho)
        taken = [{k: v for k, v in batch.items() if k != "labels"}
                 for batch in itertools.islice(batches, self.eva_batches)]
        merged = _merge(taken, components)
        if not merged:
            raise ConfigError(f"EVA needs {components} training rows (r_init x rho) for its SVD, the first "
                              f"{len(taken)} batches hold fewer; raise eva_batches or batch_size")
        before = self.rank_map()
        with warnings.catch_warnings():  # layers EVA cannot initialise are named by rank_map; no console line
            warnings.simplefilter("ignore")
            initialize_lora_eva_weights(self.model, dataloader=merged, show_progress_bar=False,
                                        prepare_layer_inputs_fn=_layer_rows,
                                        forward_fn=_bounded_forward(MAX_PASSES_PER_BATCH * len(merged),
                                                                    config.eva_config.tau))
        after = self.rank_map()
        self.round_history.append(changed_ranks(0, before, after))

    def rank_map(self) -> dict[str, int]:
        return {**dict.fromkeys(self.planned, 0), **LoraAdapter.rank_map(self)}

    def export_lora(self, path: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """A plain LoRA folder: the EVA-initialised weights were trained, so loading needs no EVA step."""
        config = self.model.peft_config["default"]
        config.init_lora_weights, config.eva_config = True, None
        return super().export_lora(path, base_model_name_or_path)


class EvaMethod(Method):
    """PEFT LoRA with EVA initialisation and rank redistribution (rho)."""

    name = "eva"
    aliases = {"r_init": "r"}

    def native_keys(self) -> Iterable[str]:
        return LORA_KEYS + EVA_KEYS + ("eva_batches",)

    def check(self, native: dict[str, Any], total_steps: int) -> None:
        self.check_shared_rules(native)
        batches = _split(native)[2]
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ConfigError(f"eva_batches={batches!r} must be a whole number >= 1")
        _eva_lora_config(native, None)

    def wrap(self, model: nn.Module, native: dict[str, Any], total_steps: int, heads: list[str]) -> Adapter:
        from peft import get_peft_model

        check_targets(model, native["target_modules"])
        with warnings.catch_warnings():  # "eva used with low_cpu_mem_usage=False": a memory hint for large models
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, _eva_lora_config(native, heads, model))
        return EvaAdapter(peft_model, self.name, eva_batches=_split(native)[2])
