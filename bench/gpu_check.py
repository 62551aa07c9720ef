"""GPU check (issue 8): ElaLoRA, PEFT LoRA and PEFT AdaLoRA on real hardware, as ONE prepared command.

(a) Median step time, fixed per-step overhead over LoRA (ms) and peak memory of the three methods (and of
    ElaLoRA with `orth_reg_every` 4, the lazy penalty, as arm elalora-every4) on a
    DeBERTa-v3-base-sized model built from its config (random weights, no download), bf16 autocast, batch 32
    and 64 x sequence 128 and 256; rank rounds inside the timed steps (ElaLoRA and AdaLoRA: t_init 2, delta_t
    5), the same batches for every method, the methods alternating step by step (bench/step_time.py's
    device_step_rows).
(b) One real `run_trial` per method on MiniLM / SST-2 (`device: auto`, so CUDA with bf16 autocast), 100 steps:
    accuracy, examples/s and the CUDA synchronisations inside steps between logging points
    (`torch.cuda.set_sync_debug_mode`; the target is 0).
(c) A 4-trial search on the GPU with two worker processes sharing it (`elalora-auto search --create-only`,
    then two `elalora-auto worker` processes on its journal file), then the exact trial count and distinct
    trial numbers.

On a GPU machine (no network needed; sized for well under 5 minutes on one H200, not yet run on one; appends
the tables with the command, device and date to BENCHMARKS.md, `--no-append` to only print them):

    python bench/gpu_check.py --data-dir ../shared/data/glue

In CI, on CPU with tiny sizes (a tiny DeBERTa-v2, the demo's tiny BERT and synthetic task; seconds; appends
nothing unless --append-to is given; `--smoke --device cuda` is a quick pre-check on a GPU machine):

    python bench/gpu_check.py --smoke

Targets are printed beside the numbers, not asserted: ElaLoRA step <= 1.05x LoRA (equal average rank) and
<= AdaLoRA; ElaLoRA peak memory <= 1.05x LoRA. The exit status is 1 when a part failed, the trial count is
not exact, or the search lost MLflow events (one child run per trial, no tracking warning expected).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GLUE, ROOT, add_common_args, append_section, sst2_spec, write_json  # noqa: E402
from gpu_search import STUDY, TRIALS, search_check, search_table  # noqa: E402
from step_time import device_step_rows, device_step_table, gib, method_params  # noqa: E402

import torch  # noqa: E402

LAZY_EVERY = 4  # part (a) also times ElaLoRA with the penalty every 4th step: on a GPU its launches are its cost

# microsoft/deberta-v3-base's config.json, minus the tokenizer-only fields.
DEBERTA_V3_BASE: dict[str, Any] = {
    "vocab_size": 128100, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512, "type_vocab_size": 0,
    "relative_attention": True, "max_relative_positions": -1, "position_buckets": 256,
    "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False, "layer_norm_eps": 1e-7, "pooler_hidden_size": 768, "pooler_dropout": 0,
    "pooler_hidden_act": "gelu", "num_labels": 2,
}


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU smoke run."""

    deberta: dict[str, Any]
    batch_sizes: tuple[int, ...]
    lengths: tuple[int, ...]
    warmup: int
    steps: int  # timed steps per method and shape
    rank: int
    trial_steps: int
    search_steps: int
    search_timeout_s: int
    tiny_task: bool  # the demo's tiny BERT and synthetic task instead of MiniLM / SST-2
    tracking: bool  # MLflow in the search (off in the smoke run: it about triples the workers' time on 2 cores)


FULL = Sizes(DEBERTA_V3_BASE, (32, 64), (128, 256), warmup=3, steps=30, rank=8, trial_steps=100,
             search_steps=100, search_timeout_s=300, tiny_task=False, tracking=True)
