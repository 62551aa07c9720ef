"""The trial's contract as data: TrialSpec (the re-runnable YAML config), its training and data settings,
`key=value` overrides, the run length, and the TrialResult a trial returns."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml

from elalora_auto.errors import UserError, reject_unknown
from elalora_auto.records import Ending, RankPoint, RoundRecord


@dataclass
class TrainingSettings:
    learning_rate: float = 5e-4
    max_steps: int | None = 200
    epochs: float | None = None  # used only when max_steps is None
    batch_size: int = 16
    eval_batch_size: int = 64
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # clip the gradients' global norm to this before each step; 0: no clipping
    eval_every: int = 0  # 0: evaluate only at the end
    log_every: int = 10
    max_length: int = 128
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool | Literal["auto"] = "auto"  # auto: bf16 autocast on CUDA when the device supports it
    # true: the data order and every DataLoader's base seed come from the global torch generator, as in
    # transformers.Trainer (bench/loop_replay.py replays a Trainer run with it); false: the loop's own generator per
    # seed and epoch, so an evaluation leaves training's random stream (dropout) alone
    trainer_rng: bool = False


@dataclass
class DataSettings:
    data_dir: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    validation_fraction: float = 0.0
    seed: int = 0  # the sample is fixed across training seeds, so trials compare on the same data
    cache_dir: str | None = None  # tokenisation cache (the search passes WORKDIR/cache)


@dataclass
class TrialSpec:
    """Everything one trial needs; its YAML (`to_yaml`) is what `train --config` reads and `export` writes."""

    task: str
    model: str = "microsoft/deberta-v3-base"
    method: str = "elalora"
    params: dict[str, Any] = field(default_factory=dict)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    data: DataSettings = field(default_factory=DataSettings)
    custom: dict[str, Any] | None = None  # keyword arguments of tasks.custom_task for a user's own files

    def __post_init__(self) -> None:
        from elalora_auto.adapters import method_names

        if self.method not in method_names():
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(method_names())}")
        for name, example in (("task", "sst2"), ("model", "minilm")):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise UserError(f"{name}: expected a name (e.g. {name}: {example}), got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        if not isinstance(data, dict):
            raise UserError(f"a trial config must be a mapping, got {type(data).__name__}")
        from elalora_auto.tasks import custom_block

        data = dict(data)
        _reject_unknown(data, {f.name for f in dataclasses.fields(cls)}, "")
        if data.get("custom"):
            data["task"], data["custom"] = custom_block(data.get("task"), data["custom"])
        if data.get("task") is None:
            raise UserError("the trial config has no 'task'; add e.g. task: sst2")
        groups = {"training": TrainingSettings, "data": DataSettings}
        for key, kind in groups.items():
            section = data.get(key) or {}
            if not isinstance(section, dict):
                raise UserError(f"'{key}' must be a mapping in the trial config")
            _reject_unknown(section, {f.name for f in dataclasses.fields(kind)}, f"{key}.")
            data[key] = kind(**{k: _yaml_number(v) for k, v in section.items()})
        if not isinstance(data.get("params") or {}, dict):
            raise UserError(f"'params' must be a mapping of method parameters (e.g. r_init: 8), got {data['params']!r}")
        data["params"] = {k: _yaml_number(v) for k, v in (data.get("params") or {}).items()}
        return cls(**data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> TrialSpec:
        """Read a YAML file (a path) or YAML text."""
        is_file = isinstance(source, Path) or ("\n" not in source and Path(source).is_file())
        text = Path(source).read_text() if is_file else str(source)
        try:
            return cls.from_dict(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            raise UserError(f"malformed YAML in {source}{f' at line {where.line + 1}' if where else ''}") from None

    def apply_overrides(self, overrides: Iterable[str]) -> TrialSpec:
        """A copy with "key=value" items applied (values parsed as YAML): task=.., params.r_init=8,
        training.learning_rate=1e-3, or a bare training/data field name such as max_steps=50."""
        data = self.to_dict()
        valid = _valid_keys()
        for item in overrides:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise UserError(f"override {item!r} is not key=value (e.g. training.learning_rate=1e-3)")
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError:
                raise UserError(f"override {item!r}: value is not valid YAML") from None
            path = _resolve_key(key, valid)
            node = data
            for part in path[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[path[-1]] = value
        return TrialSpec.from_dict(data)


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads '1e-3' as a string; every such value here is meant as a float."""
    return float(value) if isinstance(value, str) and _SCIENTIFIC.match(value) else value


