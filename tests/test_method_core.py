"""ElaLoRA method core: config validation, elastic resizing with one optimizer, schedule, rounds, checkpoints."""

from __future__ import annotations

import copy
import inspect
import json
import math
from typing import Iterator

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification
from transformers.utils.generic import find_labels

from elalora_auto.errors import ConfigError
from elalora_auto.method import ElaLoraConfig, ElaLoraModel, get_elalora_model
from elalora_auto.method.layer import LORA_ROW_NORM

VOCAB = 50


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
    )
    return BertForSequenceClassification(config)


def elastic_bert(seed: int = 0, **overrides) -> ElaLoraModel:
    settings = dict(
        target_modules=["query", "value", "dense"], r_init=4, lora_alpha=8, b=3, k=2, t_init=2, t_final=4,
        delta_t=2, total_steps=40, modules_to_save=["classifier"], grace_rounds=0, seed=seed,
    )
    settings.update(overrides)
    return get_elalora_model(tiny_bert(seed), ElaLoraConfig(**settings))


def batches(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A learnable task: the label is whether token 1 occurs in the sequence."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(2, VOCAB, (16, 8), generator=g)
        labels = torch.randint(0, 2, (16,), generator=g)
        ids[labels == 1, torch.randint(0, 8, (1,), generator=g)] = 1
        out.append({"input_ids": ids, "labels": labels})
    return out


def adamw(model: nn.Module, impl: str = "foreach", lr: float = 1e-2) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, **({"fused": True} if impl == "fused" else {"foreach": True}))


def train(model: ElaLoraModel, optimizer, data, first_step: int = 1) -> list[float]:
    """Plain loop in the documented order: backward, step, update_and_allocate, zero_grad."""
    losses = []
    model.train()
    for offset, batch in enumerate(data):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        model.update_and_allocate(first_step + offset, optimizer)
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"t_init": 5, "t_final": 5, "total_steps": 10}, "empty adjustment window"),
        ({"min_rank": 5, "r_init": 4}, "min_rank=5 > r_init=4"),
        ({"max_rank": 3, "r_init": 4}, "max_rank=3 < r_init=4"),
        ({"min_rank": -1}, "min_rank=-1 must be >= 0"),
        ({"b": -1}, "b=-1"),
        ({"k": 0}, "k=0"),
        ({"beta1": 1.0}, "beta1=1.0"),
        ({"beta2": -0.1}, "beta2=-0.1"),
        ({"new_importance": "mean"}, "new_importance"),
        ({"e_lr_scale": 0.0}, "e_lr_scale"),
        ({"init": "kaiming"}, "init='kaiming' must be one of"),
        ({"budget": "flops"}, "budget='flops' must be one of"),
        ({"final_budget": 0.0}, r"final_budget=0.0 must be in \(0, 1\]"),
        ({"final_budget": 1.5}, r"final_budget=1.5 must be in \(0, 1\]"),
        ({"orth_reg_every": 0}, "orth_reg_every=0 must be an integer >= 1"),
        ({"orth_reg_every": 2.5}, "orth_reg_every=2.5 must be an integer >= 1"),
    ],
)
def test_bad_config_raises_one_line_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        ElaLoraConfig(**overrides)
    assert "\n" not in str(info.value)


def test_model_level_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="exceeds what the pool can supply") as info:
        elastic_bert(b=100)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"'qeury' matches no Linear/Conv1D module; close: .*query"):
        elastic_bert(target_modules=["qeury"])
    with pytest.raises(ConfigError, match="modules_to_save entry 'clasifier'"):
        elastic_bert(modules_to_save=["clasifier"])


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    config = ElaLoraConfig(target_modules=r".*\.(query|value)", max_rank=8, modules_to_save=["classifier"])
    assert ElaLoraConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="did you mean 'r_init'"):
        ElaLoraConfig.from_dict({"r_inti": 3})
    assert ElaLoraConfig.__dataclass_fields__["b"].metadata["help"]


