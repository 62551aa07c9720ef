"""One fine-tuning run: TrialSpec (the re-runnable YAML config) -> run_trial -> TrialResult, emitting events.

A plain PyTorch loop rather than transformers.Trainer: the adapter hook must run between optimizer.step() and
zero_grad() (AdaLoRA/ElaLoRA importance needs the gradients), the loss of every step must be checked, and a
Trainer costs setup time per trial that a search pays hundreds of times (measured numbers: BENCHMARKS.md).

A step reads nothing back from the device (no .item(), float(), bool()): the step losses stay on the device and
are read, and checked for NaN/Inf, once per logging or evaluation point, so a GPU runs ahead of Python between
them (tests/test_trial.py counts the host reads).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
from torch import nn

from elalora_auto.errors import UserError
from elalora_auto.events import Event, Listener, emit, with_context
from elalora_auto.loading import load_base_model, load_tokenizer, reset_fresh_head, resolve_model
from elalora_auto.records import Ending, RankPoint, RoundRecord
from elalora_auto.spec import DataSettings, TrainingSettings, TrialResult, TrialSpec, total_steps
from elalora_auto.trial_output import device_name, ending_of, finish_trial, peak_memory_mb, write_trial_output
from elalora_auto.two_stage import SEARCH, after_search, planned_steps, rank_map_of, retrain_spec, search_record

if TYPE_CHECKING:
    from elalora_auto.adapters import RetrainPlan

__all__ = ["DataSettings", "NonFiniteLossError", "TrainingSettings", "TrialResult", "TrialSpec", "run_trial",
           "setup_trial", "train_loop", "evaluate_step", "write_trial_output", "total_steps", "load_base_model",
           "load_tokenizer", "resolve_model"]

Reporter = Callable[[int, float, int], None]  # (step, primary metric, current trainable parameters)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf (diverged); the search records the trial as failed."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"non-finite training loss {loss} at optimizer step {step} (learning rate too high?)")
        self.step = step


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
def _batches(dataset: Any, batch_size: int, collate: Any, seed: int, epoch: int, trainer_rng: bool = False,
             pin: bool = False) -> Iterable[dict]:
    """Length-grouped shuffled batches with dynamic padding (less padding, same randomness per seed); with
    `trainer_rng` the shuffle draws from the global generator, as the Trainer's LengthGroupedSampler does; pinned
    for a CUDA device, so their copy to it does not wait for the GPU."""
    from torch.utils.data import DataLoader
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = list(dataset["length"]) if "length" in dataset.column_names else None
    columns = [c for c in dataset.column_names if c != "length"]
    generator = None if trainer_rng else torch.Generator().manual_seed(seed * 1000 + epoch)
    sampler = LengthGroupedSampler(batch_size, dataset=dataset if lengths is None else None, lengths=lengths,
                                   generator=generator)
    return DataLoader(dataset.select_columns(columns), batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      pin_memory=pin)


def _first_epoch(dataset: Any, batch_size: int, collate: Any, seed: int) -> Iterator[dict]:
    """The first epoch's batches for an adapter's `prepare`, built only when it draws one, so a method that needs
    no data leaves the trial's random stream as it was."""
    yield from _batches(dataset, batch_size, collate, seed, 0)


def _infinite(dataset: Any, batch_size: int, collate: Any, seed: int, trainer_rng: bool = False,
              pin: bool = False) -> Iterable[dict]:
    epoch = 0
    while True:
        yield from _batches(dataset, batch_size, collate, seed, epoch, trainer_rng, pin)
        epoch += 1


def _evaluate(
    model: nn.Module, task: Any, evals: dict[str, Any], collate: Any, batch_size: int, device: torch.device,
    dtype: torch.dtype | None, trainer_rng: bool = False,
) -> dict[str, float]:
    """Metrics on every eval split (the task family's predictions and metrics), prefixed '<split>_' when there
    are several."""
    from torch.utils.data import DataLoader

    from elalora_auto.tasks import family_of

    family = family_of(task)
    model.eval()
    metrics: dict[str, float] = {}
    for split, dataset in evals.items():
        columns = [c for c in dataset.column_names if c != "length"]
        preds, labels = [], []
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            # Its own generator: a DataLoader iterator draws its base seed from the global RNG otherwise, which
            # shifted every later dropout mask, so the evaluation interval changed the training run (the Trainer
            # does draw it: `trainer_rng` follows it there).
            for batch in DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collate,
                                    generator=None if trainer_rng else torch.Generator()):
                predicted, truth = family.predict(model, {k: v.to(device) for k, v in batch.items()}, task)
                preds.append(predicted.cpu())
                labels.append(truth.cpu())
        split_metrics = family.metrics(task, torch.cat(preds).numpy(), torch.cat(labels).numpy())
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


