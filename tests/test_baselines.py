"""The Adapter interface over PEFT LoRA / AdaLoRA: training hooks, counts, exports that stock PEFT reloads."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from elalora_auto.errors import ConfigError
from elalora_auto.adapters import build_adapter, default_targets, native_params


def _train(adapter, steps: int, seed: int = 0) -> torch.Tensor:
    """A few AdamW steps on random tokens with the adapter hook where the trial calls it; returns the inputs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(5, 50, (8, 10), generator=gen)
    y = torch.randint(0, 2, (8,), generator=gen)
    opt = torch.optim.AdamW(adapter.param_groups(1e-2))
    for step in range(1, steps + 1):
        adapter.model(input_ids=x, labels=y).loss.backward()
        opt.step()
        adapter.after_optimizer_step(step, opt)
        opt.zero_grad()
    return x


@pytest.mark.parametrize(
    ("method", "params"), [("lora", {"r_init": 4}), ("adalora", {"r_init": 6, "r_target": 3})]
)
def test_export_reloads_in_stock_peft_with_same_outputs(tiny_model_dir, tmp_path, method, params):
    adapter = build_adapter(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), method, params, 40)
    x = _train(adapter, 40)
    adapter.model.eval()
    with torch.no_grad():
        expected = adapter.model(input_ids=x).logits
    adapter.export_lora(tmp_path / "adapter", str(tiny_model_dir))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, expected, atol=1e-5)
    # The matrices adapted: 6 per layer x 2 layers + the pooler.
    assert len(adapter.rank_map()) == 13


def test_adalora_is_driven_to_its_target_budget(tiny_model_dir):
    """PEFT's AdaLoRA trap: nobody calls update_and_allocate. The adapter does, so ranks reach target_r on average."""
    adapter = build_adapter(
        AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), "adalora", {"r_init": 6, "r_target": 3}, 40
    )
    initial = adapter.num_trainable_parameters()
    _train(adapter, 40)
    ranks = adapter.rank_map()
    assert sum(ranks.values()) == 3 * len(ranks)
    assert adapter.round_history and adapter.round_history[-1].total_rank == sum(ranks.values())
    # Counted as the final adapter keeps it: live components only, so fewer than while training at init_r.
    shapes = {n: p.shape for n, p in adapter.model.named_parameters() if ".lora_A." in n}
    assert len(shapes) == 13 and adapter.num_trainable_parameters() < initial


def test_lora_counts_what_the_optimizer_trains(tiny_model_dir):
    adapter = build_adapter(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), "lora", {"r": 2}, 10)
    trainable = sum(p.numel() for group in adapter.param_groups(1e-3) for p in group["params"])
    assert adapter.num_trainable_parameters() == trainable
    assert set(adapter.rank_map().values()) == {2}


def test_shared_vocabulary_and_schedule_defaults():
    assert native_params("adalora", {"r_init": 8, "r_target": 4, "gamma": 0.1}, 200) == {
        "init_r": 8, "target_r": 4, "orth_reg_weight": 0.1, "tinit": 20, "tfinal": 40, "deltaT": 10,
    }
    assert native_params("elalora", {"r": 4, "t_init": 5}, 100)["r_init"] == 4
    assert native_params("elalora", {"r": 4, "t_init": 5}, 100)["t_init"] == 5


def test_bad_parameters_are_user_errors(tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError, match="unknown lora parameter.*valid: .*r_init"):
        build_adapter(model, "lora", {"r_init": 2, "b": 3}, 10)
    with pytest.raises(ConfigError, match="unknown method"):
        build_adapter(model, "dora", {}, 10)
    with pytest.raises(ConfigError, match="target module .nope. matches no"):
        build_adapter(model, "lora", {"target_modules": ["nope"]}, 10)
    with pytest.raises(ConfigError, match="no default target modules"):
        default_targets("t5")


@pytest.mark.parametrize("model_type", ["deberta-v2", "gpt2", "roberta"])
def test_default_targets_exist_in_each_architecture(model_type):
    """Default names must hit real modules of each family (a tiny random model built from its config)."""
    from transformers import AutoConfig

    extra = {"pad_token_id": 0} if model_type == "gpt2" else {}
    config = AutoConfig.for_model(
        model_type, vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        n_embd=16, n_layer=1, n_head=2, num_labels=2, **extra,
    )
    model = AutoModelForSequenceClassification.from_config(config)
    adapter = build_adapter(model, "lora", {"r_init": 2}, 10)
    targets, heads = default_targets(model_type)
    assert len(adapter.rank_map()) >= len(targets) - 1  # attention.output.dense is also matched by output.dense
    saved = [n for n, p in adapter.model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    assert {h for h in heads if any(f".{h}." in n for n in saved)} == set(heads)