SMOKE = Sizes({**DEBERTA_V3_BASE, "vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 2, "intermediate_size": 64, "position_buckets": 8, "pooler_hidden_size": 32},
              (2,), (8, 16), warmup=2, steps=6, rank=2, trial_steps=6, search_steps=4, search_timeout_s=120,
              tiny_task=True, tracking=False)


# ------------------------------------------------------------------------------------------- device helpers
def cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def device_note(device: torch.device) -> str:
    """The accelerator (or CPU), the software and the host load, measured now."""
    load = os.getloadavg()
    host = (f"{os.cpu_count()} CPU cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
            f"torch {torch.__version__}, Python {platform.python_version()}")
    if not cuda(device):
        return f"CPU only ({platform.processor() or platform.machine()}); {host}"
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}; {host}"


# ------------------------------------------------------------------------------------- (a) step time, memory
def step_time_rows(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """bench/step_time.py's interleaved steps on a DeBERTa-v3-base-sized model (random weights) on `device`."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    with torch.device(device):
        base = DebertaV2ForSequenceClassification(DebertaV2Config(**sizes.deberta))
    return device_step_rows(base, sizes.batch_sizes, sizes.lengths, sizes.warmup, sizes.steps, sizes.rank,
                            torch.bfloat16, orth_reg_every=LAZY_EVERY)


# ------------------------------------------------------------------------------------------ (b) run_trial
def run_counting_syncs(spec: Any, device: torch.device) -> tuple[Any, int | None]:
    """run_trial, counting the CUDA synchronisations (torch.cuda.set_sync_debug_mode warnings) made while an
    optimizer step that is neither a logging, an evaluation nor a round step ran: (the result, that count; None
    on the CPU, which has no sync to count).

    Measured from outside, through public names only: the trial's adapter factory puts a forward pre-hook on the
    adapter's model, and each training forward with gradients starts step (forwards - 1) // grad_accum + 1; what
    runs after a step's last forward (its backward, optimizer step, round, the logging point's read of the
    losses, an evaluation) is the step's."""
    import warnings

    from elalora_auto.adapters import build_adapter
    from elalora_auto.trial import run_trial

    now = {"step": 0, "forwards": 0}
    per_step: Counter[int] = Counter()

    def count_forward(module: torch.nn.Module, args: Any) -> None:
        if module.training and torch.is_grad_enabled():
            now["forwards"] += 1
            now["step"] = (now["forwards"] - 1) // spec.training.grad_accum + 1

    def adapter_factory(*args: Any) -> Any:
        adapter = build_adapter(*args, validate=False)  # as the trial builds it: the spec was checked already
        adapter.model.register_forward_pre_hook(count_forward)
        return adapter

    def note(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if "synchroniz" in str(message):
            per_step[now["step"]] += 1

    show = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = note
            if cuda(device):
                torch.cuda.set_sync_debug_mode("warn")
            result = run_trial(spec, progress=False, adapter_factory=adapter_factory)
    finally:
        if cuda(device):
            torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = show
    tr, last = spec.training, result.steps_done
    checked = {step for step in range(1, last + 1) if step % max(1, tr.log_every) == 0
               or (tr.eval_every and step % tr.eval_every == 0)} | {last} | {r.step for r in result.rank_history}
    syncs = sum(count for step, count in per_step.items() if step and step not in checked)
    return result, syncs if cuda(device) else None


def trial_rows(sizes: Sizes, device: torch.device, data_dir: Path, workdir: Path,
               demo: Any | None) -> list[dict[str, Any]]:
    """One run_trial per method: MiniLM / SST-2 with `device: auto`, or the demo's tiny task with --smoke."""
    from elalora_auto.trial import TrialSpec

    rows = []
    for method, params in method_params(sizes.rank, schedule=None).items():
        if demo is None:
            spec = sst2_spec(method, params, seed=0, steps=sizes.trial_steps, glue=data_dir, lr=2e-3)
            spec.training.device = "auto"
        else:
            spec = TrialSpec(task=demo.task, model=demo.model, method=method, params=params, custom=demo.custom)
            spec.training.max_steps = sizes.trial_steps
            spec.training.batch_size = 8
            spec.training.max_length = 24
            spec.training.learning_rate = 3e-3
            spec.training.device = device.type
            spec.data.cache_dir = str(workdir / "cache")
        if cuda(device):
            torch.cuda.reset_peak_memory_stats(device)
        result, syncs = run_counting_syncs(spec, device)
        rows.append({"method": method, "params": params, "metric": result.primary_metric, "value": result.primary,
                     "syncs_between_logs": syncs,
                     "examples_per_s": result.examples_per_s, "train_time_s": result.train_time_s,
                     "wall_time_s": result.wall_time_s, "steps": result.steps, "rounds": len(result.rank_history),
                     "total_rank": sum(result.rank_map.values()), "trainable_params": result.trainable_params,
                     "peak_bytes": torch.cuda.max_memory_allocated(device) if cuda(device) else None,
                     "device": spec.training.device, "bf16": spec.training.bf16})
        print(f"(b) {method}: {result.primary_metric} {result.primary:.4f}, {result.examples_per_s:.0f} examples/s, "
              f"{len(result.rank_history)} rank rounds, {result.wall_time_s:.1f} s", flush=True)
    return rows


def trial_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | metric | value | examples/s (training) | train s | rank rounds | total rank at end | "
             "trainable params | peak memory GiB | CUDA syncs in steps between logging points (target 0; not ours: "
             "transformers' BERT SDPA mask check, once per forward, and PEFT AdaLoRA's "
             "masking steps) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['metric']} | {row['value']:.4f} | {row['examples_per_s']:.0f} | "
                     f"{row['train_time_s']:.1f} | {row['rounds']} | {row['total_rank']} | "
                     f"{row['trainable_params']:,} | {gib(row['peak_bytes'])} | "
                     f"{'-' if row['syncs_between_logs'] is None else row['syncs_between_logs']} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- main
def data_problem(data_dir: Path) -> str | None:
    """Why SST-2 cannot be read from `data_dir` (the library's own message), or None."""
    from elalora_auto.errors import UserError
    from elalora_auto.tasks import get_task, load_task_data

    try:
        load_task_data(get_task("sst2"), data_dir=data_dir, max_train_samples=1, max_eval_samples=1)
    except UserError as exc:
        return str(exc)
    return None


def smoke_study(workdir: Path) -> tuple[Any, Path]:
    """The demo's tiny model and task (built under `workdir`) and a study file on them for the CLI."""
    import yaml

    from elalora_auto.demo import demo_settings

    demo = demo_settings(workdir / "demo", trials=TRIALS, tracking=False)
    config = workdir / "smoke-study.yaml"
    config.write_text(yaml.safe_dump({**demo.to_dict(), "study": STUDY, "eval_every": 2, "batch_size": 8,
                                      "max_length": 24}))
    return demo, config


def titles(sizes: Sizes, device: torch.device, tiny_task: bool) -> dict[str, str]:
    """Each part's heading: what was measured, in enough detail to read the table alone."""
    deberta = sizes.deberta
    task = "the demo's tiny BERT on its synthetic task" if tiny_task else "MiniLM-L6 on SST-2"
    bf16 = cuda(device) and torch.cuda.is_bf16_supported()  # what run_trial's bf16 "auto" picks
    return {
        "a": (f"(a) Step time and peak memory: DeBERTa-v3-base-sized model ({deberta['num_hidden_layers']} layers, "
              f"hidden {deberta['hidden_size']}, vocab {deberta['vocab_size']}; random weights), bf16 autocast, "
              f"AdamW, {sizes.warmup} untimed + {sizes.steps} timed steps per method and shape, methods "
              f"alternating (rotating order) on the same 4 batches; LoRA and ElaLoRA rank {sizes.rank} (ElaLoRA "
              f"b 4, k 2), AdaLoRA {sizes.rank} -> {max(1, sizes.rank // 2)}; t_init 2, delta_t 5 of a 200-step "
              "schedule"),
        "b": (f"(b) run_trial on {device.type} (training.device {device.type if tiny_task else 'auto'}, bf16 "
              f"auto: {'bf16 autocast' if bf16 else 'float32'}): {task}, {sizes.trial_steps} steps, rank "
              f"{sizes.rank}, schedule from the run length"),
        "c": (f"(c) {TRIALS}-trial search, two worker processes sharing one {device.type} device: {task}, "
              f"{sizes.search_steps} steps per trial"),
    }


def run_parts(args: argparse.Namespace, sizes: Sizes, device: torch.device, workdir: Path,
              payload: dict[str, Any], failures: list[str]) -> str:
    """The chosen parts as markdown sections; a crashed part is reported (traceback printed) and the next runs,
    so one GPU session always yields the whole picture."""
    needs_data = bool({"b", "c"} & set(args.parts))
    demo, config = smoke_study(workdir) if sizes.tiny_task and needs_data else (None, None)
    skip = data_problem(args.data_dir) if needs_data and demo is None else None

    def step_time() -> str:
        payload["step_time"] = step_time_rows(sizes, device)
        return device_step_table(payload["step_time"])

    def trials() -> str:
        payload["trials"] = trial_rows(sizes, device, args.data_dir, workdir, demo)
        return trial_table(payload["trials"])

    def search() -> str:
        result = payload["search"] = search_check(sizes.search_steps, sizes.search_timeout_s, sizes.tracking, device,
                                                args.data_dir, workdir / "search", config)
        if not result["exact"]:
            failures.append("(c) trial count")
        if result["mlflow_trial_runs"] not in (None, list(range(TRIALS))) or result["tracking_skipped"]:
            failures.append("(c) MLflow tracking")
        return search_table(result)

    parts: dict[str, Callable[[], str]] = {"a": step_time, "b": trials, "c": search}
    sections = []
    for key in args.parts:
        if key in ("b", "c") and skip:
            text = f"skipped: SST-2 not readable from {args.data_dir} ({skip}); pass --data-dir"
        else:
            start = time.perf_counter()
            try:
                text = parts[key]()
            except Exception as exc:  # a benchmark reports a crash as its result and goes on with the next part
                traceback.print_exc()
                failures.append(f"({key}) {parts[key].__name__}")
                text = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"({key}) took {time.perf_counter() - start:.0f} s", flush=True)
        sections.append(f"### {titles(sizes, device, demo is not None)[key]}\n\n{text}")
    return "\n\n".join(sections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU-sized: tiny models, a few steps (CI)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default cuda (refused without CUDA); cpu with --smoke")
    parser.add_argument("--data-dir", type=Path, default=GLUE, help="GLUE folder holding SST-2/ (parts b and c)")
    parser.add_argument("--parts", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    parser.add_argument("--no-append", action="store_true", help="full run: print only, do not append")
    add_common_args(parser)
    args = parser.parse_args()
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if cuda(device) and not torch.cuda.is_available():
        raise SystemExit("error: CUDA is not available here; run on a GPU machine, or add --smoke (CPU, tiny sizes)")
    if args.append_to is None and not args.smoke and not args.no_append:
        args.append_to = ROOT / "BENCHMARKS.md"
    torch.set_num_threads(args.threads)
    sizes = SMOKE if args.smoke else FULL
    before = device_note(device)
    print(f"gpu_check{' --smoke' if args.smoke else ''} on {before}", flush=True)

    payload: dict[str, Any] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        text = run_parts(args, sizes, device, Path(tmp), payload, failures)
    after = device_note(device)
    write_json("gpu_check_smoke" if args.smoke else "gpu_check",
               {"args": vars(args), "machine_before": before, "machine_after": after, **payload})
    print("\n" + text)
    if failures:
        print(f"\nfailed: {', '.join(failures)}")
    append_section(args.append_to, f"GPU check (bench/gpu_check.py{' --smoke' if args.smoke else ''}): "
                   f"{before.split(';')[0]}", text, before, after)
    if args.append_to is not None:
        print(f"appended to {args.append_to}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