def _valid_keys() -> dict[str, list[str]]:
    top = [f.name for f in dataclasses.fields(TrialSpec)]
    return {
        "": top,
        "training": [f.name for f in dataclasses.fields(TrainingSettings)],
        "data": [f.name for f in dataclasses.fields(DataSettings)],
    }


def _resolve_key(key: str, valid: dict[str, list[str]]) -> list[str]:
    """Map an override key to its path in the spec dict; UserError naming the valid keys."""
    parts = key.split(".")
    if parts[0] in ("params", "custom") and len(parts) >= 2:
        return parts
    if len(parts) == 1 and parts[0] in valid[""] and parts[0] not in ("training", "data"):
        return parts
    if len(parts) == 2 and parts[0] in ("training", "data") and parts[1] in valid[parts[0]]:
        return parts
    if len(parts) == 1:
        for group in ("training", "data"):
            if parts[0] in valid[group]:
                return [group, parts[0]]
    names = (
        [k for k in valid[""] if k not in ("training", "data", "params", "custom")]
        + ["params.<name>", "custom.<name>"]
        + [f"training.{k}" for k in valid["training"]]
        + [f"data.{k}" for k in valid["data"]]
    )
    raise UserError(f"unknown setting {key!r}; valid: {', '.join(names)}")


def _reject_unknown(data: dict[str, Any], known: set[str], prefix: str) -> None:
    reject_unknown((prefix + k for k in data), (prefix + k for k in known), "unknown trial-config setting", UserError)


@dataclass
class SearchStage:
    """Stage 1 of a two-stage trial (ElaLoRA's `retrain: lora`): the ElaLoRA run that found the rank map the trial's
    LoRA retrained with. Its metric is recorded beside the trial's objective, never as it; its steps are counted
    in the trial's `steps_done`. Steps here are stage 1's own (1 to `steps`)."""

    method: str
    steps: int  # planned: round(search_fraction x the trial's steps)
    steps_done: int
    primary: float | None  # its last evaluation (stage 1's end): None when it stopped before one
    metrics: dict[str, float]
    trainable_params: int
    rank_map: dict[str, int]  # the rank map it ended with (stage 2's rank_pattern, zeros left out)
    eval_history: list[dict[str, Any]]
    train_loss_history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchStage:
        return cls(**data)


