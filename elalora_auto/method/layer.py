"""The elastic layer: a frozen Linear/Conv1D plus a rank-r triplet (A, E, B) whose rank changes physically.

Delta W = B diag(E_eff) A * lora_alpha / r_init with E_eff = e_lr_scale * E. The scale uses the initial rank
forever, so pruning or growing a component changes only that component's contribution. Two initialisations,
both with Delta W = 0 at the start: "paper" (E = 0, A and B ~ N(0, 0.02): only E gets a gradient at first) and
"lora" (B = 0, E_eff = 1, A with orthogonal rows of LoRA's kaiming row norm: B learns from step one as in LoRA).

Resizing keeps the SAME nn.Parameter objects (the optimizer holds them) and swaps their storage with
``Tensor.set_`` under no_grad: unlike assigning ``.data`` (which leaves autograd's cached gradient
accumulator expecting the old shape: "invalid gradient ... got [64, 5] but expected [64, 4]"), ``set_`` goes
through autograd's metadata update. The optimizer's per-parameter state tensors are resized with the parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PARTS = ("A", "E", "B")
# Rank dimension of each part: A is (r, in), E is (r, 1), B is (out, r).
RANK_DIM = {"A": 0, "E": 0, "B": 1}
STATS = ("ipt_bar", "ipt_unc")
# Row norm of A in the LoRA-like init: the expected row norm of PEFT LoRA's kaiming_uniform(a=sqrt(5)) A,
# whose entries have variance 1 / (3 in_features), i.e. squared row norm 1/3 whatever the width.
LORA_ROW_NORM = 3.0**-0.5


class Generation:
    """A change counter the layers of one model share (method/batched.py's cached tensor lists read it): bumped
    whenever a layer's parameter changes shape or one of its tensors is replaced (rounds, loading another rank,
    ``.to()``, assigning a buffer)."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


