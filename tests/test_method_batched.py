"""method/batched.py: the batched per-step work means what the per-matrix definitions mean, and its cached tensor
lists follow every change of a layer (a round, loading another rank, .to(), assigning a buffer)."""

from __future__ import annotations

import pytest
import torch

from elalora_auto.method import ElaLoraModel
from elalora_auto.method.batched import OrthGroup
from test_method_core import adamw, batches, elastic_bert, train


def per_matrix_penalty(model: ElaLoraModel) -> torch.Tensor:
    """The definition: the mean over matrices of each layer's own orth_penalty()."""
    return torch.stack([layer.orth_penalty() for layer in model.layers.values()]).mean()


def adapter_factors(model: ElaLoraModel) -> list[torch.nn.Parameter]:
    return [p for layer in model.layers.values() for p in (layer.lora_A, layer.lora_B)]


def grads_of(value: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, params))


@pytest.mark.parametrize("init", ["lora", "paper"])
def test_penalty_is_the_mean_of_the_per_matrix_penalties(init: str) -> None:
    """Bit for bit at the start (equal ranks: at the LoRA init A A^T / a^2 - I is rounding noise there, so only
    identical arithmetic gives the same first step), to float rounding after ranks diverged."""
    model = elastic_bert(init=init, **({"e_lr_scale": 10.0} if init == "paper" else {}))
    params = adapter_factors(model)
    expected, got = per_matrix_penalty(model), model.orthogonal_regularization()
    assert torch.allclose(got, expected, rtol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(grads_of(got, params), grads_of(expected, params)))

    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    layers = list(model.layers.values())
    layers[0].prune([1, 2], None)
    layers[1].grow(3, model.allocator.generator, None, born_round=1, stats_from_mean=False)
    layers[2].prune(list(range(layers[2].rank)), None)  # emptied (min_rank 0): its term is 0, not in a group
    assert len({layer.rank for layer in layers}) == 4 and layers[2].rank == 0
    expected, got = per_matrix_penalty(model), model.orthogonal_regularization()
    assert torch.allclose(got, expected, rtol=1e-6)
    params = [p for p in params if p.numel()]
    for a, b in zip(grads_of(got, params), grads_of(expected, params)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def importance_by_hand(model: ElaLoraModel) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """One EMA step of every (matrix, part) with a gradient, written out per matrix."""
    beta1, beta2 = model.elalora_config.beta1, model.elalora_config.beta2
    out = {}
    for name, layer in model.layers.items():
        for part in "AEB":
            param = layer.param(part)
            if param.grad is None:
                continue
            ipt = (param * param.grad).abs().detach()
            bar = beta1 * layer.ipt_bar[part] + (1 - beta1) * ipt
            out[name, part] = bar, beta2 * layer.ipt_unc[part] + (1 - beta2) * (ipt - bar).abs()
    return out


def backward_once(model: ElaLoraModel, seed: int = 0) -> None:
    model.train()
    model(**batches(1, seed=seed)[0]).loss.backward()


def assert_importance_step(model: ElaLoraModel) -> None:
    expected = importance_by_hand(model)
    model.allocator.update_importance()
    for (name, part), (bar, unc) in expected.items():
        layer = model.layers[name]
        assert torch.allclose(layer.ipt_bar[part], bar, rtol=1e-6, atol=0), (name, part)
        assert torch.allclose(layer.ipt_unc[part], unc, rtol=1e-6, atol=1e-12), (name, part)


def test_importance_update_follows_every_change_of_the_layers() -> None:
    model = elastic_bert()
    first = next(iter(model.layers.values()))
    backward_once(model)
    first.lora_A.grad = None  # a factor without a gradient is left alone
    untouched = first.ipt_bar["A"].clone()
    assert_importance_step(model)
    assert torch.equal(first.ipt_bar["A"], untouched)
    model.zero_grad(set_to_none=True)

    first.prune([0], None)  # a round's resize
    backward_once(model, seed=1)
    assert_importance_step(model)
    model.zero_grad(set_to_none=True)

    first.ipt_bar_A = torch.full_like(first.ipt_bar_A, 0.5)  # a buffer assigned from outside
    backward_once(model, seed=2)
    assert_importance_step(model)
    assert not torch.equal(first.ipt_bar["A"], torch.full_like(first.ipt_bar_A, 0.5))
    model.zero_grad(set_to_none=True)

    model.double()  # .to() replaces every buffer
    backward_once(model, seed=3)
    assert_importance_step(model)
    assert first.ipt_bar["A"].dtype == torch.float64
    assert model.orthogonal_regularization().dtype == torch.float64


def test_orth_reg_every_adds_the_penalty_on_every_nth_step_weighted_n_times() -> None:
    """Lazy regularisation: steps 1, n + 1, 2n + 1, ... (the allocator's last step plus one) get n times the weight,
    the others none; evaluation never."""
    model = elastic_bert(orth_reg_weight=0.1, orth_reg_every=3)
    with torch.no_grad():  # away from the LoRA init, where the penalty is rounding noise
        for p in adapter_factors(model):
            p.add_(torch.randn_like(p) * 0.05)
    batch = batches(1)[0]
    model.train()
    task, penalty = model.base_model(**batch).loss, per_matrix_penalty(model)
    assert penalty > 1e-3
    for last_step, weight in [(None, 0.3), (1, 0.0), (2, 0.0), (3, 0.3), (4, 0.0), (6, 0.3)]:
        model.allocator.last_step = last_step
        assert torch.allclose(model(**batch).loss, task + weight * penalty, rtol=1e-6), last_step
    model.eval()
    model.allocator.last_step = 3
    assert torch.allclose(model(**batch).loss, model.base_model(**batch).loss)


def test_a_rebuild_keeps_the_groups_a_round_did_not_touch() -> None:
    """After a resize only the groups of the resized matrix are built again (a round changes a few of many);
    a move to another dtype builds them all, and the penalty stays the per-matrix definition throughout."""
    model = elastic_bert()
    with torch.no_grad():  # away from the LoRA init, where the penalty is rounding noise
        for p in adapter_factors(model):
            p.add_(torch.randn_like(p) * 0.05)
    batch = model.allocator.batch
    first, second = list(model.layers.values())[:2]
    first.prune([0], None)
    second.grow(1, model.allocator.generator, None, born_round=1, stats_from_mean=False)
    before = {id(group) for group in batch._fresh().groups}
    first.prune([0], None)  # the first matrix alone in its groups before and after
    after = batch._fresh().groups
    rebuilt = [group for group in after if id(group) not in before]
    assert [param for group in rebuilt for param in group.params] == [first.lora_A, first.lora_B]
    assert len(after) == len(before)
    assert torch.allclose(model.orthogonal_regularization(), per_matrix_penalty(model), rtol=1e-6)
    second.lora_A = torch.nn.Parameter(second.lora_A.detach() * 2)  # an assigned parameter, not a resize
    assert [group.params for group in batch._fresh().groups if id(group) not in {id(g) for g in after}] == [
        [second.lora_A]]
    assert torch.allclose(model.orthogonal_regularization(), per_matrix_penalty(model), rtol=1e-6)
    after = batch._fresh().groups
    model.double()
    assert not {id(group) for group in batch._fresh().groups} & {id(group) for group in after}
    assert torch.allclose(model.orthogonal_regularization(), per_matrix_penalty(model), rtol=1e-6)


def test_a_state_dict_of_another_rank_loads_into_the_cached_lists() -> None:
    trained = elastic_bert()
    next(iter(trained.layers.values())).grow(2, trained.allocator.generator, None, born_round=1,
                                             stats_from_mean=False)
    fresh = elastic_bert()
    backward_once(fresh)
    fresh.allocator.update_importance()  # builds the lists at the initial ranks
    fresh.zero_grad(set_to_none=True)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.rank_map() == trained.rank_map()
    assert torch.allclose(fresh.orthogonal_regularization(), per_matrix_penalty(fresh), rtol=1e-6)
    backward_once(fresh)
    assert_importance_step(fresh)


class GroupDiff(torch.autograd.Function):
    """One group's Gram / divisor * mask - target as its own autograd node (the composed form of the penalty)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: OrthGroup) -> torch.Tensor:
        x, diff = group.gram_diff(x)
        ctx.group = group
        ctx.save_for_backward(x)
        return diff

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        group = ctx.group
        if group.mask is not None:
            grad = grad * group.mask
        if group.divisor is not None:
            grad = grad / group.divisor
        return group.gram_grad(grad, ctx.saved_tensors[0]), None


def composed_penalty(model: ElaLoraModel) -> torch.Tensor:
    """The penalty as autograd composes it from torch ops: per group stack, GroupDiff and matrix_norm, then cat,
    sum and the division by the matrix count."""
    norms = [torch.linalg.matrix_norm(GroupDiff.apply(torch.stack(group.params), group))
             for group in model.allocator.batch._fresh().groups]
    return (torch.cat(norms) if len(norms) > 1 else norms[0]).sum() / len(model.layers)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("init", ["lora", "paper"])
def test_the_penalty_node_gives_the_composed_graphs_values_and_gradients(init: str, autocast: bool) -> None:
    """Bit for bit, at diverged ranks and under bf16 autocast too: one node's backward is autograd's."""
    model = elastic_bert(init=init)
    layers = list(model.layers.values())
    with torch.no_grad():
        for p in adapter_factors(model):
            p.add_(torch.randn_like(p) * 0.05)
        layers[2].lora_B.zero_()  # a zero norm (LoRA-init B at the start): its gradient is 0, not NaN
    layers[0].prune([1, 2], None)
    layers[1].grow(3, model.allocator.generator, None, born_round=1, stats_from_mean=False)
    params = adapter_factors(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got, expected = model.orthogonal_regularization(), composed_penalty(model)
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    for a, b in zip(grads_of(0.1 * got, params), grads_of(0.1 * expected, params)):
        assert a.dtype == b.dtype and torch.equal(a, b)


def per_tensor_importance(model: ElaLoraModel) -> None:
    """The EMA before the flat buffers: each (matrix, part) statistic updated on its own by plain tensor ops."""
    beta1, beta2 = model.elalora_config.beta1, model.elalora_config.beta2
    with torch.no_grad():
        for layer in model.layers.values():
            for part in "AEB":
                param, bar, unc = layer.param(part), layer.ipt_bar[part], layer.ipt_unc[part]
                ipt = (param * param.grad).abs()
                bar.mul_(beta1).add_(ipt, alpha=1.0 - beta1)
                unc.mul_(beta2).add_((ipt - bar).abs(), alpha=1.0 - beta2)


@pytest.mark.parametrize("budget", ["rank", "params"])
@pytest.mark.parametrize("init", ["lora", "paper"])
def test_a_run_is_bit_identical_to_the_per_tensor_reference(init: str, budget: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 29's 'same seed, same losses': 36 steps with a round every 2nd step from step 4 give the same losses,
    rank maps, parameters and statistics, bit for bit, with the flat EMA buffers and the one-node penalty as with
    per-tensor EMA updates and the composed penalty graph."""
    runs = []
    for flat in (True, False):
        model = elastic_bert(init=init, budget=budget, orth_reg_weight=0.1, t_final=2)
        if not flat:
            monkeypatch.setattr(model.allocator, "update_importance", lambda m=model: per_tensor_importance(m))
            monkeypatch.setattr(model.allocator.batch, "orthogonal_regularization", lambda m=model: composed_penalty(m))
        losses = train(model, adamw(model), batches(36))
        assert model.allocator.batch.flat is not None or not flat  # the flat path ran
        runs.append((losses, model.rank_map(), model.adapter_state_dict(), model.round_history))
    (losses, ranks, state, history), (ref_losses, ref_ranks, ref_state, ref_history) = runs
    assert len(history) >= 10 and len(set(ranks.values())) > 1  # rounds ran and moved rank
    assert losses == ref_losses
    assert ranks == ref_ranks and history == ref_history
    assert state.keys() == ref_state.keys()
    assert [key for key in state if not torch.equal(state[key], ref_state[key])] == []