@dataclass
class TrialResult:
    """What a trial ended with, whatever the ending: `state` COMPLETE, PRUNED or FAIL and, unless complete, the
    `reason`. A pruned or failed trial keeps what it had reached (ranks, size, evaluations, timings); fields it
    never reached are None (a trial that failed before its adapter was built has no size).

    The one outcome that travels: the trial returns it, `trial_end` and `trial_finished` carry it, result.json and
    the tracker's spool hold its `to_dict`, and `from_dict` reads every version of those files back."""

    metrics: dict[str, float]
    primary: float | None  # the last evaluation's primary metric; None before the first evaluation
    primary_metric: str | None
    trainable_params: int | None
    rank_map: dict[str, int]
    rank_history: list[RoundRecord]  # the rounds that moved a rank
    eval_history: list[dict[str, Any]]  # [{step, metrics}]
    train_loss_history: list[dict[str, float]]  # [{step, loss}]
    wall_time_s: float
    setup_time_s: float  # data, tokenizer, model copy and adapter: what base-model reuse shortens
    train_time_s: float  # optimizer steps only
    eval_time_s: float
    examples_per_s: float
    steps: int  # planned optimizer steps (0 when the trial failed before sizing its run)
    steps_done: int = 0  # optimizer steps taken: fewer than `steps` when pruned or failed
    intermediate_values: dict[int, float] = field(default_factory=dict)  # step -> primary, what the pruner saw
    # the ranks at the start (step 0) and after each round that moved one
    rank_evolution: list[RankPoint] = field(default_factory=list)
    device: str | None = None  # "cpu" or the CUDA device name (torch.cuda.get_device_name)
    # torch.cuda.max_memory_allocated during the trial, in MiB; None on CPU, where the only cheap figure (the
    # process's max RSS) also counts every earlier trial of the same worker process
    peak_memory_mb: float | None = None
    state: Ending = Ending.COMPLETE
    reason: str | None = None
    # a two-stage trial's stage 1 (then the fields above are stage 2's: the retrained LoRA), None for one stage
    search_stage: SearchStage | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.state, Ending):  # e.g. Optuna's TrialState: it would never equal an Ending
            raise TypeError(f"TrialResult.state is a records.Ending ({', '.join(e.name for e in Ending)}), "
                            f"not {self.state!r}")

    @classmethod
    def unreached(cls, state: Ending, reason: str | None, wall_time_s: float = 0.0) -> TrialResult:
        """The result of a trial that ended before its adapter existed (failed in setup, or pruned by a space
        constraint before it started): no size, ranks, metrics or steps."""
        return cls(metrics={}, primary=None, primary_metric=None, trainable_params=None, rank_map={},
                   rank_history=[], eval_history=[], train_loss_history=[], wall_time_s=wall_time_s,
                   setup_time_s=wall_time_s, train_time_s=0.0, eval_time_s=0.0, examples_per_s=0.0, steps=0,
                   state=state, reason=reason)

    def rank_points(self) -> list[tuple[int, dict[str, int]]]:
        """[(step, rank_map)] for a rank-evolution plot, extended to the last step taken."""
        points = [(p.step, dict(p.rank_map)) for p in self.rank_evolution]
        if points and self.rank_map and points[-1][0] < self.steps_done:
            points.append((self.steps_done, dict(self.rank_map)))
        return points

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (result.json, events on the tracker's spool): the state by name, records as dicts."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**data, "state": self.state.name, "rank_history": [r.to_dict() for r in self.rank_history],
                "rank_evolution": [p.to_dict() for p in self.rank_evolution],
                "search_stage": self.search_stage and self.search_stage.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        """A result as `to_dict` wrote it, by this version or an older one: the one place that knows old files
        (`status` before `state`, no `eval_time_s`; fields added later have defaults; JSON's string step keys)."""
        data = dict(data)
        if "status" in data:
            data.setdefault("state", data.pop("status"))
        data.setdefault("eval_time_s", 0.0)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**{**values, "state": Ending.named(values["state"]),
                      "rank_history": [RoundRecord.from_dict(r) for r in values.get("rank_history") or []],
                      "rank_evolution": [RankPoint.from_dict(p) for p in values.get("rank_evolution") or []],
                      "search_stage": values.get("search_stage") and SearchStage.from_dict(values["search_stage"]),
                      "intermediate_values": {int(k): v for k, v in (values.get("intermediate_values") or {}).items()}})


def total_steps(training: TrainingSettings, n_train: int) -> int:
    """Optimizer steps of a run: `max_steps`, else `epochs` over `n_train` rows in batches of
    batch_size x grad_accum (the one definition; the search sizes its trials with it too)."""
    if training.max_steps is None and training.epochs is None:
        raise UserError("set training.max_steps or training.epochs")
    if training.max_steps is not None:
        return int(training.max_steps)
    steps_per_epoch = max(1, math.ceil(n_train / (training.batch_size * training.grad_accum)))
    return max(1, round(training.epochs * steps_per_epoch))