AdapterFactory = Callable[..., Any]  # build_adapter's signature: (model, method, params, total_steps, heads)


@dataclass
class TrialSetup:
    """Everything the loop needs, built by `setup_trial` before the first step."""

    task: Any  # tasks.TaskSpec
    data: Any  # tasks.TaskData, tokenised
    collate: Any
    adapter: Any  # adapters.Adapter
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    dtype: torch.dtype | None
    total_steps: int
    primary_key: str
    retrain: RetrainPlan | None = None  # set: this is a two-stage trial's stage 1 (ElaLoRA finding the rank map)


@dataclass
class LoopOutcome:
    """What the loop measured so far: the last metrics, the histories and timings for the TrialResult.

    The caller owns it, so what a pruned or failed loop had reached is still there for the trial's ending.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    loss_history: list[dict[str, float]] = field(default_factory=list)
    examples: int = 0
    eval_time_s: float = 0.0
    steps_done: int = 0
    rank_maps: list[RankPoint] = field(default_factory=list)  # the start and each round
    started: float = field(default_factory=time.perf_counter)
    setup_time_s: float = 0.0
    search_rounds: list[RoundRecord] = field(default_factory=list)  # a two-stage trial's stage-1 rounds


def _trial_data(spec: TrialSpec) -> tuple[Any, Any, Any]:
    """(task, tokenised data, collator) of a trial."""
    from elalora_auto.tasks import family_of, load_task_data, resolve_task, tokenize_cached

    tr, ds = spec.training, spec.data
    task = resolve_task(spec.task, spec.custom)
    data = load_task_data(task, data_dir=ds.data_dir, max_train_samples=ds.max_train_samples,
                          max_eval_samples=ds.max_eval_samples, validation_fraction=ds.validation_fraction,
                          seed=ds.seed)
    tokenizer = load_tokenizer(spec.model)
    data = tokenize_cached(data, tokenizer, tr.max_length, ds.cache_dir)
    return task, data, family_of(task).collator(tokenizer)


def setup_trial(spec: TrialSpec, adapter_factory: AdapterFactory | None = None,
                reuse: TrialSetup | None = None) -> TrialSetup:
    """Seed, data (loaded, tokenised; `reuse`'s when given: a two-stage trial's second stage), a fresh copy of the
    cached base model wrapped by the adapter (a two-stage configuration's stage 1: `TrialSetup.retrain`), optimizer."""
    from transformers import get_linear_schedule_with_warmup, set_seed

    from elalora_auto.adapters import build_adapter, get_method, retrain_plan

    tr = spec.training
    set_seed(tr.seed)
    device, dtype = _device_and_dtype(tr)
    if device.type == "cuda" and reuse is None:
        torch.cuda.reset_peak_memory_stats(device)  # the trial's own peak (TrialResult.peak_memory_mb)
    task, data, collate = _trial_data(spec) if reuse is None else (reuse.task, reuse.data, reuse.collate)
    steps = total_steps(tr, len(data.train))

    base, missing = load_base_model(spec.model, task)
    model = copy.deepcopy(base)
    reset_fresh_head(model, missing, tr.seed)
    params = dict(spec.params)
    heads = params.pop("modules_to_save", None)
    plan = retrain_plan(spec.method, params, steps)
    if plan is not None:
        params, steps = dict(plan.search_params), plan.search_steps
    seed_param = get_method(spec.method).seed_param
    if seed_param:
        params.setdefault(seed_param, tr.seed)
    # Validated where the configuration entered (the search's plan, `train`): the build translates names only.
    adapter = (adapter_factory or partial(build_adapter, validate=False))(model, spec.method, params, steps, heads)
    adapter.model.to(device).train()
    adapter.prepare(_first_epoch(data.train, tr.batch_size, collate, tr.seed))  # may replace parameters (EVA)
    optimizer = torch.optim.AdamW(
        adapter.param_groups(tr.learning_rate), lr=tr.learning_rate, weight_decay=tr.weight_decay,
        **({"fused": True} if device.type == "cuda" else {"foreach": True}),
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, round(tr.warmup_ratio * steps), steps)
    return TrialSetup(task, data, collate, adapter, optimizer, scheduler, device, dtype, steps,
                      _primary_key(task, data.evals), plan)


def _optimizer_step(setup: TrialSetup, batches: Any, grad_accum: int, max_grad_norm: float,
                    step: int) -> tuple[torch.Tensor, int, RoundRecord | None]:
    """One optimizer step over `grad_accum` batches: (loss, still on the device; examples seen; the adapter's
    round record or None). Reads nothing back from the device."""
    model, device, dtype = setup.adapter.model, setup.device, setup.dtype
    step_loss, examples = torch.zeros((), device=device), 0
    for _ in range(grad_accum):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        examples += len(batch["labels"])
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(**batch).loss / grad_accum
        loss.backward()
        step_loss += loss.detach()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for g in setup.optimizer.param_groups for p in g["params"]], max_grad_norm)
    setup.optimizer.step()
    record = setup.adapter.after_optimizer_step(step, setup.optimizer)
    setup.scheduler.step()
    setup.optimizer.zero_grad(set_to_none=True)
    return step_loss, examples, record


