"""ElaLoRA on a CUDA device: every statistic follows `.to("cuda")`, and rounds resize parameters, statistics and
fused AdamW's state on the device under bf16 autocast; the Trainer moves a CPU-built model there itself.
Skipped, with the reason, on a machine without CUDA."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from elalora_auto.method import ElaLoraCallback
from test_method_core import bf16_step
from test_method_state import VOCAB, DeviceProbe, assert_follow_parameters, batch, elastic, owned_tensors

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_statistics_follow_to_cuda_and_rounds_run_there_with_fused_adamw_under_bf16_autocast():
    model = elastic(t_init=1, t_final=1, delta_t=1, total_steps=12).to("cuda")
    assert_follow_parameters(model)
    assert all(layer.born_round.device.type == "cuda" for layer in model.layers.values())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    model.train()
    for step in range(1, 9):
        bf16_step(model, optimizer, {key: value.cuda() for key, value in batch(step).items()}, step, "cuda")
        assert_follow_parameters(model)
        for layer in model.layers.values():  # the fused optimizer's moments were resized with their parameter
            for part in "AEB":
                param = layer.param(part)
                state = optimizer.state[param]
                assert state["exp_avg"].shape == param.shape and state["exp_avg"].device == param.device
    assert any(record["moved"] for record in model.round_history)
    assert model.rank_map() != model.allocator.initial_ranks
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in model.parameters())
    assert all(stats.abs().sum() > 0 for key, stats in owned_tensors(model) if ".bar." in key)


def test_the_trainer_moves_a_cpu_built_model_to_cuda_and_statistics_follow(tmp_path):
    model = elastic(t_init=2, t_final=2, delta_t=2, total_steps=None, b=2, k=1)
    assert all(p.device.type == "cpu" for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, (64, 8), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})
    probe = DeviceProbe(model)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=10, bf16=True,
                             learning_rate=1e-2, save_strategy="no", report_to=[], disable_tqdm=True,
                             optim="adamw_torch_fused")
    Trainer(model=model, args=args, train_dataset=data, callbacks=[ElaLoraCallback(), probe]).train()
    assert [record["step"] for record in model.round_history] == [4, 6]
    assert probe.seen == {("cuda", torch.float32)}  # every statistic, at every optimizer step, on the device
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cuda", torch.float32)}
    assert_follow_parameters(model)