def test_targets_match_like_peft_and_everything_else_is_frozen():
    regex = elastic_bert(target_modules=r".*layer\.0\.attention\.self\.(query|value)")
    assert sorted(regex.rank_map()) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
    ]
    model = elastic_bert()
    names = list(model.rank_map())
    assert "bert.encoder.layer.0.attention.output.dense" in names and "bert.pooler.dense" in names
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or ".classifier." in n for n in trainable)
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model.config.hidden_size == 32  # the base model's config, as the Trainer expects
    assert model.elalora_config.r_init == 4
    # The Trainer inspects both the bound and the class-level forward (dataset columns, label names).
    assert {"input_ids", "labels"} <= set(inspect.signature(model.forward).parameters)
    assert find_labels(type(model)) == ["labels"]
    clone = copy.deepcopy(model)
    assert clone.rank_map() == model.rank_map()
    assert all(clone.layers[n] is clone.base_model.get_submodule(n) for n in clone.layers)


# ---------------------------------------------------------------------------- elastic layer
@pytest.mark.parametrize("init", ["paper", "lora"])
def test_expansion_leaves_output_unchanged_and_new_directions_orthogonal(init):
    model = elastic_bert(init=init)
    train(model, adamw(model), batches(3), first_step=1)  # non-trivial A, E, B
    model.eval()
    ids = batches(1, seed=5)[0]["input_ids"]
    before = model(input_ids=ids).logits
    layer = model.layers["bert.encoder.layer.0.attention.self.query"]
    old_rows = layer.lora_A.detach().clone()
    layer.grow(3, torch.Generator().manual_seed(0), None, born_round=1, stats_from_mean=True)
    after = model(input_ids=ids).logits
    assert layer.rank == 7
    assert (after - before).abs().max().item() <= 1e-6
    norm = 1.0 if init == "paper" else LORA_ROW_NORM
    new_rows = layer.lora_A.detach()[4:] / norm
    assert torch.allclose(new_rows.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (new_rows @ old_rows.T).abs().max() < 1e-4
    assert (new_rows @ new_rows.T - torch.eye(3)).abs().max() < 1e-4


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_resizing_keeps_parameters_in_optimizer_and_state_shapes_right(impl):
    model = elastic_bert(t_init=1, t_final=1, delta_t=1, b=4, total_steps=30)
    optimizer = adamw(model, impl)
    adapters = [p for n, p in model.named_parameters() if ".lora_" in n]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    stale_outputs = []
    for step, batch in enumerate(batches(12), start=1):
        outputs = model(**batch)
        outputs.loss.backward()
        stale_outputs.append(outputs)  # keeps old graphs (and their gradient accumulators) alive across resizes
        before = [p.detach().clone() for p in adapters]
        optimizer.step()
        assert all(not torch.equal(b, p) for b, p in zip(before, adapters) if b.shape == p.shape)
        model.update_and_allocate(step, optimizer)
        optimizer.zero_grad()
        assert {id(p) for n, p in model.named_parameters() if ".lora_" in n} <= in_optimizer
        for param in adapters:
            state = optimizer.state[param]
            assert state["exp_avg"].shape == param.shape and state["exp_avg_sq"].shape == param.shape
            assert float(state["step"]) == step
    assert len(model.round_history) >= 8 and any(r["moved"] > 0 for r in model.round_history)
    assert adapters == [p for n, p in model.named_parameters() if ".lora_" in n]  # same objects throughout


def test_optimizer_moments_are_indexed_on_prune_and_zero_padded_on_grow():
    model = elastic_bert()
    optimizer = adamw(model)
    train(model, optimizer, batches(1))
    layer = model.layers["bert.encoder.layer.1.output.dense"]
    moments = optimizer.state[layer.lora_B]["exp_avg"].clone()
    layer.prune([0, 2], optimizer)
    assert torch.equal(optimizer.state[layer.lora_B]["exp_avg"], moments[:, [1, 3]])
    layer.grow(1, torch.Generator().manual_seed(0), optimizer, born_round=1, stats_from_mean=False)
    padded = optimizer.state[layer.lora_B]["exp_avg"]
    assert torch.equal(padded[:, :2], moments[:, [1, 3]]) and not padded[:, 2].any()
    assert not layer.ipt_bar["B"][:, 2].any()


def bf16_step(model: ElaLoraModel, optimizer, batch: dict[str, torch.Tensor], step: int, device: str = "cpu") -> None:
    """One step in the documented order, the forward under bf16 autocast (which must reach the logits)."""
    with torch.autocast(device, dtype=torch.bfloat16):
        outputs = model(**batch)
    assert outputs.logits.dtype == torch.bfloat16
    outputs.loss.backward()
    optimizer.step()
    model.update_and_allocate(step, optimizer)
    optimizer.zero_grad()


def test_bf16_autocast_trains_through_rounds():
    model = elastic_bert(t_init=1, t_final=1, delta_t=1, total_steps=10)
    optimizer = adamw(model)
    for step, batch in enumerate(batches(5), start=1):
        bf16_step(model, optimizer, batch, step)
    assert model.round_history and all(p.dtype == torch.float32 for p in model.parameters())


# ---------------------------------------------------------------------------- schedule and rounds
def test_budget_constant_and_rank_limits_hold_over_many_rounds():
    model = elastic_bert(r_init=3, min_rank=2, max_rank=5, b=4, k=2, t_init=1, t_final=1, delta_t=1,
                         total_steps=40, scheduler=False)
    total = sum(model.rank_map().values())
    previous = model.rank_map()
    optimizer = adamw(model)
    for step, batch in enumerate(batches(38), start=1):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        record = model.update_and_allocate(step, optimizer)
        optimizer.zero_grad()
        ranks = model.rank_map()
        assert sum(ranks.values()) == total
        assert all(2 <= r <= 5 for r in ranks.values())
        assert all(abs(ranks[n] - previous[n]) <= 2 for n in ranks)
        if record is not None:
            assert record["total_rank"] == total and record["moved"] <= 4
        previous = ranks
    assert len(model.round_history) == 37
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert max(model.rank_map().values()) > 3  # ranks really moved


def test_no_rounds_in_warmup_or_final_phase_and_no_score_updates_at_the_end():
    model = elastic_bert(t_init=6, t_final=8, delta_t=3, total_steps=24)
    optimizer = adamw(model)
    train(model, optimizer, batches(16))
    layer = model.layers["bert.encoder.layer.0.attention.self.value"]
    assert layer.ipt_bar["A"].abs().sum() > 0
    frozen = {part: t.clone() for part, t in layer.ipt_bar.items()}
    train(model, optimizer, batches(8, seed=1), first_step=17)
    assert [r["step"] for r in model.round_history] == [9, 12, 15]
    assert all(torch.equal(frozen[p], layer.ipt_bar[p]) for p in frozen)


def test_budget_decays_cubically_to_zero_with_the_scheduler():
    allocator = elastic_bert(b=6, t_init=10, t_final=10, total_steps=110).allocator
    budgets = [allocator.budget(t) for t in range(10, 101)]
    assert budgets[0] == 6 and budgets[-1] == 0
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert allocator.budget(60) == round(6 * (1 - 0.5**3))
    # The closed form b(t) = round(b0 (1 - ((t - t_init) / (T - t_final - t_init))^3)) over the whole window.
    assert budgets == [round(6 * (1 - ((t - 10) / 90) ** 3)) for t in range(10, 101)]
    assert [allocator.budget(t) for t in (40, 70, 85, 95)] == [6, 4, 3, 1]  # 6 (1 - p^3): 5.78, 4.22, 2.53, 0.95
    assert elastic_bert(b=6, scheduler=False).allocator.budget(30) == 6


def test_final_budget_shrinks_the_total_rank_on_a_cubic_schedule_while_rank_still_moves():
    model = elastic_bert(r_init=4, final_budget=0.5, b=3, k=2)
    allocator, matrices = model.allocator, len(model.layers)
    initial = sum(model.rank_map().values())
    assert initial == 4 * matrices
    train(model, adamw(model), batches(38))
    history = model.round_history
    totals = [r["total_rank"] for r in history]
    # The closed form: rounds at t = 4, 6, ..., 34 (t_init 2, delta_t 2, window end T - t_final = 36) keep
    # ceil(initial (1/2 + 1/2 (1 - (t - 2) / 34)^3)); the last round (34) lands on the final budget, initial / 2.
    assert [r["step"] for r in history] == list(range(4, 35, 2))
    expected = [math.ceil(initial * (0.5 + 0.5 * (1 - (r["step"] - 2) / 34) ** 3)) for r in history[:-1]]
    assert totals == [*expected, initial // 2]  # every round lands exactly on its budget
    assert totals[-1] == initial // 2 and history[-1]["step"] == 34  # reached at the window's last round
    assert all(a >= b for a, b in zip(totals, totals[1:])) and totals[0] < initial
    assert allocator.budget_fraction(34) == 0.5 and allocator.budget_fraction(4) > 0.9
    assert sum(r["cut"] for r in model.round_history) == initial // 2
    assert any(r["grown"] for r in model.round_history)  # prune AND expand: moves go on beside the cuts
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert min(model.rank_map().values()) >= 1


def test_final_budget_stops_at_min_rank_per_matrix():
    model = elastic_bert(r_init=4, min_rank=1, final_budget=0.1, b=3, k=3)
    train(model, adamw(model), batches(38))
    assert model.round_history[-1]["total_rank"] == len(model.layers) and set(model.rank_map().values()) == {1}


def test_min_rank_0_lets_a_shrinking_budget_empty_matrices_and_a_state_dict_of_them_loads():
    model = elastic_bert(r_init=4, min_rank=0, final_budget=0.1, b=3, k=3)
    initial = 4 * len(model.layers)
    losses = train(model, adamw(model), batches(38))
    ranks = model.rank_map()
    assert model.round_history[-1]["total_rank"] == sum(ranks.values()) == math.ceil(0.1 * initial)
    assert 0 in ranks.values() and max(ranks.values()) > 1  # emptied matrices, and rank kept where it scored
    assert all(math.isfinite(loss) for loss in losses)
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    empty = next(layer for layer in model.layers.values() if layer.rank == 0)
    x = torch.randn(3, empty.in_features)
    assert torch.equal(empty(x), empty.base_layer(x))  # a rank-0 matrix adds nothing
    assert torch.isfinite(model.orthogonal_regularization())

    fresh = elastic_bert(r_init=4, min_rank=0, final_budget=0.1, b=3, k=3)  # built at r_init
    fresh.load_state_dict(model.state_dict())
    assert fresh.rank_map() == ranks
    ids = batches(1, seed=5)[0]["input_ids"]
    model.eval()
    fresh.eval()
    assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("budget", ["rank", "params"])
def test_min_rank_0_never_cuts_the_adapters_last_component(budget):
    """A final budget below one component (here 0.01 of 11): the rounds stop at one, so there is an adapter."""
    model = elastic_bert(r_init=1, min_rank=0, final_budget=0.01, b=1, k=1, budget=budget)
    assert len(model.layers) == 11
    train(model, adamw(model), batches(38))
    assert sum(model.rank_map().values()) == 1 and model.round_history[-1]["pool_short"]


def test_pool_exhaustion_is_recorded_not_fatal():
    model = elastic_bert(max_rank=4, t_init=1, t_final=1, delta_t=1, total_steps=6)  # nobody may grow
    before = model.rank_map()
    train(model, adamw(model), batches(4))
    assert model.rank_map() == before
    assert [r["moved"] for r in model.round_history] == [0, 0, 0]
    assert all(r["pool_short"] for r in model.round_history)
    assert model.churn_stats()["pool_short_rounds"] == 3


def test_grace_period_protects_new_components():
    grace = 3
    model = elastic_bert(grace_rounds=grace, t_init=1, t_final=1, delta_t=1, b=6, total_steps=14)
    optimizer = adamw(model)
    for step, batch in enumerate(batches(12), start=1):
        model(**batch).loss.backward()
        optimizer.step()
        next_round = model.allocator.round_index + 1
        young = {n: sorted(b for b in layer.born if b and next_round - b < grace) for n, layer in model.layers.items()}
        record = model.update_and_allocate(step, optimizer)
        optimizer.zero_grad()
        for name, layer in model.layers.items():  # every young component survived this round
            assert sorted(b for b in layer.born if b and b < next_round and next_round - b < grace) == young[name]
        if record is not None:
            assert sum(1 for layer in model.layers.values() for b in layer.born if b == record["round"]) == sum(
                count for _, count in record["grown"]
            )
    stats = model.churn_stats()
    assert stats["rounds"] == 11 and stats["prune_events"] == stats["grow_events"] > 0


def held_out_loss(model: ElaLoraModel, data) -> float:
    model.eval()
    with torch.no_grad():
        return sum(model(**batch).loss.item() for batch in data) / len(data)


def test_loss_decreases_and_e_lr_scale_speeds_up_learning():
    """Memorising two batches: the task loss falls, and much faster with E_eff = 10 E than with the paper's E."""
    data = batches(2, seed=9)
    final = {}
    for scale in (10.0, 1.0):
        model = elastic_bert(total_steps=40, t_init=5, t_final=10, delta_t=5, e_lr_scale=scale, init="paper")
        initial = held_out_loss(model, data)
        train(model, adamw(model, lr=5e-3), data * 20)
        final[scale] = held_out_loss(model, data)
        assert model.round_history
    assert final[10.0] < 0.2 * initial
    assert final[10.0] < 0.5 * final[1.0]


class Blocks(nn.Module):
    """Independent Linear blocks on slices of the input: capacity needs are separable per block."""

    def __init__(self, width: int = 16, count: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.chunk(len(self.blocks), dim=-1)
        return torch.cat([block(chunk) for block, chunk in zip(self.blocks, chunks)], dim=-1)


def test_rank_only_flows_to_matrices_that_score_higher():
    """A too-small pool must not push rank back from important matrices to unimportant ones."""
    model = get_elalora_model(Blocks(), ElaLoraConfig(target_modules=r"blocks\.\d", r_init=2, b=2, k=1, t_init=0,
                                                      t_final=0, total_steps=10, grace_rounds=0, scheduler=False))
    layers = [model.layers[f"blocks.{i}"] for i in range(4)]
    for low in (layers[0], layers[3]):
        low.prune([1], None)
    for high in (layers[1], layers[2]):
        high.grow(1, model.allocator.generator, None, born_round=1, stats_from_mean=False)

    def set_scores(value_low: float, value_high: float) -> None:
        for layer, value in zip(layers, (value_low, value_high, value_high, value_low)):
            for part in "AEB":
                layer.ipt_bar[part].fill_(value)
                layer.ipt_unc[part].fill_(1.0)

    set_scores(0.1, 1.0)  # pool: the weakest of blocks 1, 2 (prunable) and the only ones of 0, 3 (grow-only)
    record = model.allocator.run_round(5, None)
    assert record["moved"] == 0 and record["pool_short"]
    assert [layer.rank for layer in layers] == [1, 3, 3, 1]
    set_scores(1.0, 0.1)  # now blocks 0 and 3 matter more: they take rank back
    assert model.allocator.run_round(6, None)["moved"] == 2
    assert [layer.rank for layer in layers] == [2, 2, 2, 2]


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_moves_to_the_blocks_with_a_planted_low_rank_signal(seed):
    torch.manual_seed(seed)
    student, teacher = Blocks(), Blocks()
    teacher.load_state_dict(student.state_dict())
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for i in (1, 2):  # only blocks 1 and 2 need (rank-4) capacity
            teacher.blocks[i].weight += 0.3 * torch.randn(16, 4, generator=g) @ torch.randn(4, 16, generator=g)
    config = ElaLoraConfig(target_modules=r"blocks\.\d", r_init=2, lora_alpha=2, b=2, k=1, t_init=10,
                           t_final=20, delta_t=5, total_steps=80, seed=seed)
    model = get_elalora_model(student, config)
    optimizer = adamw(model, lr=2e-2)
    for step in range(1, 81):
        x = torch.randn(32, 64, generator=g)
        loss = ((model(x) - teacher(x).detach()) ** 2).mean()
        loss.backward()
        optimizer.step()
        model.update_and_allocate(step, optimizer)
        optimizer.zero_grad()
    ranks = model.rank_map()
    assert ranks["blocks.0"] == ranks["blocks.3"] == 1
    assert ranks["blocks.1"] + ranks["blocks.2"] == 6


# ---------------------------------------------------------------------------- checkpoint
def test_checkpoint_resume_is_bit_exact(tmp_path):
    data = batches(20)
    settings = dict(t_init=2, t_final=2, delta_t=2, total_steps=20, grace_rounds=2, new_importance="matrix_mean")

    straight = elastic_bert(**settings)
    optimizer = adamw(straight)
    train(straight, optimizer, data)

    first = elastic_bert(**settings)
    optimizer = adamw(first)
    train(first, optimizer, data[:9])
    first.save_checkpoint(tmp_path / "ckpt.pt", optimizer)
    resumed = elastic_bert(**settings)
    optimizer = adamw(resumed)
    resumed.load_checkpoint(tmp_path / "ckpt.pt", optimizer)
    assert resumed.rank_map() == first.rank_map() != straight.allocator.initial_ranks
    train(resumed, optimizer, data[9:], first_step=10)

    assert resumed.rank_map() == straight.rank_map()
    assert resumed.round_history == straight.round_history
    expected = dict(straight.named_parameters())
    for name, param in resumed.named_parameters():
        assert torch.equal(param, expected[name]), name


# ---------------------------------------------------------------------------- parameterisation (init)
def delta_weights(model: ElaLoraModel) -> list[torch.Tensor]:
    return [(layer.lora_B * (layer.lora_E.view(-1) * layer.e_lr_scale * layer.scaling)) @ layer.lora_A
            for layer in model.layers.values()]


@pytest.mark.parametrize("init", ["paper", "lora"])
def test_delta_w_is_exactly_zero_at_init_and_after_a_grow(init):
    model = elastic_bert(init=init)
    ids = batches(1)[0]["input_ids"]
    model.eval()
    base = tiny_bert(0).eval()
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    for layer in model.layers.values():
        layer.grow(2, model.allocator.generator, None, born_round=1, stats_from_mean=False)
    assert all(not delta.any() for delta in delta_weights(model))
    penalty = model.orthogonal_regularization().item()
    if init == "lora":  # A's rows orthogonal at the initial norm, B = 0: both terms vanish
        assert penalty < 1e-5
    else:  # the 4 initial rows of A and columns of B are ~0 (N(0, 0.02)), the 2 grown ones orthonormal: each
        assert 3.8 < penalty < 4.0  # term is about ||diag(-1, -1, -1, -1, 0, 0)||_F = 2, the penalty about 4


def output_change_after_one_step(model: nn.Module, lr: float = 1e-3) -> float:
    """Largest logit change caused by one AdamW step on the adapter alone (the classifier is frozen)."""
    data = batches(2, seed=3)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=data[1]["input_ids"]).logits
    optimizer = adamw(model, lr=lr)
    model(**data[0]).loss.backward()
    optimizer.step()
    with torch.no_grad():
        return (model(input_ids=data[1]["input_ids"]).logits - before).abs().max().item()


def test_lora_init_learns_from_step_one_like_peft_lora_and_the_paper_form_does_not():
    from peft import LoraConfig, get_peft_model

    common = dict(modules_to_save=[], orth_reg_weight=0.0)
    lora_like = output_change_after_one_step(elastic_bert(init="lora", **common))
    paper = output_change_after_one_step(elastic_bert(init="paper", e_lr_scale=1.0, **common))
    peft = output_change_after_one_step(get_peft_model(
        tiny_bert(0), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "dense"])))
    assert lora_like > 100 * paper
    assert peft / 3 < lora_like < 3 * peft  # same lr and alpha/r: the same speed as PEFT LoRA