def checked_losses(losses: list[torch.Tensor], last_step: int) -> float:
    """The loss of `last_step`, after one read of the losses since the previous check (steps `last_step -
    len(losses) + 1` to `last_step`); NonFiniteLossError at the first NaN/Inf among them. `losses` is emptied."""
    values = torch.stack(losses).tolist()
    losses.clear()
    first = last_step - len(values) + 1
    for step, value in enumerate(values, start=first):
        if not math.isfinite(value):
            raise NonFiniteLossError(step, value)
    return values[-1]


def evaluate_step(setup: TrialSetup, step: int, out: LoopOutcome, eval_batch_size: int,
                  listeners: list[Listener], trainer_rng: bool = False) -> float:
    """Evaluate every split now, record it in `out`, emit `eval`; returns the primary metric."""
    start = time.perf_counter()
    out.metrics = _evaluate(setup.adapter.model, setup.task, setup.data.evals, setup.collate, eval_batch_size,
                            setup.device, setup.dtype, trainer_rng)
    out.eval_time_s += time.perf_counter() - start
    out.eval_history.append({"step": step, "metrics": out.metrics})
    emit(listeners, Event("eval", step, {"metrics": out.metrics, "primary": out.metrics[setup.primary_key]}))
    return out.metrics[setup.primary_key]


def train_loop(spec: TrialSpec, setup: TrialSetup, reporter: Reporter | None, listeners: list[Listener],
               progress: bool, out: LoopOutcome | None = None) -> LoopOutcome:
    """The optimizer steps, with rank rounds, periodic logs and evaluations (the last step always evaluates).

    Measurements go into `out` (a fresh LoopOutcome when None) as they happen, so they survive an exception.
    """
    from tqdm.auto import tqdm

    tr, adapter, last = spec.training, setup.adapter, setup.total_steps
    batches = iter(_infinite(setup.data.train, tr.batch_size, setup.collate, tr.seed, tr.trainer_rng,
                             pin=setup.device.type == "cuda"))
    out = LoopOutcome() if out is None else out
    losses: list[torch.Tensor] = []  # the step losses since the last check, on the device
    with tqdm(total=last, disable=not progress, desc=f"{spec.method} {spec.task}", leave=False) as bar:
        for step in range(1, last + 1):
            step_loss, examples, record = _optimizer_step(setup, batches, tr.grad_accum, tr.max_grad_norm, step)
            losses.append(step_loss)
            out.examples += examples
            out.steps_done += 1  # both stages of a two-stage trial
            bar.update(1)
            if record is not None:
                out.rank_maps.append(RankPoint(step, adapter.rank_map()))
                emit(listeners, Event("round", step, {"record": record, "rank_map": out.rank_maps[-1].rank_map}))
            log_now = step % max(1, tr.log_every) == 0 or step == last
            eval_now = step == last or bool(tr.eval_every and step % tr.eval_every == 0)
            if log_now or eval_now:
                loss = checked_losses(losses, step)  # the one host read between logging points
            if log_now:
                out.loss_history.append({"step": step, "loss": loss})
                bar.set_postfix(loss=f"{loss:.4f}")
                emit(listeners, Event("train_step", step, {
                    "loss": loss, "lr": setup.scheduler.get_last_lr()[0], "total_rank": sum(adapter.rank_map().values()),
                    "trainable_params": adapter.num_trainable_parameters()}))
            if eval_now:
                primary = evaluate_step(setup, step, out, tr.eval_batch_size, listeners, tr.trainer_rng)
                if reporter is not None and step < last:
                    reporter(step, primary, adapter.num_trainable_parameters())
    return out


