"""Importance EMAs, the three-phase schedule and one prune-and-grow round of ElaLoRA.

Call ``RankAllocator.step(global_step, optimizer)`` once per optimizer step, AFTER ``optimizer.step()`` and
BEFORE ``zero_grad()``: the importance I = |w * grad| uses the gradients of the step just taken (accumulated
over all micro-batches), so gradient accumulation gives one importance update and at most one round per
optimizer step. Calling twice with the same step is a no-op.

Where this differs from the authors' code (github.com/HuandongChang/ElaLoRA), on purpose:
- One optimizer for the whole run. A round resizes the parameters in place and indexes (prune) or zero-pads
  (grow) every optimizer state tensor of the parameter's shape; ``step`` counters stay. The authors rebuild
  the optimizer, which loses all Adam state and leaves the LR scheduler driving the old optimizer.
- Per-matrix ``min_rank`` (authors: 1) and optional ``max_rank`` (authors: none). A matrix at ``min_rank`` still
  offers its weakest eligible component to the pool as a grow-only entry, so it can grow again (the authors'
  matrix at rank 1 offers nothing and is stuck there). A matrix gains at most ``k`` per round and never exceeds
  ``max_rank``. ``min_rank`` 0 (beyond the paper) lets a round empty a matrix; at rank 0 it offers nothing (no
  component to score), so it stays empty.
- Churn fixes: ``grace_rounds`` (components born fewer than that many rounds ago are not offered for pruning;
  initial components are always eligible) and ``new_importance`` ("zero" as the authors, or "matrix_mean":
  a new component's Ibar/U start at the mean of its matrix's components, so it is not the automatic next victim).
- ``e_lr_scale``: the layer uses E_eff = e_lr_scale * E (see layer.py). The importance |w * grad| of E is
  invariant to it (w scales by 1/s, grad by s).
- Pool exhaustion: if the pool holds fewer than 2b usable entries (or the grow side is blocked by k/max_rank),
  the round moves only as many components as it can both prune and grow (total rank stays constant). A move
  also needs the growing entry to score higher than the pruned one (pairing the i-th weakest with the i-th
  strongest); with a full pool (>= 2b entries, as in the paper) this always holds, with a small pool it stops
  rank flowing back to matrices that matter less. The round record says when fewer than b moved (``moved`` < ``b``,
  ``pool_short`` True; a round that can move nothing is still recorded with ``moved`` 0). It never raises.
- Rounds whose decayed budget b(t) is 0 change nothing and are not recorded.
- ``budget="params"`` (beyond the paper): pool entries compete by score per parameter (a component of an
  in x out matrix costs in + out + 1), and a round keeps the total adapter parameters, not the total rank,
  constant: 0 <= initial parameters - current parameters < the largest component cost. Up to b components
  are pruned; the freed parameters buy as many (possibly more, possibly fewer) components elsewhere, each
  denser than the pruned component that paid for it. k, min_rank and max_rank hold as in the rank budget.
- ``final_budget`` < 1 (beyond the paper, as PEFT AdaLoRA's target_r): the budget a round keeps decays cubically
  from the initial one to ``final_budget`` of it across the window, reached at the window's last round. A round
  first cuts its excess (the weakest prunable pool entries: by score under the rank budget, by score per parameter
  under the params budget), then moves up to b components among the rest as usual. The target never goes below
  ``min_rank`` per matrix, and a cut never takes the adapter's last component; what k keeps a round from cutting is
  cut by the next ones (``pool_short``).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch

from elalora_auto.errors import ConfigError
from elalora_auto.method.config import ElaLoraConfig
from elalora_auto.method.batched import MatrixBatch
from elalora_auto.method.layer import ElaLoraLayer

RoundRecord = dict[str, Any]
# One pool entry: (score, matrix name, component index, prunable).
PoolEntry = tuple[float, str, int, bool]


class RankAllocator:
    """Owns the schedule, the importance statistics update and the rounds; the layers own the tensors."""

    def __init__(self, layers: dict[str, ElaLoraLayer], config: ElaLoraConfig, generator: torch.Generator) -> None:
        self.layers = layers
        self.config = config
        self.generator = generator
        self.initial_ranks = {name: layer.rank for name, layer in layers.items()}
        self.round_index = 0
        self.last_step: int | None = None
        self.history: list[RoundRecord] = []
        self.batch = MatrixBatch(layers)  # the per-step work over all matrices at once

    # ------------------------------------------------------------------ schedule
    def total_steps(self) -> int:
        if self.config.total_steps is None:
            raise ConfigError("total_steps is unknown: set ElaLoraConfig.total_steps or train with ElaLoraCallback")
        return self.config.total_steps

    def phase(self, step: int) -> str:
        """'warmup' (t <= t_init), 'adjust' or 'final' (t >= T - t_final)."""
        cfg, total = self.config, self.total_steps()
        if step >= total - cfg.t_final:
            return "final"
        return "warmup" if step <= cfg.t_init else "adjust"

    def budget(self, step: int) -> int:
        """b(t) = round(b0 (1 - p^3)) with p the progress through the adjustment window (b0 without scheduler)."""
        cfg = self.config
        if not cfg.scheduler:
            return cfg.b
        window = self.total_steps() - cfg.t_final - cfg.t_init
        progress = min(max((step - cfg.t_init) / window, 0.0), 1.0)
        return round(cfg.b * (1.0 - progress**3))

    def step(self, global_step: int, optimizer: torch.optim.Optimizer | None) -> RoundRecord | None:
        """Importance update (not in the final phase) and, every delta_t steps of the window, one round."""
        if global_step == self.last_step:
            return None
        self.last_step = global_step
        phase = self.phase(global_step)
        if phase == "final":
            return None
        self.update_importance()
        if phase == "adjust" and (global_step - self.config.t_init) % self.config.delta_t == 0:
            return self.run_round(global_step, optimizer)
        return None

    # ------------------------------------------------------------------ importance
    def update_importance(self) -> None:
        """Ibar <- b1 Ibar + (1-b1) I;  U <- b2 U + (1-b2) |I - Ibar|, with I = |w * grad|, batched over matrices."""
        self.batch.update_importance(self.config.beta1, self.config.beta2)

    # ------------------------------------------------------------------ one round
    def _eligible(self, born: list[int], round_number: int) -> list[int]:
        """The components a matrix offers for pruning: initial ones, and those born at least grace_rounds ago."""
        grace = self.config.grace_rounds
        return [i for i, birth in enumerate(born) if birth == 0 or round_number - birth >= grace]

    def _pool(self, round_number: int) -> list[PoolEntry]:
        """Each matrix's weakest eligible components: up to min(k, rank - min_rank) prunable, else one grow-only."""
        cfg = self.config
        names = list(self.layers)
        scores = torch.cat([self.layers[n].component_scores() for n in names])
        born = torch.cat([self.layers[n].born_round for n in names]).to(scores.dtype)
        scores_list, born_list = torch.stack([scores, born]).tolist()  # the round's one read of the statistics
        pool: list[PoolEntry] = []
        offset = 0
        for name in names:
            layer = self.layers[name]
            matrix_scores = scores_list[offset : offset + layer.rank]
            births = [int(b) for b in born_list[offset : offset + layer.rank]]
            offset += layer.rank
            eligible = sorted(self._eligible(births, round_number), key=lambda i: matrix_scores[i])
            prunable = min(cfg.k, layer.rank - cfg.min_rank, len(eligible))
            offered = eligible[: max(prunable, 1)]  # a matrix at min_rank still competes to grow
            pool.extend((matrix_scores[i], name, i, j < prunable) for j, i in enumerate(offered))
        return pool

    def _may_grow(self, name: str, gained: Counter[str]) -> bool:
        cfg = self.config
        at_max = cfg.max_rank is not None and self.layers[name].rank + gained[name] >= cfg.max_rank
        return gained[name] < cfg.k and not at_max

    def _select_by_rank(self, pool: list[PoolEntry], b: int) -> tuple[list[PoolEntry], list[PoolEntry]]:
        """The b weakest prunable entries and as many growers; total rank constant."""
        prune = sorted((e for e in pool if e[3]), key=lambda e: e[0])[:b]
        chosen = {(e[1], e[2]) for e in prune}
        grow: list[PoolEntry] = []
        gained: Counter[str] = Counter()
        for entry in sorted((e for e in pool if (e[1], e[2]) not in chosen), key=lambda e: -e[0]):
            if len(grow) == len(prune):
                break
            if self._may_grow(entry[1], gained):
                grow.append(entry)
                gained[entry[1]] += 1
        # Pair the i-th weakest pruned with the i-th strongest grower; move only while the grower's score is
        # higher (otherwise rank would flow to a less important matrix, which only a too-small pool can force).
        moved = next((i for i, (p, g) in enumerate(zip(prune, grow)) if g[0] <= p[0]), min(len(prune), len(grow)))
        return prune[:moved], grow[:moved]

    def _select_by_params(self, pool: list[PoolEntry], b: int,
                          available: int) -> tuple[list[PoolEntry], list[PoolEntry]]:
        """Compare by score per parameter; keep 0 <= budget - adapter parameters < the largest component cost.

        ``available``: the parameters the round may spend (its budget minus the adapter after its cuts). Prunes the
        (up to) b entries of lowest density (score / cost) while some allowed grower is denser; after each prune,
        grows the densest allowed entries that beat it and fit in the parameters freed so far (skipping a wide one
        that does not fit for a narrower one that does). Prunes whose parameters were not spent are undone, last
        first, so the slack stays below one component's cost.
        """
        cost = self.component_costs()
        density = {(e[1], e[2]): e[0] / cost[e[1]] for e in pool}
        weakest = sorted((e for e in pool if e[3]), key=lambda e: density[e[1], e[2]])[:b]
        chosen = {(e[1], e[2]) for e in weakest}
        candidates = sorted((e for e in pool if (e[1], e[2]) not in chosen), key=lambda e: -density[e[1], e[2]])
        prune: list[PoolEntry] = []
        grow: list[PoolEntry] = []
        gained: Counter[str] = Counter()
        for entry in weakest:
            floor = density[entry[1], entry[2]]
            if not any(density[g[1], g[2]] > floor and self._may_grow(g[1], gained) for g in candidates):
                break
            prune.append(entry)
            available += cost[entry[1]]
            for grower in list(candidates):
                if density[grower[1], grower[2]] <= floor:
                    break
                if cost[grower[1]] <= available and self._may_grow(grower[1], gained):
                    grow.append(grower)
                    gained[grower[1]] += 1
                    available -= cost[grower[1]]
                    candidates.remove(grower)
        while prune and available >= cost[prune[-1][1]]:
            available -= cost[prune.pop()[1]]
        return prune, grow

    def budget_fraction(self, step: int) -> float:
        """The fraction of the initial budget a round at ``step`` keeps: 1, or the cubic decay to final_budget."""
        cfg = self.config
        if cfg.final_budget >= 1.0:
            return 1.0
        end = self.total_steps() - cfg.t_final
        progress = 1.0 if step + cfg.delta_t >= end else min(max((step - cfg.t_init) / (end - cfg.t_init), 0.0), 1.0)
        return cfg.final_budget + (1.0 - cfg.final_budget) * (1.0 - progress) ** 3

    def _over_budget(self, step: int) -> int:
        """The adapter minus this round's budget, in components (rank budget) or parameters (params); negative
        when there is room. The budget never goes below min_rank per matrix."""
        fraction, floor = self.budget_fraction(step), self.config.min_rank
        if self.config.budget == "params":
            cost = self.component_costs()
            target = max(fraction * self.param_budget(), sum(floor * c for c in cost.values()))
            return self.adapter_params() - math.ceil(target)
        target = max(fraction * sum(self.initial_ranks.values()), floor * len(self.layers))
        return sum(layer.rank for layer in self.layers.values()) - math.ceil(target)

    def _cut(self, pool: list[PoolEntry], excess: int) -> list[PoolEntry]:
        """The weakest prunable entries (by score, or score per parameter) whose removal covers the excess."""
        if excess <= 0:
            return []
        by_params = self.config.budget == "params"
        cost = self.component_costs()
        key = (lambda e: e[0] / cost[e[1]]) if by_params else (lambda e: e[0])
        cut: list[PoolEntry] = []
        freed, total = 0, sum(layer.rank for layer in self.layers.values())
        for entry in sorted((e for e in pool if e[3]), key=key):
            if freed >= excess or len(cut) == total - 1:  # the adapter keeps a component (min_rank 0, params)
                break
            cut.append(entry)
            freed += cost[entry[1]] if by_params else 1
        return cut

    @torch.no_grad()
    def run_round(self, step: int, optimizer: torch.optim.Optimizer | None) -> RoundRecord | None:
        """Pool the weakest components, cut any excess over a shrinking budget, then prune the weakest and grow
        the strongest (total rank or parameters constant within the round's budget)."""
        cfg = self.config
        b = self.budget(step)
        over = self._over_budget(step)
        excess = max(over, 0)
        if b <= 0 and excess <= 0:
            return None
        round_number = self.round_index + 1
        pool = self._pool(round_number)
        cut = self._cut(pool, excess)
        cut_keys = {(e[1], e[2]) for e in cut}
        rest = [e for e in pool if (e[1], e[2]) not in cut_keys]
        if cfg.budget == "params":
            cost = self.component_costs()
            prune, grow = self._select_by_params(rest, b, sum(cost[e[1]] for e in cut) - over)
        else:
            prune, grow = self._select_by_rank(rest, b)
        gained = Counter(entry[1] for entry in grow)
        self.round_index = round_number
        dropped: dict[str, list[int]] = {}
        for _, name, index, _ in cut + prune:
            dropped.setdefault(name, []).append(index)
        for name, indices in dropped.items():
            self.layers[name].prune(indices, optimizer)
        for name, count in gained.items():
            self.layers[name].grow(
                count, self.generator, optimizer, round_number, stats_from_mean=cfg.new_importance == "matrix_mean"
            )
        record: RoundRecord = {
            "round": round_number,
            "step": step,
            "b": b,
            "moved": len(prune),
            "cut": len(cut),
            "pool_size": len(pool),
            "pool_short": len(prune) < b or self._over_budget(step) > 0,
            "pruned": sorted([name, len(indices)] for name, indices in dropped.items()),
            "grown": sorted([name, count] for name, count in gained.items()),
            "total_rank": sum(layer.rank for layer in self.layers.values()),
            "adapter_params": self.adapter_params(),
        }
        self.history.append(record)
        return record

    def component_costs(self) -> dict[str, int]:
        """Trainable parameters of one component of each matrix: a row of A, a column of B and one E."""
        return {name: layer.in_features + layer.out_features + 1 for name, layer in self.layers.items()}

    def adapter_params(self) -> int:
        """Trainable adapter parameters now (sum over matrices of rank x component cost)."""
        cost = self.component_costs()
        return sum(layer.rank * cost[name] for name, layer in self.layers.items())

    def param_budget(self) -> int:
        """Adapter parameters at the initial ranks: what budget 'params' keeps (within one component's cost)."""
        cost = self.component_costs()
        return sum(rank * cost[name] for name, rank in self.initial_ranks.items())

    # ------------------------------------------------------------------ reporting and state
    def churn_stats(self) -> dict[str, int]:
        """Prune/grow events vs. the rank actually moved: high events with low net movement means churn."""
        prune_events = sum(count for record in self.history for _, count in record["pruned"])
        grow_events = sum(count for record in self.history for _, count in record["grown"])
        net = sum(abs(layer.rank - self.initial_ranks[name]) for name, layer in self.layers.items()) // 2
        return {
            "rounds": len(self.history),
            "prune_events": prune_events,
            "grow_events": grow_events,
            "net_rank_moved": net,
            "pool_short_rounds": sum(1 for record in self.history if record["pool_short"]),
        }

    def tensor_state(self) -> dict[str, torch.Tensor]:
        """Round index, last step (-1: none yet) and generator state as tensors, for the model's state_dict.

        The generator is a CPU generator (a torch.Generator cannot move with the module); its state is a CPU
        uint8 tensor. The round history is a log and stays out (save_checkpoint keeps it).
        """
        last = -1 if self.last_step is None else self.last_step
        return {
            "round_index": torch.tensor(self.round_index),
            "last_step": torch.tensor(last),
            "generator": self.generator.get_state(),
        }

    def load_tensor_state(self, state: dict[str, torch.Tensor]) -> None:
        self.round_index = int(state["round_index"])
        last = int(state["last_step"])
        self.last_step = None if last < 0 else last
        self.generator.set_state(state["generator"].cpu().to(torch.uint8))
