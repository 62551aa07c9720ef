"""Seconds per optimizer step: ElaLoRA vs PEFT LoRA (same initial rank) vs PEFT AdaLoRA, interleaved in one run.

Each timed step is forward + backward + optimizer.step() + the adapter hook (update_and_allocate /
after_optimizer_step) + zero_grad. The methods take turns step by step (the order rotates every step), so a
change in machine load hits all of them alike. ElaLoRA is configured so that rounds happen inside the timed
steps (t_init 2, delta_t 5), and the table says how many did. It also reports the fixed per-step overhead over
LoRA in ms (median minus LoRA's median) and each method's peak memory over one extra (untimed) step against
LoRA's: every tensor that step touches or creates (weights, adapter, gradients, activations, optimizer state),
from the torch profiler's memory timeline on the CPU. On a shared machine, `--clock cpu --threads 1` times each
step in this process's CPU time, which other processes' load barely moves, and the per-step ratio pairs each step
with LoRA's step of the same rotation.

    python bench/step_time.py --models tiny minilm --steps 40 --append-to BENCHMARKS.md
    python bench/step_time.py --models tiny --steps 100 --threads 1 --clock cpu
    python bench/step_time.py --models tiny --steps 100 --threads 1 --clock cpu --orth-reg-every 4
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_args, machine_note, minilm_path, publish  # noqa: E402

import torch  # noqa: E402

# wall: what a user waits; cpu: the process's CPU time (all its threads), which a loaded machine's time slicing
# does not inflate, so a ratio of a few percent can be told apart from the noise there
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
SCHEDULE_STEPS = 200  # the adapters' nominal run length: the timed steps sit early in the adjustment window
# A round every 5 steps from step 7 on, so several rounds fall inside a few dozen timed steps.
FAST_SCHEDULE = {"t_init": 2, "t_final": 50, "delta_t": 5}


def method_params(r: int, schedule: dict[str, int] | None = FAST_SCHEDULE) -> dict[str, dict[str, Any]]:
    """Each method at initial rank r: LoRA and ElaLoRA keep an average rank of r (ElaLoRA moves rank, never
    the total), AdaLoRA budgets down to r/2. `schedule` None: the run-length defaults of build_adapter."""
    schedule = schedule or {}
    return {
        "lora": {"r_init": r, "lora_alpha": 2 * r},
        "elalora": {"r_init": r, "lora_alpha": 2 * r, "b": 4, "k": 2, **schedule},
        "adalora": {"r_init": r, "r_target": max(1, r // 2), "lora_alpha": 2 * r, **schedule},
    }


def arms(r: int, orth_reg_every: int = 1) -> dict[str, dict[str, Any]]:
    """method_params(r) and, with `orth_reg_every` > 1, ElaLoRA with that lazy penalty as arm `elalora-everyN`."""
    params = method_params(r)
    if orth_reg_every > 1:
        params[f"elalora-every{orth_reg_every}"] = {**params["elalora"], "orth_reg_every": orth_reg_every}
    return params


def base_model(name: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    if name == "tiny":
        torch.manual_seed(0)
        config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                            vocab_size=1000, max_position_embeddings=128, num_labels=2)
        return BertForSequenceClassification(config)
    if name == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    raise SystemExit(f"error: unknown model {name!r}; choose tiny or minilm")


def random_batches(vocab_size: int, batch_size: int, length: int, count: int = 1,
                   device: str | torch.device = "cpu") -> list[dict[str, torch.Tensor]]:
    """`count` seeded random token batches (full attention, binary labels), the same for every method."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        batch = {
            "input_ids": torch.randint(5, vocab_size, (batch_size, length), generator=generator),
            "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch_size,), generator=generator),
        }
        batches.append({key: value.to(device) for key, value in batch.items()})
    return batches


def build_runs(base: torch.nn.Module, params: dict[str, dict[str, Any]], lr: float = 5e-4) -> dict[str, dict[str, Any]]:
    """A fresh adapter (on a copy of `base`, on its device) and AdamW per arm, fused on CUDA as in run_trial. An
    arm is named METHOD or METHOD-VARIANT (e.g. `elalora-every4`: the method with other parameters)."""
    from elalora_auto.adapters import build_adapter

    runs = {}
    for arm, method_kwargs in params.items():
        method = arm.partition("-")[0]
        adapter = build_adapter(copy.deepcopy(base), method, method_kwargs, SCHEDULE_STEPS, None)
        adapter.model.train()
        fast = {"fused": True} if next(base.parameters()).device.type == "cuda" else {"foreach": True}
        optimizer = torch.optim.AdamW(adapter.param_groups(lr), lr=lr, **fast)
        runs[arm] = {"adapter": adapter, "optimizer": optimizer, "params": adapter.num_trainable_parameters()}
    return runs


