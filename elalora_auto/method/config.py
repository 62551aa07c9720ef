"""ElaLoraConfig: every knob of the method in one dataclass, with help text and one-line validation errors.

Validation runs twice: field-level checks in ``__post_init__`` (so a bad config fails where it is written) and
the checks that need the run length or the model (``validate(total_steps=..., num_matrices=...)``,
``match_targets(model)``) once those are known.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from elalora_auto.errors import ConfigError

NEW_IMPORTANCE_CHOICES = ("zero", "matrix_mean")
INIT_CHOICES = ("lora", "paper")
BUDGET_CHOICES = ("rank", "params")
# e_lr_scale when not given: the paper form needs a large one to learn in short runs, the LoRA-like form none.
DEFAULT_E_LR_SCALE = {"paper": 300.0, "lora": 1.0}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ElaLoraConfig:
    """Configuration of ElaLoRA (elastic-rank LoRA). Field help text doubles as CLI/search documentation."""

    target_modules: list[str] | str = field(
        default_factory=lambda: ["query", "key", "value"],
        metadata=_help(
            "Modules to adapt: names (a module matches when its full name equals the name or ends with "
            "'.' + name) or one regex string full-matched against full module names."
        ),
    )
    r_init: int = field(default=4, metadata=_help("Initial rank of every adapted matrix."))
    lora_alpha: float = field(
        default=8.0, metadata=_help("Scale numerator; Delta W = B diag(E) A * lora_alpha / r_init (initial rank).")
    )
    lora_dropout: float = field(default=0.0, metadata=_help("Dropout on the adapter input."))
    b: int = field(default=4, metadata=_help("Components pruned (and as many grown) per round, before decay."))
    k: int = field(default=2, metadata=_help("Most components one matrix may lose, or gain, in one round."))
    t_init: int = field(default=100, metadata=_help("Warm-up steps: importance accumulates, ranks fixed."))
    t_final: int = field(default=100, metadata=_help("Final stabilisation steps: no importance updates, no rounds."))
    delta_t: int = field(default=10, metadata=_help("Steps between two rounds in the adjustment window."))
    beta1: float = field(default=0.85, metadata=_help("EMA factor of the sensitivity |w * grad|, in [0, 1)."))
    beta2: float = field(default=0.85, metadata=_help("EMA factor of the uncertainty |I - Ibar|, in [0, 1)."))
    orth_reg_weight: float = field(
        default=0.1, metadata=_help("Weight of the orthogonality regulariser ||AA^T - I|| + ||B^TB - I||.")
    )
    orth_reg_every: int = field(
        default=1,
        metadata=_help(
            "Add the orthogonality regulariser on every n-th optimizer step only, weighted n times (lazy "
            "regularisation: the same mean weight per step at 1/n of its per-step cost; 1: every step, the paper)."
        ),
    )
    scheduler: bool = field(default=True, metadata=_help("Cubic decay of b to 0 across the adjustment window."))
    min_rank: int = field(
        default=1,
        metadata=_help(
            "No matrix is pruned below this rank (authors: 1). 0 lets a round empty a matrix: its rank goes where it "
            "scores higher and it never grows back (it has no component left to score), so a small final_budget "
            "is spent on the matrices that matter instead of one component everywhere."
        ),
    )
    max_rank: int | None = field(default=None, metadata=_help("No matrix grows above this rank (None: unbounded)."))
    total_steps: int | None = field(
        default=None, metadata=_help("Total optimizer steps; ElaLoraCallback fills it from the Trainer if unset.")
    )
    modules_to_save: list[str] = field(
        default_factory=list, metadata=_help("Modules trained in full and saved with the adapter, e.g. ['classifier'].")
    )
    init: Literal["lora", "paper"] | None = field(
        default=None,
        metadata=_help(
            "Initialisation; both start at Delta W = 0. 'lora': B = 0, E_eff = 1, A with orthogonal rows of "
            "LoRA's kaiming row norm, so B learns from step one at LoRA's speed for the same lr and alpha/r; grown "
            "components get B = 0, E_eff = 1; the regulariser becomes ||AA^T/a^2 - I|| + ||offdiag(B^TB)|| (0 at "
            "init). 'paper': E = 0, A, B ~ N(0, 0.02), grown components get unit A/B and E = 0; only E moves at "
            "first, so it learns slowly unless e_lr_scale is large. Unset: 'lora', or 'paper' when e_lr_scale is "
            "set (a knob of the paper form), so configs written for the paper form keep their meaning."
        ),
    )
    e_lr_scale: float | None = field(
        default=None,
        metadata=_help(
            "E_eff = e_lr_scale * E: under Adam an e_lr_scale-times larger learning rate for E only. Unset: 300 "
            "for init 'paper' (1-10 stay at chance on SST-2/MiniLM at lr 5e-4, 300 beats LoRA r=4, BENCHMARKS.md; "
            "1.0 = the paper) and 1 for init 'lora' (E starts at 1 / e_lr_scale, so E_eff starts at 1)."
        ),
    )
    budget: Literal["rank", "params"] = field(
        default="rank",
        metadata=_help(
            "What a round keeps constant. 'rank' (the paper): total rank; components compete by score. "
            "'params': total adapter parameters (within one component's cost); components compete by score per "
            "parameter (a component of an in x out matrix costs in + out + 1), so wide matrices are not free."
        ),
    )
    final_budget: float = field(
        default=1.0,
        metadata=_help(
            "Fraction of the initial budget (total rank, or adapter parameters under budget 'params') kept at the "
            "end of the adjustment window. 1.0 (the paper): constant. Below 1, rounds also prune the weakest "
            "components beyond their moves, on a cubic decay from 1 to final_budget (as PEFT AdaLoRA's target_r), "
            "so the adapter trains wide and ends small; never below min_rank per matrix."
        ),
    )
    grace_rounds: int = field(
        default=0,
        metadata=_help(
            "A component younger than this many rounds cannot be pruned (0 = the paper; 2 gave no gain on "
            "SST-2/MiniLM and less rank moved in a churn stress test, BENCHMARKS.md)."
        ),
    )
    new_importance: Literal["zero", "matrix_mean"] = field(
        default="matrix_mean",
        metadata=_help(
            "Initial importance statistics of a new component: 'zero' (the paper) or its matrix's mean (default: "
            "as good on SST-2/MiniLM, fewer cancelling moves in a churn stress test)."
        ),
    )
    seed: int = field(default=0, metadata=_help("Seed of the allocator's generator (new component directions)."))

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        self.modules_to_save = list(self.modules_to_save or [])
        if self.init is None:
            self.init = "lora" if self.e_lr_scale is None else "paper"
        if self.init not in INIT_CHOICES:
            raise ConfigError(f"init={self.init!r} must be one of {INIT_CHOICES}")
        if self.e_lr_scale is None:
            self.e_lr_scale = DEFAULT_E_LR_SCALE[self.init]
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self, total_steps: int | None = None, num_matrices: int | None = None) -> None:
        """Raise ConfigError (one line, naming the fix) on the first impossible setting.

        ``total_steps`` overrides ``self.total_steps``; ``num_matrices`` enables the pool-size check.
        """
        if not self.target_modules:
            raise ConfigError("target_modules is empty: name at least one module, e.g. ['query', 'value']")
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as exc:
                raise ConfigError(f"target_modules regex {self.target_modules!r} is invalid: {exc}") from None
        self._validate_ranks_and_budget()
        if self.b < 0:
            raise ConfigError(f"b={self.b} must be >= 0 (components moved per round)")
        if self.k < 1:
            raise ConfigError(f"k={self.k} must be >= 1 (components one matrix may lose or gain per round)")
        if self.delta_t < 1:
            raise ConfigError(f"delta_t={self.delta_t} must be >= 1")
        if self.t_init < 0 or self.t_final < 0:
            raise ConfigError(f"t_init={self.t_init} and t_final={self.t_final} must be >= 0")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}={value} must be in [0, 1)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.orth_reg_weight < 0:
            raise ConfigError(f"orth_reg_weight={self.orth_reg_weight} must be >= 0")
        if not isinstance(self.orth_reg_every, int) or self.orth_reg_every < 1:
            raise ConfigError(f"orth_reg_every={self.orth_reg_every!r} must be an integer >= 1 (1: every step)")
        if self.e_lr_scale is None or self.e_lr_scale <= 0:
            raise ConfigError(f"e_lr_scale={self.e_lr_scale} must be > 0 (1.0 reproduces the paper)")
        if self.grace_rounds < 0:
            raise ConfigError(f"grace_rounds={self.grace_rounds} must be >= 0")
        if self.new_importance not in NEW_IMPORTANCE_CHOICES:
            raise ConfigError(f"new_importance={self.new_importance!r} must be one of {NEW_IMPORTANCE_CHOICES}")
        steps = self.total_steps if total_steps is None else total_steps
        if steps is not None:
            if steps < 1:
                raise ConfigError(f"total_steps={steps} must be >= 1")
            if self.t_init + self.t_final >= steps:
                raise ConfigError(
                    f"empty adjustment window: t_init ({self.t_init}) + t_final ({self.t_final}) >= total_steps "
                    f"({steps}); lower t_init/t_final or train longer"
                )
        if num_matrices is not None:
            supply = num_matrices * min(self.k, self.r_init - self.min_rank)
            if self.b > supply:
                raise ConfigError(
                    f"b={self.b} exceeds what the pool can supply ({num_matrices} matrices x "
                    f"min(k={self.k}, r_init-min_rank={self.r_init - self.min_rank}) = {supply}); lower b"
                )

    def _validate_ranks_and_budget(self) -> None:
        """The rank limits and what a round keeps (part of ``validate``)."""
        if self.r_init < 1:
            raise ConfigError(f"r_init={self.r_init} must be >= 1")
        if self.min_rank < 0:
            raise ConfigError(f"min_rank={self.min_rank} must be >= 0 (0: a matrix may lose its last component)")
        if self.min_rank > self.r_init:
            raise ConfigError(f"min_rank={self.min_rank} > r_init={self.r_init}: lower min_rank or raise r_init")
        if self.max_rank is not None and self.max_rank < self.r_init:
            raise ConfigError(f"max_rank={self.max_rank} < r_init={self.r_init}: raise max_rank or lower r_init")
        if self.budget not in BUDGET_CHOICES:
            raise ConfigError(f"budget={self.budget!r} must be one of {BUDGET_CHOICES}")
        if not 0.0 < self.final_budget <= 1.0:
            raise ConfigError(f"final_budget={self.final_budget} must be in (0, 1] (1.0: constant budget, the paper)")

    # ------------------------------------------------------------------ target matching
    def matches(self, name: str) -> bool:
        """True when the full module name is selected by target_modules."""
        return target_matches(self.target_modules, name)

    def match_targets(self, model: nn.Module) -> list[str]:
        """Full names of the adaptable modules (Linear or GPT-2 Conv1D) that the targets select.

        Raises ConfigError naming close module names when a target matches nothing.
        """
        adaptable = [name for name, module in model.named_modules() if name and is_adaptable(module)]
        selected = [name for name in adaptable if self.matches(name)]
        targets = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        for target in targets:
            single = target if isinstance(self.target_modules, str) else [target]
            if not any(target_matches(single, name) for name in adaptable):
                candidates = sorted({n.rsplit(".", 1)[-1] for n in adaptable} | set(adaptable))
                close = difflib.get_close_matches(target, candidates, n=4)
                hint = f"; close: {', '.join(close)}" if close else ""
                raise ConfigError(f"target module {target!r} matches no Linear/Conv1D module{hint}")
        return selected

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field."""
        data = dataclasses.asdict(self)
        if isinstance(data["target_modules"], tuple):
            data["target_modules"] = list(data["target_modules"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ElaLoraConfig:
        """Inverse of to_dict; unknown keys are an error so typos do not pass silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown ElaLoraConfig field {unknown[0]!r}{hint}")
        return cls(**data)


def target_matches(targets: list[str] | str, name: str) -> bool:
    """PEFT's rule: a str is a regex full-matched on the name; a list matches by equality or '.'-suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def is_adaptable(module: nn.Module) -> bool:
    """True for the layer types the elastic layer can wrap: nn.Linear and transformers' GPT-2 Conv1D."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))
