"""ElaLoRA with the outside world: stock PEFT loading of the export (no elalora_auto), GPT-2 Conv1D, Trainer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from elalora_auto.method import ElaLoraCallback, ElaLoraConfig, ElaLoraModel, get_elalora_model

VOCAB = 60


def tiny_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        ))
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


SETTINGS = {
    # output.dense and attention.output.dense both adapted: the export must not confuse them.
    "bert": dict(target_modules=["query", "value", "dense"], modules_to_save=["classifier"]),
    "gpt2": dict(target_modules=["c_attn", "c_proj"]),
}

LOAD_WITH_STOCK_PEFT = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForSequenceClassification, AutoModelForCausalLM
    from peft import PeftModel
    for case in sys.argv[1:]:
        expected = torch.load(f"{case}/expected.pt")
        auto = AutoModelForSequenceClassification if case.endswith("bert") else AutoModelForCausalLM
        model = PeftModel.from_pretrained(auto.from_pretrained(f"{case}/base"), f"{case}/adapter").eval()
        ranks = {n.removeprefix("base_model.model.").removesuffix(".lora_A.default"): m.weight.shape[0]
                 for n, m in model.named_modules() if n.endswith("lora_A.default")}
        assert ranks == expected["ranks"], (ranks, expected["ranks"])
        with torch.no_grad():
            diff = (model(input_ids=expected["ids"]).logits - expected["logits"]).abs().max().item()
            merged = model.merge_and_unload()
            merged_diff = (merged(input_ids=expected["ids"]).logits - expected["logits"]).abs().max().item()
        with torch.no_grad():
            base_diff = (auto.from_pretrained(f"{case}/base")(input_ids=expected["ids"]).logits
                         - expected["logits"]).abs().max().item()
        print(case, diff, merged_diff, base_diff)
        assert base_diff > 1e-3, (case, base_diff)  # the adapter really changes the output
        assert diff <= 1e-5 and merged_diff <= 1e-5, (case, diff, merged_diff)
    assert "elalora_auto" not in sys.modules
""")