def test_init_and_e_lr_scale_defaults():
    assert ElaLoraConfig().init == "lora" and ElaLoraConfig().e_lr_scale == 1.0
    assert ElaLoraConfig(init="paper").e_lr_scale == 300.0
    assert ElaLoraConfig(e_lr_scale=100.0).init == "paper"  # configs written for the paper form keep their meaning
    assert ElaLoraConfig(init="lora", e_lr_scale=4.0).init == "lora"
    layer = elastic_bert(init="lora", e_lr_scale=4.0).layers["bert.pooler.dense"]
    assert torch.allclose(layer.lora_E * 4.0, torch.ones_like(layer.lora_E))  # E_eff starts at 1
    rows = layer.lora_A.detach() / LORA_ROW_NORM
    assert torch.allclose(rows @ rows.T, torch.eye(4), atol=1e-5) and not layer.lora_B.any()


# ---------------------------------------------------------------------------- parameter budget
class Widths(nn.Module):
    """Matrices of very different widths: a component of a wide one costs 4x a narrow one."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow1, self.wide1 = nn.Linear(16, 16), nn.Linear(16, 112)
        self.wide2, self.narrow2 = nn.Linear(112, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.narrow2(self.wide2(torch.tanh(self.wide1(self.narrow1(x)))))


def widths_model(budget: str, seed: int = 0, **overrides) -> ElaLoraModel:
    torch.manual_seed(seed)
    settings = dict(target_modules=["narrow1", "wide1", "wide2", "narrow2"], r_init=3, b=2, k=2, t_init=2,
                    t_final=2, delta_t=2, total_steps=40, max_rank=8, budget=budget, seed=seed)
    settings.update(overrides)
    return get_elalora_model(Widths(), ElaLoraConfig(**settings))


def distil(model: ElaLoraModel, seed: int, steps: int = 40) -> Iterator[int]:
    """Fit a fresh Widths teacher in the documented order; yields each step after its round (if any)."""
    teacher = Widths()
    g = torch.Generator().manual_seed(seed)
    optimizer = adamw(model, lr=2e-2)
    for step in range(1, steps + 1):
        x = torch.randn(32, 16, generator=g)
        ((model(x) - teacher(x).detach()) ** 2).mean().backward()
        optimizer.step()
        model.update_and_allocate(step, optimizer)
        optimizer.zero_grad()
        yield step


@pytest.mark.parametrize("seed", [0, 1])
def test_params_budget_keeps_adapter_parameters_while_total_rank_moves(seed):
    model = widths_model("params", seed)
    budget = model.allocator.param_budget()
    largest = max(model.allocator.component_costs().values())
    for _ in distil(model, seed):
        assert 0 <= budget - model.allocator.adapter_params() < largest
        ranks = model.rank_map().values()
        assert min(ranks) >= 1 and max(ranks) <= 8
    history = model.round_history
    assert len(history) >= 10 and all(0 <= budget - r["adapter_params"] < largest for r in history)
    assert any(r["total_rank"] != 12 for r in history)  # rank is not what is conserved
    assert all(count <= 2 for r in history for _, count in r["pruned"] + r["grown"])  # k


def test_final_budget_under_the_params_budget_ends_within_one_component_of_its_target():
    model = widths_model("params", final_budget=0.5)
    allocator = model.allocator
    budget, largest = allocator.param_budget(), max(allocator.component_costs().values())
    for _ in distil(model, seed=0):
        pass
    history = model.round_history
    # Closed form: a round at t = 4, ..., 36 (window end T - t_final = 38) keeps ceil(budget (1/2 + 1/2 (1 - (t - 2)
    # / 36)^3)) parameters, within one component; the last one (36) the final half. (A round with nothing to cut
    # or move is not recorded.)
    def target(step: int) -> float:
        return budget / 2 if step == 36 else math.ceil(budget * (0.5 + 0.5 * (1 - (step - 2) / 36) ** 3))

    assert {r["step"] for r in history} <= set(range(4, 37, 2)) and len(history) >= 10
    assert all(0 <= target(r["step"]) - r["adapter_params"] < largest for r in history)
    assert 0 <= budget / 2 - history[-1]["adapter_params"] < largest and any(r["cut"] for r in history)
    assert all(count <= 2 for r in history for _, count in r["pruned"] + r["grown"])  # k


def plant_scores(model: ElaLoraModel) -> None:
    """Every narrow component scores 3, every wide one 4.5 (1.5x more per component, 2.6x less per parameter)."""
    for name, layer in model.layers.items():
        for part in "AEB":
            layer.ipt_bar[part].fill_(1.0 if name.startswith("narrow") else 1.5)
            layer.ipt_unc[part].fill_(1.0)


def test_params_budget_buys_narrow_components_with_a_wide_one():
    """Per component the wide matrices score higher, per parameter lower: the two budgets move rank oppositely."""
    model = widths_model("params", b=1, k=4)
    plant_scores(model)
    record = model.allocator.run_round(3, None)
    costs = model.allocator.component_costs()
    assert costs["wide1"] == 129 and costs["narrow1"] == 33
    assert record["moved"] == 1 and sum(count for _, count in record["grown"]) == 3
    assert record["total_rank"] == 14 and 0 <= model.allocator.param_budget() - record["adapter_params"] < 129
    rank_mode = widths_model("rank", b=1, k=4)
    plant_scores(rank_mode)
    record = rank_mode.allocator.run_round(3, None)  # by raw score the wide matrices win
    assert record["pruned"][0][0].startswith("narrow") and record["grown"][0][0].startswith("wide")
    assert record["total_rank"] == 12 and record["adapter_params"] > rank_mode.allocator.param_budget()


def test_a_shrinking_budget_cuts_the_weakest_by_score_or_by_score_per_parameter():
    """At the window's last round half the budget goes: the rank budget cuts the low scorers (narrow), the params
    budget the low scorers per parameter (wide)."""
    rank_mode = widths_model("rank", final_budget=0.5)
    plant_scores(rank_mode)
    record = rank_mode.allocator.run_round(36, None)
    assert record["total_rank"] == 6 and record["cut"] == 6
    ranks = rank_mode.rank_map()
    assert ranks["narrow1"] == ranks["narrow2"] == 1 and ranks["wide1"] + ranks["wide2"] == 4  # wide: ties
    params_mode = widths_model("params", final_budget=0.5)
    plant_scores(params_mode)
    record = params_mode.allocator.run_round(36, None)
    assert params_mode.rank_map() == {"narrow1": 3, "wide1": 1, "wide2": 1, "narrow2": 3}
    assert record["adapter_params"] == 456 and params_mode.allocator.param_budget() // 2 - 456 < 129