def run_trial(
    spec: TrialSpec,
    reporter: Reporter | None = None,
    listeners: Iterable[Listener] = (),
    output_dir: str | Path | None = None,
    progress: bool = True,
    adapter_factory: AdapterFactory | None = None,
) -> TrialResult:
    """Fine-tune `spec.model` with a fresh adapter on a copy of the cached base model and evaluate it:
    `setup_trial`, `train_loop` (which evaluates), then the ending (`trial_output.finish_trial`).

    Every ending is written and emitted (`trial_end`) before the trial returns or re-raises: complete, pruned
    (`reporter(step, primary, trainable_params)` runs after each periodic eval and may raise optuna.TrialPruned,
    which propagates) and failed (the exception propagates). A KeyboardInterrupt is not an ending: nothing is
    written. The size lets a Pareto-mode pruning rule compare a trial only with trials no larger than it.
    `adapter_factory` replaces `adapters.build_adapter` (same arguments), e.g. to keep the adapter it builds.
    A two-stage configuration (ElaLoRA's `retrain: lora`, two_stage.py) trains its search stage first, unreported
    to `reporter`, then the LoRA retrained on its rank map, which is the trial's result.
    """
    listeners = list(listeners)
    out, setup, search = LoopOutcome(), None, None
    try:
        setup = setup_trial(spec, adapter_factory)
        out.rank_maps.append(RankPoint(0, setup.adapter.rank_map()))
        emit(listeners, Event("trial_start", 0, {"spec": spec.to_dict(),
                                                "trainable_params": setup.adapter.num_trainable_parameters(),
                                                "rank_map": out.rank_maps[0].rank_map}))
        out.setup_time_s = time.perf_counter() - out.started
        if setup.retrain is not None:  # stage 1: ElaLoRA finds the rank map; never pruned (not the objective)
            train_loop(spec, setup, None, with_context(listeners, stage=SEARCH), progress, out)
            started = time.perf_counter()
            retrained = setup_trial(retrain_spec(spec, setup.retrain, setup.adapter.rank_map()), adapter_factory,
                                    reuse=setup)
            search, out = search_record(setup, out), after_search(out, setup.adapter.round_history)
            setup, out.setup_time_s = retrained, out.setup_time_s + time.perf_counter() - started
        train_loop(spec, setup, reporter, listeners, progress, out)
    except Exception as exc:
        result = _result(setup, out, *ending_of(exc), search=search)
        finish_trial(spec, result, setup and setup.adapter, output_dir, listeners, failing=exc)
        raise
    result = _result(setup, out, Ending.COMPLETE, None, search=search)
    finish_trial(spec, result, setup.adapter, output_dir, listeners)
    return result


def _result(setup: TrialSetup | None, out: LoopOutcome, state: Ending, reason: str | None,
            search: Any = None) -> TrialResult:
    """The TrialResult of whatever the trial reached; `setup` is None when it failed while setting up. A two-stage
    trial's fields are its stage 2's (the retrained LoRA) with stage 1 as `search_stage` (`search`); stopped in
    stage 1, it has measured no objective: its search stage and costs only."""
    wall = time.perf_counter() - out.started
    if setup is None:
        return TrialResult.unreached(state, reason, wall)
    if setup.retrain is not None:
        search, out = search_record(setup, out), after_search(out, [])
    adapter, key = setup.adapter, setup.primary_key
    train_time = wall - out.setup_time_s - out.eval_time_s
    return TrialResult(
        metrics=out.metrics, primary=out.metrics.get(key), primary_metric=key,
        trainable_params=adapter.num_trainable_parameters(), rank_map=rank_map_of(adapter, search),
        rank_history=out.search_rounds + list(adapter.round_history), rank_evolution=out.rank_maps,
        eval_history=out.eval_history,
        train_loss_history=out.loss_history, wall_time_s=wall, setup_time_s=out.setup_time_s,
        train_time_s=train_time, eval_time_s=out.eval_time_s,
        examples_per_s=round(out.examples / train_time, 1) if train_time > 0 else 0.0,
        steps=planned_steps(setup, search), steps_done=out.steps_done,
        intermediate_values={e["step"]: e["metrics"][key] for e in out.eval_history},
        device=device_name(setup.device), peak_memory_mb=peak_memory_mb(setup.device), state=state, reason=reason,
        search_stage=search,
    )
