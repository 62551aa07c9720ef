"""ElaLoRA's arithmetic against numbers worked out by hand: the importance |w * grad| of A, E and B, its beta1/beta2
moving averages, the component score, the component a round then prunes and the matrix it grows, and the
orthogonal regulariser (value and gradient) on a trained adapter. Nothing here is derived from the code under test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from elalora_auto.method import ElaLoraConfig, ElaLoraModel, get_elalora_model
from elalora_auto.method.layer import LORA_ROW_NORM
from test_method_core import adamw, batches, elastic_bert, train

# One matrix of rank 2 on a Linear(2 -> 1): A is 2x2, E is 2x1, B is 1x2.
WEIGHTS = {"A": [[1.0, 2.0], [3.0, -1.0]], "E": [[0.5], [-2.0]], "B": [[4.0, -0.5]]}
GRADS_1 = {"A": [[0.1, -0.2], [0.3, 0.05]], "E": [[1.0], [0.25]], "B": [[-0.5, 2.0]]}
GRADS_2 = {"A": [[0.2, 0.0], [0.1, 0.1]], "E": [[0.0], [1.0]], "B": [[1.0, 1.0]]}
BETA1, BETA2 = 0.8, 0.6
# By hand: I1 = |w g1| = A [[.1, .4], [.9, .05]], E [[.5], [.5]], B [[2, 1]];  I2 = A [[.2, 0], [.3, .1]], E [[0], [2]],
# B [[4, .5]].  Ibar1 = 0.2 I1, U1 = 0.4 |I1 - Ibar1| = 0.32 I1;  Ibar2 = 0.8 Ibar1 + 0.2 I2, U2 = 0.6 U1 + 0.4 |I2 - Ibar2|.
IBAR_2 = {"A": [[0.056, 0.064], [0.204, 0.028]], "E": [[0.08], [0.48]], "B": [[1.12, 0.26]]}
UNC_2 = {"A": [[0.0768, 0.1024], [0.2112, 0.0384]], "E": [[0.128], [0.704]], "B": [[1.536, 0.288]]}
# S_i = s(E_i) + mean_j s(A_ij) + s(B_0i), s = Ibar U:
# S_0 = .08 x .128 + (.056 x .0768 + .064 x .1024) / 2 + 1.12 x 1.536 = 1.7359872
# S_1 = .48 x .704 + (.204 x .2112 + .028 x .0384) / 2 + .26 x .288  = 0.43488
SCORES_2 = [1.7359872, 0.43488]


class Pair(nn.Module):
    """Two independent Linear(2 -> 1) layers; the tests set weights and gradients by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.m0, self.m1 = nn.Linear(2, 1), nn.Linear(2, 1)


def pair_model(**overrides) -> ElaLoraModel:
    settings = dict(target_modules=["m0", "m1"], r_init=2, b=1, k=1, t_init=1, t_final=0, delta_t=1, total_steps=10,
                    scheduler=False, grace_rounds=0, beta1=BETA1, beta2=BETA2, orth_reg_weight=0.0)
    settings.update(overrides)
    model = get_elalora_model(Pair(), ElaLoraConfig(**settings))
    with torch.no_grad():
        for layer in model.layers.values():
            for part, value in WEIGHTS.items():
                layer.param(part).copy_(torch.tensor(value))
    return model


def set_grads(model: ElaLoraModel, grads: dict[str, list[list[float]]], scale: dict[str, float]) -> None:
    for name, layer in model.layers.items():
        for part, value in grads.items():
            layer.param(part).grad = torch.tensor(value) * scale[name]


def test_importance_ema_and_uncertainty_match_the_hand_computation():
    model = pair_model(t_init=5)  # both steps in the warm-up: statistics only, no round
    layer = model.layers["m0"]
    set_grads(model, GRADS_1, {"m0": 1.0, "m1": 1.0})
    model.update_and_allocate(1)
    assert torch.allclose(layer.ipt_bar["A"], torch.tensor([[0.02, 0.08], [0.18, 0.01]]))  # 0.2 |w g|
    assert torch.allclose(layer.ipt_unc["B"], torch.tensor([[0.64, 0.32]]))  # 0.32 |w g|
    set_grads(model, GRADS_2, {"m0": 1.0, "m1": 1.0})
    model.update_and_allocate(2)
    for part in "AEB":
        assert torch.allclose(layer.ipt_bar[part], torch.tensor(IBAR_2[part])), part
        assert torch.allclose(layer.ipt_unc[part], torch.tensor(UNC_2[part])), part
    assert torch.allclose(layer.component_scores(), torch.tensor(SCORES_2))
    model.update_and_allocate(2)  # the same step twice is one update
    assert torch.allclose(layer.ipt_bar["E"], torch.tensor(IBAR_2["E"]))


