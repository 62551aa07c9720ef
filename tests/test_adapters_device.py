"""Every adapter the trial can build follows `.to()`: after `.to(torch.float64)` training with rank rounds runs and
every tensor it owns (parameters, buffers, PEFT AdaLoRA's importance dicts) has the parameters' dtype.

PEFT's AdaLoRA once kept `ranknum` and its statistics behind on `.to()` (PEFT issues 541 and 581); the trial moves
the model after building the adapter, so this is the path a GPU run takes.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from elalora_auto.adapters import build_adapter

PARAMS = {
    "lora": {"r_init": 4},
    "adalora": {"r_init": 6, "r_target": 3},
    "elalora": {"r_init": 4, "b": 2, "k": 1},
    "eva": {"r_init": 4, "rho": 2.0},
}


def _owned_tensors(adapter) -> dict[str, torch.Tensor]:
    """Parameters, buffers and, for AdaLoRA, the allocator's importance statistics (plain dicts in PEFT)."""
    tensors = {**dict(adapter.model.named_parameters()), **dict(adapter.model.named_buffers())}
    allocator = getattr(getattr(adapter.model, "base_model", None), "rankallocator", None)
    for stat in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        tensors.update({f"rankallocator.{stat}.{k}": v for k, v in getattr(allocator, stat, {}).items()})
    return tensors


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_adapter_trains_with_rounds_after_to_float64(tiny_model_dir, method):
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    adapter = build_adapter(base, method, PARAMS[method], 24)
    adapter.model.to(torch.float64)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(5, 50, (8, 10), generator=gen), torch.randint(0, 2, (8,), generator=gen)
    adapter.prepare(iter([{"input_ids": x, "attention_mask": torch.ones_like(x)}] * 2))  # EVA resizes layers here
    opt = torch.optim.AdamW(adapter.param_groups(1e-2))
    for step in range(1, 25):
        adapter.model(input_ids=x, labels=y).loss.backward()
        opt.step()
        adapter.after_optimizer_step(step, opt)
        opt.zero_grad()
    floating = {n: t.dtype for n, t in _owned_tensors(adapter).items() if t.is_floating_point()}
    assert floating and set(floating.values()) == {torch.float64}, {n: d for n, d in floating.items()
                                                                   if d != torch.float64}
    if method != "lora":  # EVA: its redistribution is the round at step 0
        assert adapter.round_history, f"{method}: no rank round ran in 24 steps"
