"""The per-step work over all adapted matrices at once: the importance EMAs and the orthogonality penalty.

A step's cost beyond LoRA is a few small ops per matrix; on a GPU their launches, not their arithmetic, are the
bill. Here the EMAs are multi-tensor updates (``torch._foreach_*``) and the penalty is one ``bmm`` per factor
shape (A or B, width, rank: a handful of groups), over tensor lists and constants built once and kept until a
layer's tensors change (a round, loading another rank, ``.to()``): the layers of one model share a
``Generation`` counter that every such change bumps, so a step does no Python work per matrix beyond reading
its gradient.

The importance statistics of all matrices live in two flat buffers (Ibar, U), each layer's ``ipt_bar_*`` /
``ipt_unc_*`` buffer a view into them, so the EMA is a handful of ops over four flat tensors (the parameters and
gradients gathered by one ``cat`` each) instead of eight multi-tensor ops over 3 x matrices tensors. Every op is
elementwise, so each entry gets the same arithmetic as in the per-tensor form, bit for bit
(tests/test_method_batched.py trains both and compares).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from elalora_auto.method.layer import LORA_ROW_NORM, PARTS, STATS, ElaLoraLayer, Generation


class _OrthDiff(torch.autograd.Function):
    """Per matrix Gram / divisor * mask - target, the Gram of the rows of x (A factors: x x^T) or of its columns
    (B factors: x^T x), in one autograd node. Its backward is the one of ElaLoraLayer.orth_penalty's ops
    (grad * mask / divisor, then mm's G x + G^T x or x G^T + x G with G^T a transposed view), so each matrix's
    gradient is that one bit for bit where the batched BLAS call rounds like the single one (bmm's own backward
    multiplies in another layout). Under autocast the Gram is computed in the autocast dtype, as mm does."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: OrthGroup) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        ctx.save_for_backward(x)
        ctx.group = group
        diff = torch.bmm(x, x.transpose(1, 2)) if group.rows else torch.bmm(x.transpose(1, 2), x)
        if group.divisor is not None:
            diff = diff / group.divisor
        if group.mask is not None:
            diff = diff * group.mask
        if group.neg_target is not None:
            diff = diff + group.neg_target
        return diff

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,), group = ctx.saved_tensors, ctx.group
        if group.mask is not None:
            grad = grad * group.mask
        if group.divisor is not None:
            grad = grad / group.divisor
        grad = grad.to(x.dtype)
        if group.rows:
            return torch.bmm(grad, x) + torch.bmm(grad.transpose(1, 2), x), None
        return torch.bmm(x, grad.transpose(1, 2)) + torch.bmm(x, grad), None


@dataclass
class OrthGroup:
    """The A factors or the B factors of one shape, as one batch.

    Per step: one stack, one autograd node for Gram / divisor * mask - target (``_OrthDiff``), one norm per
    matrix. Grouping by exact shape (no padding) keeps each Gram matrix the BLAS problem of
    ``ElaLoraLayer.orth_penalty``, so on the CPU the values and gradients match it bit for bit where the batched
    BLAS call rounds like the single one (at equal even ranks, as at the start; not below width x rank^2 = 400,
    where bmm takes a naive kernel, nor for B at odd ranks). That matters for the LoRA init: at its start and for
    every grown component A A^T / a^2 - I is rounding noise, which Adam turns into the first step of those rows
    of A; elsewhere the difference stays at float rounding.
    """

    params: list[nn.Parameter]
    rows: bool  # A factors (rank, width): Gram of the rows; B factors (width, rank): Gram of the columns
    divisor: Tensor | None  # (m, 1, 1): a^2 for LoRA-init A; None: 1 everywhere
    mask: Tensor | None  # (m, r, r): the off-diagonal mask for LoRA-init B; None: ones
    neg_target: Tensor | None  # (m, r, r): minus the identity, 0 for LoRA-init B; None: 0 everywhere

    def norms(self) -> Tensor:
        """The Frobenius norms of this group's terms, one per matrix."""
        return torch.linalg.matrix_norm(_OrthDiff.apply(torch.stack(self.params), self))


def _orth_group(layers: list[ElaLoraLayer], part: str) -> OrthGroup:
    """The ``part`` terms of layers whose ``part`` factors share one shape (see ElaLoraLayer.orth_penalty)."""
    ref = layers[0].param(part)
    params = [layer.param(part) for layer in layers]
    factory = {"device": ref.device, "dtype": ref.dtype}
    count, rank = len(layers), layers[0].rank
    flags = [layer.init == "lora" for layer in layers]
    lora = torch.tensor(flags, device=ref.device).view(-1, 1, 1)
    eye = torch.eye(rank, **factory).expand(count, rank, rank)
    if part == "A":
        divisor = torch.where(lora, LORA_ROW_NORM**2, 1.0).to(ref.dtype) if any(flags) else None
        return OrthGroup(params, True, divisor=divisor, mask=None, neg_target=-eye)
    mask = torch.where(lora, 1.0 - eye, 1.0) if any(flags) else None
    neg_target = torch.where(lora, 0.0, -eye) if not all(flags) else None
    return OrthGroup(params, False, divisor=None, mask=mask, neg_target=neg_target)


