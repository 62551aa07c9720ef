"""Every tensor ElaLoRA owns follows the module (.to, state_dict) and a resized state dict loads into a fresh model."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from elalora_auto.method import ElaLoraCallback, ElaLoraConfig, ElaLoraModel, get_elalora_model

VOCAB = 50


def elastic(seed: int = 0, **overrides) -> ElaLoraModel:
    torch.manual_seed(seed)
    base = BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
    ))
    settings = dict(target_modules=["query", "value", "dense"], r_init=4, lora_alpha=8, b=3, k=2, t_init=1,
                    t_final=1, delta_t=1, total_steps=20, modules_to_save=["classifier"], seed=seed)
    settings.update(overrides)
    return get_elalora_model(base, ElaLoraConfig(**settings))


def batch(seed: int = 0, dtype_ids: torch.dtype = torch.long) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(2, VOCAB, (8, 8), generator=g, dtype=dtype_ids),
            "labels": torch.randint(0, 2, (8,), generator=g)}


def train(model: ElaLoraModel, steps: int, lr: float = 1e-2) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(1, steps + 1):
        model(**batch(step)).loss.backward()
        optimizer.step()
        model.update_and_allocate(step, optimizer)
        optimizer.zero_grad()
    return optimizer


def owned_tensors(model: ElaLoraModel) -> list[tuple[str, torch.Tensor]]:
    """Statistics of every layer, as the allocator reads them."""
    return [(f"{name}.{kind}.{part}", stats[part]) for name, layer in model.layers.items()
            for kind, stats in (("bar", layer.ipt_bar), ("unc", layer.ipt_unc)) for part in "AEB"]


def assert_follow_parameters(model: ElaLoraModel) -> None:
    for name, layer in model.layers.items():
        reference = layer.lora_A
        for key, tensor in owned_tensors(model):
            if key.startswith(name + "."):
                assert (tensor.device, tensor.dtype) == (reference.device, reference.dtype), key


@pytest.mark.parametrize("target", [torch.float64, "meta"])
def test_statistics_follow_to(target):
    model = elastic()
    train(model, 3)
    model.to(target)
    assert_follow_parameters(model)
    assert all(layer.born_round.device == layer.lora_A.device for layer in model.layers.values())


def test_training_with_rounds_runs_after_to_float64():
    model = elastic().to(torch.float64)
    train(model, 6)
    assert model.round_history and any(record["moved"] for record in model.round_history)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert_follow_parameters(model)
    assert all(stats.abs().sum() > 0 for key, stats in owned_tensors(model) if ".bar." in key)


def test_state_dict_round_trip_after_rounds_into_a_fresh_model():
    trained = elastic()
    train(trained, 8)
    assert trained.rank_map() != trained.allocator.initial_ranks
    state = trained.state_dict()
    fresh = elastic()
    fresh.load_state_dict(state)
    assert fresh.rank_map() == trained.rank_map()
    for (key, a), (_, b) in zip(owned_tensors(trained), owned_tensors(fresh), strict=True):
        assert torch.equal(a, b), key
    for (name, a), (_, b) in zip(trained.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    for name in trained.layers:
        assert fresh.layers[name].born == trained.layers[name].born
    assert fresh.allocator.round_index == trained.allocator.round_index
    assert fresh.allocator.last_step == trained.allocator.last_step
    # The generator travels too: both models grow the same directions in the next round.
    probe = batch(99)
    fresh.eval(), trained.eval()
    assert torch.equal(fresh(**probe).logits, trained(**probe).logits)
    for model in (trained, fresh):
        model.allocator.layers["bert.pooler.dense"].grow(1, model.allocator.generator, None, 9, False)
    assert torch.equal(fresh.layers["bert.pooler.dense"].lora_A, trained.layers["bert.pooler.dense"].lora_A)


def test_state_dict_holds_only_tensors_and_rejects_foreign_keys():
    state = elastic().state_dict()
    assert all(torch.is_tensor(v) for v in state.values())  # safetensors (Trainer.save_model) needs this
    assert any(key.endswith(".ipt_bar_A") for key in state) and any(key.endswith(".born_round") for key in state)
    state["base_model.unknown"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="unknown"):
        elastic().load_state_dict(state)


class DeviceProbe(TrainerCallback):
    """Records the device and dtype of every statistic while the Trainer trains (after ElaLoraCallback)."""

    def __init__(self, model: ElaLoraModel) -> None:
        self.model, self.seen = model, set()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.seen |= {(t.device.type, t.dtype) for _, t in owned_tensors(self.model)}


def test_statistics_stay_with_a_float64_model_through_trainer_rounds(tmp_path):
    """The test casts the model to float64 (use_cpu: the Trainer moves nothing); every statistic the rounds resize
    stays in the parameters' device and dtype. Moving to CUDA under the Trainer: tests/test_cuda.py."""
    model = elastic(t_init=2, t_final=2, delta_t=2, total_steps=None, b=2, k=1).to(torch.float64)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, (64, 8), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})
    probe = DeviceProbe(model)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=10,
                             learning_rate=1e-2, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[ElaLoraCallback(), probe]).train()
    assert [record["step"] for record in model.round_history] == [4, 6]
    params = {(p.device.type, p.dtype) for p in model.parameters()}
    assert probe.seen == params and len(params) == 1
    assert_follow_parameters(model)
