"""The per-step work over all adapted matrices at once: the importance EMAs and the orthogonality penalty.

A step's cost beyond LoRA is a few small ops per matrix; on a GPU their launches, not their arithmetic, are the
bill. Here the penalty is one ``bmm`` per factor shape (A or B, width, rank: a handful of groups) in a single
autograd node (``_Penalty``), over tensor lists and constants built once and kept until a
layer's tensors change (a round, loading another rank, ``.to()``): the layers of one model share a
``Generation`` counter that every such change bumps, so a step does no Python work per matrix beyond reading
its gradient. A rebuild keeps every group whose parameters, shape, device and dtype did not change (a round
resizes a few matrices of many), so the step after a round pays for the changed groups only.

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
from torch.autograd.function import once_differentiable

from elalora_auto.method.layer import LORA_ROW_NORM, PARTS, STATS, ElaLoraLayer, Generation


class _Penalty(torch.autograd.Function):
    """The mean over matrices of ||Gram / divisor * mask - target||_F, every group (OrthGroup) in one autograd
    node: its forward runs each group's stack, Gram and matrix_norm without recording a graph, then cat, sum and
    the division by the matrix count; its backward applies the formulas autograd would to that composition
    (division, sum and cat: the gradient divided and spread; linalg_vector_norm of order 2: grad * (x / norm),
    0 where the norm is 0; the Gram difference's: * mask / divisor, then OrthGroup.gram_grad; stack: unbind),
    each in the dtype the forward computed in. The elementwise steps run once over all groups' differences
    (``FlatTerms``), which changes no bit (each element gets the same ops; a factor of 1 where a group has no
    mask or divisor is exact), so every gradient is the composed graph's bit for bit
    (tests/test_method_batched.py) with a fraction of its per-op autograd and dispatch work."""

    @staticmethod
    def forward(ctx: Any, batch: MatrixBatch, *params: Tensor) -> Tensor:
        xs, diffs, norms = [], [], []
        for group in batch.groups:
            x, diff = group.gram_diff(torch.stack(group.params))
            xs.append(x)
            diffs.append(diff.reshape(-1))
            norms.append(torch.linalg.matrix_norm(diff))
        flat = torch.cat(norms)
        ctx.groups, ctx.terms, ctx.count, ctx.diff_dtype = batch.groups, batch.terms, len(batch.layers), diffs[0].dtype
        ctx.save_for_backward(torch.cat(diffs), flat, *xs)
        return flat.sum() / ctx.count

    @staticmethod
    @once_differentiable  # the forward records no graph: a second derivative would be silently wrong
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        diff, norms, *xs = ctx.saved_tensors
        terms = ctx.terms
        scale = norms.repeat_interleave(terms.sizes, output_size=diff.numel())
        unit = (diff.to(norms.dtype) / scale).masked_fill_(scale == 0, 0)
        grad_diff = ((grad / ctx.count).to(norms.dtype) * unit).to(ctx.diff_dtype)
        if terms.mask is not None:
            grad_diff = grad_diff * terms.mask
        if terms.divisor is not None:
            grad_diff = grad_diff / terms.divisor
        grads: list[Tensor] = []
        for group, x, piece in zip(ctx.groups, xs, grad_diff.split(terms.group_sizes)):
            rank = x.shape[1] if group.rows else x.shape[2]
            grads.extend(group.gram_grad(piece.view(-1, rank, rank), x).unbind(0))
        return (None, *grads)


@dataclass
class FlatTerms:
    """What _Penalty's backward needs to run its elementwise steps once over all groups' differences."""

    sizes: Tensor  # elements of each matrix's difference (rank^2), in group order
    group_sizes: list[int]  # elements of each group's differences
    mask: Tensor | None  # each group's mask, 1 where it has none; None: no group has one
    divisor: Tensor | None  # each group's divisor per element, 1 where it has none; None: no group has one


@dataclass
class OrthGroup:
    """The A factors or the B factors of one shape, as one batch.

    Per step: one stack, Gram / divisor * mask - target (``gram_diff``; the backward's last step ``gram_grad``),
    one norm per matrix. Grouping by exact shape (no padding) keeps each Gram matrix the BLAS problem of
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
    key: GroupKey  # what the tensors above depend on (_group_key): equal keys, equal groups

    def gram_diff(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x, per matrix Gram / divisor * mask - target of x): the Gram of the rows of x (A factors: x x^T) or of
        its columns (B factors: x^T x). Under autocast x is first cast to the autocast dtype, as mm does."""
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        diff = torch.bmm(x, x.transpose(1, 2)) if self.rows else torch.bmm(x.transpose(1, 2), x)
        if self.divisor is not None:
            diff = diff / self.divisor
        if self.mask is not None:
            diff = diff * self.mask
        if self.neg_target is not None:
            diff = diff + self.neg_target
        return x, diff

    def gram_grad(self, grad: Tensor, x: Tensor) -> Tensor:
        """The gradient for x of its Gram, given the Gram's gradient (after * mask / divisor): mm's backward as in
        ElaLoraLayer.orth_penalty (G x + G^T x, or x G^T + x G, with G^T a transposed view), so each matrix's
        gradient is that one bit for bit where the batched BLAS call rounds like the single one (bmm's own
        backward multiplies in another layout)."""
        grad = grad.to(x.dtype)
        if self.rows:
            return torch.bmm(grad, x) + torch.bmm(grad.transpose(1, 2), x)
        return torch.bmm(x, grad.transpose(1, 2)) + torch.bmm(x, grad)


GroupKey = tuple[str, tuple[int, ...], torch.device, torch.dtype, tuple[int, ...]]


def _group_key(part: str, shape: tuple[int, ...], layers: list[ElaLoraLayer]) -> GroupKey:
    """The part, shape, device and dtype of a group's factors and which parameters (their ids: a resize keeps the
    Parameter object, an assigned one is another; a group holds its parameters, so their ids stay theirs)."""
    ref = layers[0].param(part)
    return part, shape, ref.device, ref.dtype, tuple(id(layer.param(part)) for layer in layers)


def _orth_group(layers: list[ElaLoraLayer], part: str, key: GroupKey) -> OrthGroup:
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
        return OrthGroup(params, True, divisor=divisor, mask=None, neg_target=-eye, key=key)
    mask = torch.where(lora, 1.0 - eye, 1.0) if any(flags) else None
    neg_target = torch.where(lora, 0.0, -eye) if not all(flags) else None
    return OrthGroup(params, False, divisor=None, mask=mask, neg_target=neg_target, key=key)


def _flat_terms(groups: list[OrthGroup]) -> FlatTerms:
    """The groups' sizes, masks and divisors laid out as the flat concatenation of their differences."""
    ref = groups[0].params[0]
    shapes = [(len(group.params), group.params[0].shape[0 if group.rows else 1]) for group in groups]
    ones = torch.ones(1, 1, 1, device=ref.device, dtype=ref.dtype)

    def flat(tensors: list[Tensor | None]) -> Tensor | None:
        if all(tensor is None for tensor in tensors):
            return None
        return torch.cat([(ones if tensor is None else tensor).expand(count, rank, rank).reshape(-1)
                          for tensor, (count, rank) in zip(tensors, shapes)])

    return FlatTerms(
        sizes=torch.tensor([rank * rank for count, rank in shapes for _ in range(count)], device=ref.device),
        group_sizes=[count * rank * rank for count, rank in shapes],
        mask=flat([group.mask for group in groups]),
        divisor=flat([group.divisor for group in groups]),
    )


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
        self.terms: FlatTerms | None = None  # the groups laid out flat for the penalty's backward
        self.flat: tuple[Tensor, Tensor] | None = None  # (Ibar, U) of every term in one buffer each, or None

    def _fresh(self) -> MatrixBatch:
        if self._built_at != self.generation.value:
            terms = [(layer, part) for layer in self.layers for part in PARTS]
            self.params = [layer.param(part) for layer, part in terms]
            by_shape: dict[tuple[str, tuple[int, ...]], list[ElaLoraLayer]] = {}
            for layer in (layer for layer in self.layers if layer.rank > 0):  # rank 0 (min_rank 0): penalty 0
                for part in ("A", "B"):
                    by_shape.setdefault((part, tuple(layer.param(part).shape)), []).append(layer)
            # a group whose parameters and shape did not change keeps its tensors (a round changes a few matrices)
            kept = {group.key: group for group in self.groups}
            with torch.no_grad():
                groups = []
                for (part, shape), layers in by_shape.items():
                    key = _group_key(part, shape, layers)
                    groups.append(kept[key] if key in kept else _orth_group(layers, part, key))
                self.groups = groups
                self.terms = _flat_terms(self.groups)
                self.bars, self.uncs, self.flat = self._flatten_stats(terms)
            self._built_at = self.generation.value
        return self

    def _flatten_stats(self, terms: list[tuple[ElaLoraLayer, str]]) -> tuple[list[Tensor], list[Tensor],
                                                                            tuple[Tensor, Tensor] | None]:
        """Copy each kind of statistic of every term into one flat buffer and make the layers hold views of it.
        Returns each kind's per-term tensors (the views) and the buffers; the statistics as they are and None when
        the parameters and statistics do not share one device and dtype."""
        stats = [[getattr(layer, f"{kind}_{part}") for layer, part in terms] for kind in STATS]
        if len({(t.device, t.dtype) for t in [*self.params, *stats[0], *stats[1]]}) != 1:
            return stats[0], stats[1], None
        flat, views = [], []
        for kind, tensors in zip(STATS, stats):
            buffer = torch.cat([t.reshape(-1) for t in tensors])
            kind_views = [view.view(tensor.shape)
                          for tensor, view in zip(tensors, buffer.split([t.numel() for t in tensors]))]
            for (layer, part), view in zip(terms, kind_views):
                layer.hold_stat_in(f"{kind}_{part}", view)
            flat.append(buffer)
            views.append(kind_views)
        return views[0], views[1], (flat[0], flat[1])

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
        """Mean over matrices of their orth_penalty(), as one bmm per factor shape, in one autograd node."""
        fresh = self._fresh()
        return _Penalty.apply(fresh, *(param for group in fresh.groups for param in group.params))
