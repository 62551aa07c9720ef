"""Every option of `search` as data: SearchSettings (flags and study YAML), pruning and heartbeat settings.

The settings are stored in the study's user attrs at creation, so a `worker` needs only the study name and its
storage (`settings_for_worker`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from elalora_auto.errors import ConfigError, UserError, check_fields, reject_unknown
from elalora_auto.search.space import read_yaml, resolve_resource

OBJECTIVES = ("pareto", "metric")
DEVICES = ("auto", "cpu", "cuda")
SAMPLERS = ("tpe", "gp")  # Optuna's TPESampler (the default) or GPSampler (search/worker.py `make_sampler`)
# Options that must be > 0 when given (seed may be 0).
_POSITIVE = ("trials", "max_train_samples", "max_eval_samples", "max_steps", "epochs", "batch_size", "max_length",
             "eval_every", "max_params", "timeout", "startup_trials")
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180


PRUNING_RULES = ("median", "halving", "none")
RUNG_TIES = ("keep", "hypervolume", "adaptive")


@dataclass
class PruningSettings:
    """When a trial stops early (search/pruning.py). `rule`: `median` (below its peers' median after the warm-up
    evaluations), `halving` (successive-halving rungs at `min_steps * reduction_factor**k` optimizer steps: only
    the best 1/reduction_factor of the trials at a rung go on; short cheap runs first, full runs for the
    promising ones) or `none` (every trial runs to the end; the baseline rule is off too). The baseline rule
    (`baseline_patience`) applies under `median` and `halving`."""

    rule: str = "median"
    n_startup_trials: int = 3
    n_warmup_evals: int = 1
    baseline_patience: int = 2
    min_steps: int | None = None  # halving: the first rung; default: the evaluation interval
    reduction_factor: int = 3
    # Pareto halving: when a rung's quota ends inside a front, `keep` lets the whole front go on; `hypervolume` lets
    # only the quota go on, by hypervolume contribution (fewer steps, but it lost 8.6% of a front: BENCHMARKS.md);
    # `adaptive` (the default: the one rule that met both multi-fidelity targets on both seeds) keeps while the rung
    # holds fewer than pruning.SPLIT_FROM x reduction_factor trials, then splits
    rung_ties: str = "adaptive"

    def validate(self) -> None:
        check_fields(self, "pruning.", positive=("n_startup_trials", "baseline_patience", "min_steps"),
                     non_negative=("n_warmup_evals",))
        if self.rule not in PRUNING_RULES:
            raise ConfigError(f"pruning.rule {self.rule!r}: choose one of {', '.join(PRUNING_RULES)}")
        if self.reduction_factor < 2:
            raise ConfigError(f"pruning.reduction_factor: must be 2 or more, got {self.reduction_factor}")
        if self.rung_ties not in RUNG_TIES:
            raise ConfigError(f"pruning.rung_ties {self.rung_ties!r}: choose one of {', '.join(RUNG_TIES)}")

    def rungs(self, eval_every: int, total_steps: int) -> list[int]:
        """The halving rule's rung steps before the end of the run (empty for the other rules).

        Rungs sit on evaluations (the rule compares trials by the metric measured there), so `min_steps` must be a
        multiple of the evaluation interval, and the first rung must come before the end.
        """
        if self.rule != "halving":
            return []
        first = self.min_steps or eval_every
        if first % eval_every:
            raise ConfigError(f"pruning.min_steps {first} is not a multiple of eval_every {eval_every}: rungs sit on "
                              f"evaluations; use {max(eval_every, first // eval_every * eval_every)}")
        steps, step = [], first
        while step < total_steps:
            steps.append(step)
            step *= self.reduction_factor
        if not steps:
            raise ConfigError(f"pruning.min_steps {first} is not before the end of the {total_steps}-step run: "
                              "no rung to halve at; lower min_steps or eval_every")
        return steps


@dataclass
class HeartbeatSettings:
    """RDBStorage heartbeat: each running trial records one every `interval_s`; a trial silent for `grace_s`
    is failed and re-queued by the next worker that starts a trial. Unused by the journal file storage."""

    interval_s: int = HEARTBEAT_INTERVAL_S
    grace_s: int = GRACE_PERIOD_S

    def validate(self) -> None:
        for name in ("interval_s", "grace_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"heartbeat.{name}: expected a positive whole number of seconds, got {value!r}")
        if self.grace_s <= self.interval_s:
            raise ConfigError(f"heartbeat.grace_s ({self.grace_s}) must be larger than heartbeat.interval_s "
                              f"({self.interval_s}), or live trials are failed between two heartbeats")


@dataclass
class SearchSettings:
    """Every option of `search`; a study YAML (`--config`) holds any of them, flags override the file.

    Stored in the study's user attrs at creation, so `worker` needs only the study name and storage.
    """

    task: str | None = None
    model: str = "minilm"
    method: str = "elalora"
    space: str | None = None  # a built-in name or a .yaml path; default: the method's name
    trials: int = 20
    data_dir: str | None = None
    custom: dict[str, Any] | None = None  # tasks.custom_task keyword arguments (`name:`, if given, is `task`)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    batch_size: int = 16
    max_length: int = 128
    eval_every: int | None = None  # default: a quarter of the run (three intermediate evaluations)
    objective: str = "pareto"
    sampler: str = "tpe"
    # finished trials (trial 0, then random draws) before the sampler's model proposes: TPE counts complete and
    # pruned ones, GP complete ones only (its model ignores pruned trials); 10 is Optuna's default for both
    startup_trials: int = 10
    max_params: int | None = None
    timeout: float | None = None
    seed: int = 42
    # the sampler's own seed, default `seed`: another value draws another search over the same training runs'
    # randomness (data order, initialisation), which is how a search's spread over its draws is measured
    sampler_seed: int | None = None
    device: str = "auto"
    study: str | None = None
    storage: str | None = None
    workdir: str = "elalora_runs"
    tracking_uri: str | None = None
    no_tracking: bool = False
    trial0: dict[str, Any] = field(default_factory=dict)  # overrides of the space defaults for trial 0
    pruning: PruningSettings = field(default_factory=PruningSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)

    @classmethod
    def from_sources(cls, config: str | None, overrides: Mapping[str, Any]) -> "SearchSettings":
        """The study file (a path or a built-in name like `demo`), then the non-None flags on top."""
        data: dict[str, Any] = {}
        if config == "demo" and not overrides.get("task"):
            raise UserError("the built-in study 'demo' runs on the demo's own tiny model and synthetic data: run "
                            "`elalora-auto demo` (or give --task and --model)")
        if config is not None:
            path = resolve_resource(config, "studies")
            loaded = read_yaml(path)
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path.name}: expected a mapping of search options")
            data = loaded
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSettings":
        from elalora_auto.tasks import custom_block

        reject_unknown(data, (f.name for f in dataclasses.fields(cls)), "unknown search option")
        data = dict(data)
        if data.get("custom"):
            data["task"], data["custom"] = custom_block(data.get("task"), data["custom"])
        data["pruning"] = _section(data.get("pruning"), PruningSettings, "pruning")
        data["pruning"].validate()
        data["heartbeat"] = _section(data.get("heartbeat"), HeartbeatSettings, "heartbeat")
        data["heartbeat"].validate()
        settings = cls(**data)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Types and ranges of every option, then the rules between options (one line each, naming the fix)."""
        check_fields(self, positive=_POSITIVE, non_negative=("seed", "sampler_seed"))
        if not self.task:
            raise UserError("no task: pass --task NAME (e.g. sst2) or set task: in the --config file")
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective {self.objective!r}: choose pareto or metric")
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.storage is not None:
            check_storage_url(self.storage)
        if Path(self.workdir).exists() and not Path(self.workdir).is_dir():
            raise UserError(f"--workdir {self.workdir} is a file; pass a folder (it is created when missing)")
        if self.max_steps is not None and self.epochs is not None:
            raise UserError("give --max-steps or --epochs, not both")
        if self.max_params is not None and self.objective != "metric":
            raise UserError("--max-params caps a single-objective search: add --objective metric "
                            "(the Pareto front already shows every size)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def study_name(self) -> str:
        model = "minilm" if self.model == "minilm" else Path(self.model.rstrip("/")).name
        return self.study or f"{self.task}-{model}-{self.method}"


def check_storage_url(uri: str, flag: str = "--storage",
                      plain: str = "a journal file path such as runs/optuna-journal.log") -> str:
    """A storage is a journal file path or a full SQLAlchemy URL; `sqlite:x.db` (or `sqlite://x.db`) would
    silently become a journal file of that name (or an in-memory database), so it is refused here.

    `flag` and `plain` (what a path without a scheme means) let `--tracking-uri` share the database URL rules.
    """
    if "://" not in uri:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
            scheme, _, rest = uri.partition(":")
            raise UserError(f"{flag} {uri!r} is not a URL: write {scheme}:///{rest.lstrip('/')} (a database "
                            f"URL needs '://'), or {plain}")
        return uri
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception:  # noqa: BLE001 - sqlalchemy's ArgumentError and ValueError alike mean "malformed"
        raise UserError(f"{flag} {uri.partition('://')[0]}://...: malformed URL; e.g. sqlite:///study.db or "
                        "postgresql://user:password@host/db") from None
    if url.get_backend_name() == "sqlite" and not url.database:
        raise UserError(f"{flag} {uri!r} names no database file (an in-memory store would be lost): write "
                        f"sqlite:///{url.host or 'study.db'}")
    return uri


def _section(value: Any, kind: type, name: str) -> Any:
    """A nested settings section from a mapping (or already built); one-line errors for anything else."""
    if isinstance(value, kind):
        return value
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping with the keys {', '.join(f.name for f in dataclasses.fields(kind))}")
    value = value or {}
    reject_unknown(value, (f.name for f in dataclasses.fields(kind)), f"{name}: unknown key")
    return kind(**value)


def settings_for_worker(study: Any, overrides: Mapping[str, Any]) -> SearchSettings:
    """The settings stored at creation, with this worker's local choices (device, workdir, tracking) on top."""
    stored = dict(study.user_attrs.get("settings") or {})
    if not stored:
        raise UserError(f"study {study.study_name!r} has no stored settings; it was not created by elalora-auto search")
    stored.pop("primary_metric", None)
    stored.pop("baseline", None)
    stored.update({k: v for k, v in overrides.items() if v is not None})
    return SearchSettings.from_dict(stored)