def export_trained(kind: str, folder: Path, **overrides: object) -> None:
    """Train a few steps with rounds, then write base/, adapter/ and expected.pt (logits, ranks) to folder."""
    base = tiny_model(kind)
    base.save_pretrained(folder / "base")
    model = get_elalora_model(base, ElaLoraConfig(**{**dict(r_init=3, b=4, k=2, t_init=1, t_final=1, delta_t=1,
                                                           total_steps=12, grace_rounds=0, **SETTINGS[kind]),
                                                     **overrides}))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 9):
        ids = torch.randint(0, VOCAB, (8, 10), generator=g)
        labels = torch.randint(0, 2, (8,), generator=g) if kind == "bert" else ids
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        model.update_and_allocate(step, optimizer)
        optimizer.zero_grad()
    every = model.rank_map()
    assert len(set(every.values())) > 1  # really variable-rank
    assert (0 in every.values()) == (overrides.get("min_rank") == 0)  # min_rank 0 emptied a matrix here
    ranks = {name: rank for name, rank in every.items() if rank}  # a rank-0 matrix stays its base layer
    assert all(layer.fan_in_fan_out == (kind == "gpt2") for layer in model.layers.values())
    model.eval()
    ids = torch.randint(0, VOCAB, (3, 10), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    torch.save({"ids": ids, "logits": logits, "ranks": ranks}, folder / "expected.pt")
    model.export_lora(folder / "adapter", base_model_name_or_path=str(folder / "base"))
    saved = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(folder / "base")
    assert sorted(saved["target_modules"]) == sorted(ranks)


def test_export_loads_in_stock_peft_with_identical_logits(tmp_path):
    """BERT (Linear, modules_to_save), GPT-2 (Conv1D) and BERT with matrices emptied (min_rank 0) exports, checked
    by a process without elalora_auto."""
    cases = {tmp_path / "bert": ("bert", {}), tmp_path / "gpt2": ("gpt2", {}),
             tmp_path / "min0-bert": ("bert", {"min_rank": 0, "final_budget": 0.1, "total_steps": 10})}
    for case, (kind, overrides) in cases.items():
        export_trained(kind, case, **overrides)
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITH_STOCK_PEFT)
    result = subprocess.run([sys.executable, str(script), *map(str, cases)],
                            capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


class ImportanceProbe(TrainerCallback):
    """Runs after ElaLoraCallback: records the importance mass seen just before the first round."""

    def __init__(self, model: ElaLoraModel, step: int) -> None:
        self.model, self.step, self.mass = model, step, None

    def on_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.mass = sum(float(layer.ipt_bar[p].abs().sum()) for layer in self.model.layers.values() for p in "AEB")


def test_trainer_with_callback_moves_ranks_from_real_gradients(tmp_path):
    model = get_elalora_model(tiny_model("bert"), ElaLoraConfig(
        r_init=3, b=2, k=1, t_init=3, t_final=3, delta_t=2, grace_rounds=0, **SETTINGS["bert"]))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, (64, 8), generator=g)
    labels = (ids[:, 0] % 2).tolist()
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels, "sentence": ["unused"] * 64})
    probe = ImportanceProbe(model, step=3)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, gradient_accumulation_steps=2,
                             max_steps=14, learning_rate=1e-2, logging_steps=100, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(16)),
                      callbacks=[ElaLoraCallback(), probe])
    initial = model.rank_map()
    trainer.train()
    assert model.elalora_config.total_steps == 14
    assert probe.mass is not None and probe.mass > 0
    assert [r["step"] for r in model.round_history] == [5, 7, 9]
    assert model.rank_map() != initial
    assert sum(model.rank_map().values()) == sum(initial.values())
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics  # labels reached the model: Trainer saw the wrapped signature
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_trainer_resumes_from_a_checkpoint_after_rounds_resized_the_adapters(tmp_path):
    """checkpoint-6 is saved after the round at step 5 moved ranks; a fresh model (built at r_init) and a fresh
    Trainer resumed from it log the same losses at steps 7-14 and end with the same ranks and weights as the run
    that went on uninterrupted (the adapters, their statistics, the allocator and Adam's moments all resized)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, (64, 8), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})

    def run(resume: str | None) -> tuple[ElaLoraModel, dict[int, float]]:
        model = get_elalora_model(tiny_model("bert"), ElaLoraConfig(
            r_init=3, b=2, k=1, t_init=3, t_final=2, delta_t=2, grace_rounds=0, **SETTINGS["bert"]))
        args = TrainingArguments(output_dir=str(tmp_path / ("resumed" if resume else "straight")), max_steps=14,
                                 per_device_train_batch_size=8, learning_rate=1e-2, logging_steps=1,
                                 save_strategy="steps", save_steps=6, report_to=[], use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[ElaLoraCallback()])
        trainer.train(resume_from_checkpoint=resume)
        return model, {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}

    straight, losses = run(None)
    assert [r["step"] for r in straight.round_history] == [5, 7, 9, 11]
    checkpoint = tmp_path / "straight" / "checkpoint-6"
    resumed, resumed_losses = run(str(checkpoint))
    assert resumed.rank_map() != resumed.allocator.initial_ranks  # the checkpoint's ranks, not r_init
    assert [r["step"] for r in resumed.round_history] == [7, 9, 11]  # rounds go on where they were
    assert sorted(resumed_losses) == list(range(1, 15))  # 1-6 come from the checkpoint's trainer state
    assert [resumed_losses[s] for s in range(7, 15)] == pytest.approx([losses[s] for s in range(7, 15)], rel=1e-5)
    assert resumed.rank_map() == straight.rank_map()
    expected = dict(straight.named_parameters())
    for name, param in resumed.named_parameters():
        assert torch.allclose(param, expected[name], atol=1e-6), name