def torch_optimizer(optimizer: object | None) -> torch.optim.Optimizer | None:
    """The torch optimizer behind accelerate's AcceleratedOptimizer (its ``.optimizer``), or the optimizer itself."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer  # type: ignore[union-attr]
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch optimizer or a wrapper with .optimizer, got {type(optimizer).__name__}")
    return optimizer


class ElaLoraLayer(nn.Module):
    """A frozen base layer plus an elastic-rank adapter; base output + dropout(x) A^T diag(E_eff) B^T * scale.

    Everything the layer owns is a parameter or a persistent buffer, so ``.to()``, ``.half()``, ``.cuda()`` and
    ``state_dict()`` cover it: the importance statistics ``ipt_bar_{A,E,B}`` / ``ipt_unc_{A,E,B}`` (same shape
    as their parameter; views into the model's flat EMA buffers once built, method/batched.py) and ``born_round``
    (round in which each component was born, 0 = initial). A state dict of another rank loads:
    ``_load_from_state_dict`` first resizes the parameters and buffers to its shapes.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        r_init: int,
        lora_alpha: float,
        lora_dropout: float,
        e_lr_scale: float,
        generator: torch.Generator,
        init: str = "paper",
    ) -> None:
        super().__init__()
        self.generation = Generation()  # the model hands every layer one shared counter
        self.base_layer = base_layer
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)  # GPT-2 Conv1D stores weight as (in, out)
        weight = base_layer.weight
        self.in_features, self.out_features = (
            weight.shape if self.fan_in_fan_out else (weight.shape[1], weight.shape[0])
        )
        self.scaling = lora_alpha / r_init
        self.e_lr_scale = e_lr_scale
        self.init = init
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        factory = {"device": weight.device, "dtype": torch.float32}
        if init == "lora":
            a = _orthogonal_extension(torch.zeros(self.in_features, 0), r_init, generator).T * LORA_ROW_NORM
            e = torch.full((r_init, 1), 1.0 / e_lr_scale)
            b = torch.zeros(self.out_features, r_init)
        else:
            a = torch.randn(r_init, self.in_features, generator=generator) * 0.02
            e = torch.zeros(r_init, 1)
            b = torch.randn(self.out_features, r_init, generator=generator) * 0.02
        self.lora_A = nn.Parameter(a.to(**factory).contiguous())
        self.lora_E = nn.Parameter(e.to(**factory))
        self.lora_B = nn.Parameter(b.to(**factory))
        for part in PARTS:
            for kind in STATS:
                self.register_buffer(f"{kind}_{part}", torch.zeros_like(self.param(part)))
        self.register_buffer("born_round", torch.zeros(r_init, dtype=torch.long, device=weight.device))

    def __setattr__(self, name: str, value: Any) -> None:
        """Assigning a parameter or buffer (prune, grow, reshape do) moves the generation."""
        super().__setattr__(name, value)
        if name in self._buffers or name in self._parameters:
            self.generation.bump()

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ElaLoraLayer:
        """``.to()``, ``.cuda()``, ``.half()`` replace the buffers: the generation moves."""
        result = super()._apply(fn, *args, **kwargs)
        self.generation.bump()
        return result

    @property
    def rank(self) -> int:
        return self.lora_E.shape[0]

    def param(self, part: str) -> nn.Parameter:
        return getattr(self, f"lora_{part}")

    @property
    def ipt_bar(self) -> dict[str, Tensor]:
        """Smoothed sensitivity Ibar per part (the buffers themselves: in-place edits stick)."""
        return {part: getattr(self, f"ipt_bar_{part}") for part in PARTS}

    @property
    def ipt_unc(self) -> dict[str, Tensor]:
        """Uncertainty U per part (the buffers themselves)."""
        return {part: getattr(self, f"ipt_unc_{part}") for part in PARTS}

    def hold_stat_in(self, name: str, view: Tensor) -> None:
        """Keep statistic ``name`` (e.g. ``ipt_bar_A``) in ``view``, a tensor of its shape and values in storage
        shared with the other layers' statistics (method/batched.py's flat EMA buffers): the layer itself does
        not change, so unlike assigning a buffer this leaves the generation where it is."""
        self._buffers[name] = view

    @property
    def born(self) -> list[int]:
        return self.born_round.tolist()

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        dx = self.dropout(x)
        if not torch.is_autocast_enabled(dx.device.type):
            dx = dx.to(self.lora_A.dtype)
        hidden = F.linear(dx, self.lora_A)  # autocast (if on) computes in its low-precision dtype
        e_eff = self.lora_E.view(-1) * (self.e_lr_scale * self.scaling)
        delta = F.linear(hidden * e_eff.to(hidden.dtype), self.lora_B)
        return result + delta.to(result.dtype)

    # ------------------------------------------------------------------ scores and regulariser
    def component_scores(self) -> Tensor:
        """S_i = s(E_i) + mean_j s(A_ij) + mean_j s(B_ji) with s = Ibar * U."""
        bar, unc = self.ipt_bar, self.ipt_unc
        s = {part: bar[part] * unc[part] for part in PARTS}
        return s["E"].view(-1) + s["A"].mean(dim=1) + s["B"].mean(dim=0)

    def orth_penalty(self) -> Tensor:
        """Paper init: ||A A^T - I||_F + ||B^T B - I||_F.

        LoRA init: ||A A^T / a^2 - I||_F + ||offdiag(B^T B)||_F with a the initial row norm of A. Both terms are
        0 at the initialisation (B = 0), so the regulariser keeps components distinct without pulling B (which
        carries the magnitude of Delta W in this form) away from zero.
        """
        eye = torch.eye(self.rank, device=self.lora_A.device, dtype=self.lora_A.dtype)
        a, b = self.lora_A, self.lora_B
        if self.init == "lora":
            gram = b.T @ b
            return torch.linalg.matrix_norm(a @ a.T / LORA_ROW_NORM**2 - eye) + torch.linalg.matrix_norm(
                gram - torch.diag_embed(torch.diagonal(gram))
            )
        return torch.linalg.matrix_norm(a @ a.T - eye) + torch.linalg.matrix_norm(b.T @ b - eye)

    # ------------------------------------------------------------------ physical resizing
    def prune(self, drop: list[int], optimizer: torch.optim.Optimizer | None) -> None:
        """Remove components ``drop`` (rows of A, entries of E, columns of B), their stats and optimizer state."""
        drop_set = set(drop)
        keep = torch.tensor(
            [i for i in range(self.rank) if i not in drop_set], dtype=torch.long, device=self.lora_A.device
        )
        for part in PARTS:
            dim = RANK_DIM[part]
            self._resize(part, lambda t, d=dim: t.index_select(d, keep), optimizer)
            for kind in STATS:
                name = f"{kind}_{part}"
                setattr(self, name, getattr(self, name).index_select(dim, keep))
        self.born_round = self.born_round.index_select(0, keep)

    def grow(
        self,
        count: int,
        generator: torch.Generator,
        optimizer: torch.optim.Optimizer | None,
        born_round: int,
        stats_from_mean: bool,
    ) -> None:
        """Append ``count`` components that leave the output unchanged, with directions orthogonal to the rest.

        Paper init: unit rows of A and columns of B, E = 0. LoRA init: rows of A of the initial norm, B = 0 and
        E_eff = 1, so B gets a gradient at once. ``generator`` is a CPU generator (it cannot move with the
        module); the directions are drawn on the CPU and then moved to the parameters' device and dtype.
        """
        device = self.lora_A.device
        new_rows = _orthogonal_extension(self.lora_A.detach().T, count, generator).T
        if self.init == "lora":
            new_values = {
                "A": new_rows * LORA_ROW_NORM,
                "E": torch.full((count, 1), 1.0 / self.e_lr_scale),
                "B": torch.zeros(self.out_features, count),
            }
        else:
            new_values = {
                "A": new_rows,
                "E": torch.zeros(count, 1),
                "B": _orthogonal_extension(self.lora_B.detach(), count, generator),
            }
        for part in PARTS:
            dim, new = RANK_DIM[part], new_values[part].to(device)
            self._resize(
                part,
                lambda t, n=new, d=dim: torch.cat([t, n.to(t.dtype)], d),
                optimizer,
                state_transform=lambda t, n=new, d=dim: torch.cat([t, torch.zeros_like(n, dtype=t.dtype)], d),
            )
            for kind in STATS:
                name = f"{kind}_{part}"
                old = getattr(self, name)
                if stats_from_mean and old.shape[dim] > 0:
                    fill = old.mean(dim=dim, keepdim=True).expand(new.shape)
                else:
                    fill = old.new_zeros(new.shape)
                setattr(self, name, torch.cat([old, fill], dim))
        born = torch.full((count,), born_round, dtype=torch.long, device=self.born_round.device)
        self.born_round = torch.cat([self.born_round, born])

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: object) -> None:
        """Resize to the saved rank first, so a state dict saved after rounds loads into a model built at r_init."""
        saved = state_dict.get(prefix + "lora_E")
        if saved is not None and saved.shape[0] != self.rank:
            self.reshape(saved.shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def reshape(self, rank: int) -> None:
        """Give every parameter and buffer ``rank`` components of uninitialised (parameters) or zero (buffers) value.

        Only for loading saved values right after; the Parameter objects stay the same (optimizers keep them).
        """
        for part in PARTS:
            param = self.param(part)
            shape = list(param.shape)
            shape[RANK_DIM[part]] = rank
            with torch.no_grad():
                param.set_(param.new_empty(shape))
            param.grad = None
            self.generation.bump()
            for kind in STATS:
                setattr(self, f"{kind}_{part}", getattr(self, f"{kind}_{part}").new_zeros(shape))
        self.born_round = self.born_round.new_zeros(rank)

    def _resize(
        self,
        part: str,
        transform: Callable[[Tensor], Tensor],
        optimizer: torch.optim.Optimizer | None,
        state_transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Resize a parameter in place and every optimizer state tensor of its shape (``step`` counters stay).

        ``state_transform`` (default: ``transform``) lets growth zero-pad the moments while the parameter gets
        its new directions.
        """
        param = self.param(part)
        state = optimizer.state.get(param) if optimizer is not None else None
        if state:
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    state[key] = (state_transform or transform)(value).contiguous()
        with torch.no_grad():
            param.set_(transform(param.detach()).contiguous())
        param.grad = None
        self.generation.bump()


def _orthogonal_extension(basis: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` random unit columns, each orthogonal to the columns of ``basis`` and to the previous new ones.

    When the columns already span the space, the vector is left random (orthogonality is impossible).
    """
    dim = basis.shape[0]
    columns = [basis.float().cpu()]
    out = []
    for _ in range(count):
        v = torch.randn(dim, generator=generator)
        q, _ = torch.linalg.qr(torch.cat(columns, dim=1))
        residual = v - q @ (q.T @ v)
        if residual.norm() > 1e-6 * v.norm():
            v = residual
        v = v / v.norm()
        out.append(v)
        columns.append(v[:, None])
    return torch.stack(out, dim=1)