class MatrixBatch:
    """The adapted matrices' tensors as the lists the batched per-step ops take, rebuilt when the shared
    ``Generation`` moved (never inside a step unless a layer changed)."""

    def __init__(self, layers: dict[str, ElaLoraLayer]) -> None:
        self.layers = list(layers.values())
        self.generation = Generation()
        for layer in self.layers:
            layer.generation = self.generation
        self._built_at: int | None = None
        self.params: list[nn.Parameter] = []
        self.bars: list[Tensor] = []
        self.uncs: list[Tensor] = []
        self.groups: list[OrthGroup] = []
        self.flat: tuple[Tensor, Tensor] | None = None  # (Ibar, U) of every term in one buffer each, or None

    def _fresh(self) -> MatrixBatch:
        if self._built_at != self.generation.value:
            terms = [(layer, part) for layer in self.layers for part in PARTS]
            self.params = [layer.param(part) for layer, part in terms]
            by_shape: dict[tuple[str, tuple[int, ...]], list[ElaLoraLayer]] = {}
            for layer in self.layers:
                for part in ("A", "B"):
                    by_shape.setdefault((part, tuple(layer.param(part).shape)), []).append(layer)
            with torch.no_grad():
                self.groups = [_orth_group(layers, part) for (part, _), layers in by_shape.items()]
                self.flat = self._flatten_stats(terms)
            self.bars = [layer.ipt_bar[part] for layer, part in terms]
            self.uncs = [layer.ipt_unc[part] for layer, part in terms]
            self._built_at = self.generation.value
        return self

    def _flatten_stats(self, terms: list[tuple[ElaLoraLayer, str]]) -> tuple[Tensor, Tensor] | None:
        """Copy each kind of statistic of every term into one flat buffer and make the layers hold views of it;
        None (statistics left as they are) when the parameters and statistics do not share one device and dtype."""
        stats = [[getattr(layer, f"{kind}_{part}") for layer, part in terms] for kind in STATS]
        if len({(t.device, t.dtype) for t in [*self.params, *stats[0], *stats[1]]}) != 1:
            return None
        flat = []
        for kind, tensors in zip(STATS, stats):
            buffer = torch.cat([t.reshape(-1) for t in tensors])
            for (layer, part), tensor, view in zip(terms, tensors, buffer.split([t.numel() for t in tensors])):
                layer.hold_stat_in(f"{kind}_{part}", view.view(tensor.shape))
            flat.append(buffer)
        return flat[0], flat[1]

    @torch.no_grad()
    def update_importance(self, beta1: float, beta2: float) -> None:
        """Ibar <- b1 Ibar + (1-b1) I;  U <- b2 U + (1-b2) |I - Ibar|, with I = |w * grad|, over every matrix
        whose parameters have a gradient: over the flat buffers when all have one (the usual step), else over
        the tensors of those that have."""
        fresh = self._fresh()
        params, bars, uncs = fresh.params, fresh.bars, fresh.uncs
        grads = [param.grad for param in params]
        if any(grad is None for grad in grads):
            kept = [i for i, grad in enumerate(grads) if grad is not None]
            params, bars, uncs, grads = ([items[i] for i in kept] for items in (params, bars, uncs, grads))
        elif fresh.flat is not None and all(grad.dtype == params[0].dtype for grad in grads):
            flat_params, flat_grads = (torch.cat([t.reshape(-1) for t in tensors]) for tensors in (params, grads))
            params, grads, bars, uncs = [flat_params], [flat_grads], [fresh.flat[0]], [fresh.flat[1]]
        if not params:
            return
        ipt = torch._foreach_mul(params, grads)
        torch._foreach_abs_(ipt)
        torch._foreach_mul_(bars, beta1)
        torch._foreach_add_(bars, ipt, alpha=1.0 - beta1)
        torch._foreach_sub_(ipt, bars)
        torch._foreach_abs_(ipt)
        torch._foreach_mul_(uncs, beta2)
        torch._foreach_add_(uncs, ipt, alpha=1.0 - beta2)

    def orthogonal_regularization(self) -> Tensor:
        """Mean over matrices of their orth_penalty(), as one bmm per factor shape."""
        norms = [group.norms() for group in self._fresh().groups]
        return (torch.cat(norms) if len(norms) > 1 else norms[0]).sum() / len(self.layers)