def train_step(run: dict[str, Any], batch: dict[str, torch.Tensor], step: int,
               dtype: torch.dtype | None = None, clock: Callable[[], float] = time.perf_counter) -> tuple[float, bool]:
    """One timed step: forward (autocast to `dtype` if given) + backward + optimizer step + adapter hook +
    zero_grad, CUDA synchronised at both ends. Returns (seconds on `clock`, whether the hook moved a rank)."""
    device = batch["input_ids"].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = clock()
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = run["adapter"].model(**batch).loss
    loss.backward()
    run["optimizer"].step()
    record = run["adapter"].after_optimizer_step(step, run["optimizer"])
    run["optimizer"].zero_grad(set_to_none=True)
    sync()
    return clock() - start, record is not None


def step_without_round(after: int, schedule: dict[str, int] = FAST_SCHEDULE) -> int:
    """The first step after `after` at which no rank round runs: the profiler's memory timeline cannot follow a
    round, which resizes or masks parameters in place (torch raises "version mismatch"), and a round's transient
    tensors are not the per-step cost asked for."""
    step = after + 1
    while step > schedule["t_init"] and (step - schedule["t_init"]) % schedule["delta_t"] == 0:
        step += 1
    return step


def cpu_step_peak_bytes(run: dict[str, Any], batch: dict[str, torch.Tensor], step: int) -> int:
    """Peak bytes of one training step on the CPU: the largest total of the torch profiler's memory timeline
    (every tensor the step touches or creates)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        train_step(run, batch, step)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA snapshots; the CPU has no other view
        path = Path(folder) / "memory.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return max(sum(row) for row in sizes)


def interleaved(methods: list[str], warmup: int, steps: int,
                one_step: Callable[[str, int], tuple[float, bool]]) -> dict[str, dict[str, Any]]:
    """`one_step(method, step)` for every method at every step, the order rotating each step so that a change
    in machine load hits all methods alike. Per method: the timed seconds after `warmup` untimed steps and how
    many timed steps moved a rank."""
    timed: dict[str, dict[str, Any]] = {method: {"times": [], "rounds": 0} for method in methods}
    order = list(methods)
    for step in range(1, warmup + steps + 1):
        order = order[1:] + order[:1]
        for method in order:
            elapsed, moved = one_step(method, step)
            if step > warmup:
                timed[method]["times"].append(elapsed)
                timed[method]["rounds"] += moved
    return timed


def spread(times: list[float]) -> dict[str, float]:
    """Median and quartiles of the step times (the IQR shows how noisy the machine was)."""
    quartiles = statistics.quantiles(times, n=4)
    return {"median_s": statistics.median(times), "p25_s": quartiles[0], "p75_s": quartiles[2]}


def measure(model_name: str, steps: int, warmup: int, batch_size: int, length: int, r: int,
            clock: str = "wall", orth_reg_every: int = 1) -> list[dict[str, Any]]:
    """Median s/step per method on `clock` (a CLOCKS name), the methods interleaved step by step with a rotating
    order; with `orth_reg_every` > 1 also ElaLoRA with that lazy penalty (arm `elalora-everyN`)."""
    base = base_model(model_name)
    batch = random_batches(base.config.vocab_size, batch_size, length)[0]
    params = arms(r, orth_reg_every)
    runs = build_runs(base, params)
    for method, timed in interleaved(list(params), warmup, steps,
                                     lambda method, step: train_step(runs[method], batch, step,
                                                                     clock=CLOCKS[clock])).items():
        runs[method].update(timed)
    for method in params:
        runs[method]["peak_bytes"] = cpu_step_peak_bytes(runs[method], batch, step_without_round(warmup + steps))
    lora, lora_peak = statistics.median(runs["lora"]["times"]), runs["lora"]["peak_bytes"]
    rows = []
    for method in params:
        times = runs[method]["times"]
        median = statistics.median(times)
        # step i of every method ran within one rotation of the others, so its ratio to LoRA's step i pairs out
        # the load of that moment (the ratio of the medians does not)
        paired = [t / lora_t for t, lora_t in zip(times, runs["lora"]["times"])]
        paired_q = statistics.quantiles(paired, n=4)
        rows.append({"model": model_name, "method": method, "clock": clock, **spread(times),
                     "ratio_to_lora": median / lora, "paired_ratio": statistics.median(paired),
                     "paired_ratio_p25": paired_q[0], "paired_ratio_p75": paired_q[2],
                     "overhead_ms": (median - lora) * 1e3, "peak_bytes": runs[method]["peak_bytes"],
                     "peak_ratio_to_lora": runs[method]["peak_bytes"] / lora_peak,
                     "timed_steps": len(times), "rounds_in_timed_steps": runs[method]["rounds"],
                     "trainable_params_start": runs[method]["params"],
                     "matrices": len(runs[method]["adapter"].rank_map())})
        print(f"{model_name} {method}: median {median:.4f} s/step ({median / lora:.3f}x LoRA, per step "
              f"{rows[-1]['paired_ratio']:.3f}x, {rows[-1]['overhead_ms']:+.2f} ms), "
              f"peak {rows[-1]['peak_bytes'] / 2**20:.1f} MiB "
              f"({rows[-1]['peak_ratio_to_lora']:.3f}x LoRA), {runs[method]['rounds']} rank changes in "
              f"{len(times)} timed steps", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | method | median s/step | IQR s/step | ratio to LoRA | per-step ratio to LoRA, median (IQR) | "
             "overhead vs LoRA ms/step | peak MiB | peak vs LoRA | timed steps | rounds that moved rank (in timed "
             "steps) | adapted matrices |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['method']} | {row['median_s']:.4f} | {row['p25_s']:.4f}-"
                     f"{row['p75_s']:.4f} | {row['ratio_to_lora']:.3f}x | {row['paired_ratio']:.3f}x "
                     f"({row['paired_ratio_p25']:.3f}-{row['paired_ratio_p75']:.3f}) | {row['overhead_ms']:+.2f} | "
                     f"{row['peak_bytes'] / 2**20:.1f} | {row['peak_ratio_to_lora']:.3f}x | {row['timed_steps']} | "
                     f"{row['rounds_in_timed_steps']} | {row['matrices']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------- on an accelerator (bench/gpu_check.py part a)
def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def gib(n_bytes: float | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**30:.2f}"


def device_step_rows(base: torch.nn.Module, batch_sizes: tuple[int, ...], lengths: tuple[int, ...], warmup: int,
                     steps: int, rank: int, dtype: torch.dtype | None,
                     orth_reg_every: int = 1) -> list[dict[str, Any]]:
    """Per (batch, length) on `base`'s device, autocast to `dtype`: the three methods (and with `orth_reg_every`
    > 1 ElaLoRA with that lazy penalty) interleaved (rotating order) on the same 4 batches; median time and peak
    memory.

    Peak memory of a method = its own resident bytes (its copy of the model, adapter, optimizer state and
    importance statistics, counted as the allocation growth of its build and its own steps) + the largest
    transient of one of its steps above what was allocated before it (`reset_peak_memory_stats`, then
    `max_memory_allocated`): what it would peak at alone on the device, although all three stay resident.
    None on the CPU (bench/step_time.py's own table uses the profiler there).
    """
    device, rows = next(base.parameters()).device, []
    for batch_size, length in [(b, n) for b in batch_sizes for n in lengths]:
        batches = random_batches(base.config.vocab_size, batch_size, length, count=4, device=device)
        runs: dict[str, dict[str, Any]] = {}
        for method, params in arms(rank, orth_reg_every).items():
            before = allocated(device)
            runs.update(build_runs(base, {method: params}))
            runs[method].update(resident=allocated(device) - before, peak=None)

        def one_step(method: str, step: int) -> tuple[float, bool]:
            run, before = runs[method], allocated(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            elapsed, moved = train_step(run, batches[step % len(batches)], step, dtype)
            if device.type == "cuda":
                run["peak"] = max(run["peak"] or 0, run["resident"] + torch.cuda.max_memory_allocated(device) - before)
            run["resident"] += allocated(device) - before
            return elapsed, moved

        for method, timed in interleaved(list(runs), warmup, steps, one_step).items():
            times = timed["times"]
            rows.append({"batch": batch_size, "length": length, "method": method, **spread(times),
                         "peak_bytes": runs[method]["peak"], "timed_steps": len(times),
                         "rounds_in_timed_steps": timed["rounds"], "trainable_params_start": runs[method]["params"]})
            print(f"(a) batch {batch_size} length {length} {method}: {rows[-1]['median_s'] * 1e3:.1f} ms/step, "
                  f"peak {gib(rows[-1]['peak_bytes'])} GiB, {timed['rounds']} rounds moved rank", flush=True)
        del runs, batches
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def device_step_table(rows: list[dict[str, Any]]) -> str:
    """device_step_rows as markdown, with the targets (ElaLoRA: step <= 1.05x LoRA and <= AdaLoRA, memory <= 1.05x
    LoRA) met or MISSED beside the numbers."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = ["| batch | length | method | median ms/step | IQR ms | vs LoRA | overhead vs LoRA ms | peak memory GiB | "
             "vs LoRA | rounds that moved rank / timed steps | targets (ElaLoRA: step <= 1.05x LoRA, <= AdaLoRA; "
             "memory <= 1.05x LoRA) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        same = {r["method"]: r for r in rows if (r["batch"], r["length"]) == (row["batch"], row["length"])}
        lora, adalora = same["lora"], same["adalora"]
        step_ratio = row["median_s"] / lora["median_s"]
        memory_ratio = row["peak_bytes"] / lora["peak_bytes"] if row["peak_bytes"] and lora["peak_bytes"] else None
        target = ""
        if row["method"] == "elalora":
            faster = verdict(row["median_s"] <= adalora["median_s"])
            target = (f"step {verdict(step_ratio <= 1.05)}, vs AdaLoRA {faster}, "
                      f"memory {'-' if memory_ratio is None else verdict(memory_ratio <= 1.05)}")
        lines.append(f"| {row['batch']} | {row['length']} | {row['method']} | {row['median_s'] * 1e3:.1f} | "
                     f"{row['p25_s'] * 1e3:.1f}-{row['p75_s'] * 1e3:.1f} | {step_ratio:.3f}x | "
                     f"{(row['median_s'] - lora['median_s']) * 1e3:+.2f} | "
                     f"{gib(row['peak_bytes'])} | {'-' if memory_ratio is None else f'{memory_ratio:.3f}x'} | "
                     f"{row['rounds_in_timed_steps']} / {row['timed_steps']} | {target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "minilm"], choices=["tiny", "minilm"])
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per method (>= 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rank", type=int, default=4, help="initial rank of every method")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, which other processes on a shared "
                             "machine barely move (use with --threads 1: it sums every thread's time)")
    parser.add_argument("--orth-reg-every", type=int, default=1, metavar="N",
                        help="N > 1: also time ElaLoRA with orth_reg_every N (the penalty every N-th step, N times "
                             "the weight) as arm elalora-everyN")
    add_common_args(parser)
    args = parser.parse_args()
    if args.orth_reg_every < 1:
        parser.error(f"--orth-reg-every {args.orth_reg_every}: give a whole number >= 1 (1: the method default)")
    torch.set_num_threads(args.threads)
    before = machine_note()
    rows = [row for name in args.models
            for row in measure(name, args.steps, args.warmup, args.batch_size, args.length, args.rank, args.clock,
                               args.orth_reg_every)]
    publish("step_time", "Step time: ElaLoRA vs PEFT LoRA vs PEFT AdaLoRA (bench/step_time.py)", args, before,
            {"rows": rows}, table(rows), (
        f"Random token batches (batch {args.batch_size}, length {args.length}), AdamW, "
        f"torch.set_num_threads({args.threads}), {args.clock} clock; each timed step = forward + backward + "
        "optimizer step + adapter hook + zero_grad; the three methods alternate step by step (rotating order) after "
        f"{args.warmup} untimed steps each. Initial rank {args.rank} everywhere (AdaLoRA init_r {args.rank} -> "
        f"target_r {max(1, args.rank // 2)}); ElaLoRA b 4, k 2, t_init 2, delta_t 5 (a round every 5 steps; "
        "'rounds that moved rank' counts the hook calls that changed a rank). Per-step ratio = each timed step over "
        "LoRA's step of the same rotation (pairs out the load of the moment). Overhead = median minus LoRA's "
        "median. Peak = the largest total of the torch profiler's memory timeline over one more (untimed) step: "
        "every tensor it touches or creates. The IQR column shows how noisy the shared machine was."
    ))


if __name__ == "__main__":
    main()