def test_a_round_prunes_the_lowest_scoring_component_and_grows_the_matrix_that_scores_higher():
    """m1 sees twice m0's gradients, so each of its statistics doubles and its scores are 4x m0's. The pool holds
    each matrix's weakest component: m0's component 1 (0.435; its E alone would call it the stronger one, B decides)
    and m1's (1.74). b = 1: m0 loses component 1 (row [3, -1] of A goes, row [1, 2] stays) and m1 grows."""
    model = pair_model()
    scale = {"m0": 1.0, "m1": 2.0}
    set_grads(model, GRADS_1, scale)
    assert model.update_and_allocate(1) is None  # warm-up
    set_grads(model, GRADS_2, scale)
    record = model.update_and_allocate(2)  # statistics, then the first round
    assert record["pruned"] == [["m0", 1]] and record["grown"] == [["m1", 1]] and record["moved"] == 1
    assert model.rank_map() == {"m0": 1, "m1": 3}
    m0 = model.layers["m0"]
    assert torch.equal(m0.lora_A.detach(), torch.tensor([[1.0, 2.0]])) and torch.equal(m0.lora_B.detach(),
                                                                                          torch.tensor([[4.0]]))
    assert torch.allclose(m0.ipt_bar["E"], torch.tensor([[0.08]]))  # the survivor keeps its statistics
    assert torch.allclose(m0.component_scores(), torch.tensor(SCORES_2[:1]))


def hand_penalty(a: torch.Tensor, b: torch.Tensor, init: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One matrix's penalty and its gradients w.r.t. A and B, from d||M||_F = <M / ||M||_F, dM>:
    paper: M = A A^T - I gives 2 M A / ||M||;  N = B^T B - I gives 2 B N / ||N||.
    lora:  M = A A^T / a^2 - I gives 2 M A / (a^2 ||M||);  O = offdiag(B^T B) gives 2 B O / ||O||."""
    a, b = a.detach().double(), b.detach().double()
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    norm2 = LORA_ROW_NORM**2 if init == "lora" else 1.0
    m = a @ a.T / norm2 - eye
    gram = b.T @ b
    n = gram * (1 - eye) if init == "lora" else gram - eye
    m_norm, n_norm = float((m**2).sum().sqrt()), float((n**2).sum().sqrt())
    return m_norm + n_norm, 2 * m @ a / (norm2 * m_norm), 2 * b @ n / n_norm


@pytest.mark.parametrize("init", ["paper", "lora"])
def test_orthogonal_regulariser_on_a_trained_adapter_matches_the_hand_computation(init):
    """After training A is no longer orthonormal and B not zero: the penalty is far from 0, the training loss
    carries exactly weight x penalty, and the penalty's gradient reaches A and B of every matrix."""
    weight = 0.5
    model = elastic_bert(init=init, orth_reg_weight=weight, t_init=30, total_steps=40)  # no round: ranks stay
    train(model, adamw(model, lr=5e-2), batches(6))
    layers = list(model.layers.values())
    hand = [hand_penalty(layer.lora_A, layer.lora_B, init) for layer in layers]
    penalty = sum(value for value, _, _ in hand) / len(layers)
    assert penalty > 0.05
    assert model.orthogonal_regularization().item() == pytest.approx(penalty, rel=1e-4)

    batch = batches(1, seed=4)[0]
    model.train()
    params = [p for layer in layers for p in (layer.lora_A, layer.lora_B)]
    with_penalty = model(**batch).loss
    plain = model.base_model(**batch).loss
    assert with_penalty.item() == pytest.approx(plain.item() + weight * penalty, rel=1e-5)
    extra = [g1 - g0 for g1, g0 in zip(torch.autograd.grad(with_penalty, params), torch.autograd.grad(plain, params))]
    expected = [weight / len(layers) * g for _, grad_a, grad_b in hand for g in (grad_a, grad_b)]
    for got, want in zip(extra, expected, strict=True):
        assert want.abs().max() > 1e-4  # a gradient that is really there
        assert torch.allclose(got.double(), want, rtol=1e-3, atol=1e-6)
    model.eval()
    assert model(**batch).loss.item() == pytest.approx(plain.item(), rel=1e-6)  # evaluation adds nothing
