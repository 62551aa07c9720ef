"""The elastic layer: a frozen Linear/Conv1D plus a rank-r triplet (A, E, B) whose rank changes physically.

Delta W = B diag(E_eff) A * lora_alpha / r_init with E_eff = e_lr_scale * E. The scale uses the initial rank
forever, so pruning or growing a component changes only that component's contribution.

Resizing keeps the SAME nn.Parameter objects (the optimizer holds them) and swaps their storage with
``Tensor.set_`` under no_grad: unlike assigning ``.data`` (which leaves autograd's cached gradient
accumulator expecting the old shape: "invalid gradient ... got [64, 5] but expected [64, 4]"), ``set_`` goes
through autograd's metadata update. The optimizer's per-parameter state tensors are resized with the parameter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PARTS = ("A", "E", "B")
# Rank dimension of each part: A is (r, in), E is (r, 1), B is (out, r).
RANK_DIM = {"A": 0, "E": 0, "B": 1}


def torch_optimizer(optimizer: object | None) -> torch.optim.Optimizer | None:
    """The torch optimizer behind accelerate's AcceleratedOptimizer (its ``.optimizer``), or the optimizer itself."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer  # type: ignore[union-attr]
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch optimizer or a wrapper with .optimizer, got {type(optimizer).__name__}")
    return optimizer


class ElaLoraLayer(nn.Module):
    """A frozen base layer plus an elastic-rank adapter; base output + dropout(x) A^T diag(E_eff) B^T * scale."""

    def __init__(
        self,
        base_layer: nn.Module,
        r_init: int,
        lora_alpha: float,
        lora_dropout: float,
        e_lr_scale: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)  # GPT-2 Conv1D stores weight as (in, out)
        weight = base_layer.weight
        self.in_features, self.out_features = (
            weight.shape if self.fan_in_fan_out else (weight.shape[1], weight.shape[0])
        )
        self.scaling = lora_alpha / r_init
        self.e_lr_scale = e_lr_scale
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        factory = {"device": weight.device, "dtype": torch.float32}

        def normal(*shape: int) -> Tensor:
            return (torch.randn(*shape, generator=generator) * 0.02).to(**factory)

        self.lora_A = nn.Parameter(normal(r_init, self.in_features))
        self.lora_E = nn.Parameter(torch.zeros(r_init, 1, **factory))
        self.lora_B = nn.Parameter(normal(self.out_features, r_init))
        # Importance statistics per element (Ibar, U) and the round in which each component was born.
        self.ipt_bar = {part: torch.zeros_like(self.param(part)) for part in PARTS}
        self.ipt_unc = {part: torch.zeros_like(self.param(part)) for part in PARTS}
        self.born: list[int] = [0] * r_init

    @property
    def rank(self) -> int:
        return self.lora_E.shape[0]

    def param(self, part: str) -> nn.Parameter:
        return getattr(self, f"lora_{part}")

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
        s = {part: self.ipt_bar[part] * self.ipt_unc[part] for part in PARTS}
        return s["E"].view(-1) + s["A"].mean(dim=1) + s["B"].mean(dim=0)

    def orth_penalty(self) -> Tensor:
        """||A A^T - I||_F + ||B^T B - I||_F."""
        eye = torch.eye(self.rank, device=self.lora_A.device, dtype=self.lora_A.dtype)
        a, b = self.lora_A, self.lora_B
        return torch.linalg.matrix_norm(a @ a.T - eye) + torch.linalg.matrix_norm(b.T @ b - eye)

    # ------------------------------------------------------------------ physical resizing
    def prune(self, drop: list[int], optimizer: torch.optim.Optimizer | None) -> None:
        """Remove components ``drop`` (rows of A, entries of E, columns of B), their stats and optimizer state."""
        drop_set = set(drop)
        keep_list = [i for i in range(self.rank) if i not in drop_set]
        keep = torch.tensor(keep_list, dtype=torch.long, device=self.lora_A.device)
        for part in PARTS:
            dim = RANK_DIM[part]
            self._resize(part, lambda t, d=dim: t.index_select(d, keep), optimizer)
            self.ipt_bar[part] = self.ipt_bar[part].index_select(dim, keep)
            self.ipt_unc[part] = self.ipt_unc[part].index_select(dim, keep)
        self.born = [self.born[i] for i in keep_list]

    def grow(
        self,
        count: int,
        generator: torch.Generator,
        optimizer: torch.optim.Optimizer | None,
        born_round: int,
        stats_from_mean: bool,
    ) -> None:
        """Append ``count`` components with E = 0 (output unchanged) and unit directions orthogonal to the rest."""
        device = self.lora_A.device
        new_rows = _orthogonal_extension(self.lora_A.detach().T, count, generator).T.to(device)
        new_cols = _orthogonal_extension(self.lora_B.detach(), count, generator).to(device)
        new_values = {"A": new_rows, "E": torch.zeros(count, 1, device=device), "B": new_cols}
        for part in PARTS:
            dim, new = RANK_DIM[part], new_values[part]
            self._resize(
                part,
                lambda t, n=new, d=dim: torch.cat([t, n.to(t.dtype)], d),
                optimizer,
                state_transform=lambda t, n=new, d=dim: torch.cat([t, torch.zeros_like(n, dtype=t.dtype)], d),
            )
            for stats in (self.ipt_bar, self.ipt_unc):
                old = stats[part]
                if stats_from_mean and old.shape[dim] > 0:
                    fill = old.mean(dim=dim, keepdim=True).expand_as(new)
                else:
                    fill = torch.zeros_like(new)
                stats[part] = torch.cat([old, fill], dim)
        self.born.extend([born_round] * count)

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
