"""What a measurement ran on: the checkout's commit, the machine as the device reports it (the CUDA device torch
sees, else the CPU model and cores), its load and the busy processes beside it (the CPUs are shared: a number
without its load misleads), and the library versions a training number depends on."""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def checkout_state(path: Path = ROOT) -> tuple[str, bool]:
    """(short commit, whether tracked files differ from it) of the git checkout holding `path`."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    return git("rev-parse", "--short", "HEAD") or "unknown", bool(git("status", "--porcelain",
                                                                       "--untracked-files=no"))


def git_commit(path: Path = ROOT) -> str:
    """The checkout's commit, '-dirty' when it has uncommitted changes (the numbers belong to that code)."""
    commit, dirty = checkout_state(path)
    return commit + ("-dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (platform.processor() is often empty or just 'x86_64')."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_note() -> str:
    """The accelerator torch would train on (name, memory, CUDA version), else the CPU: read, never assumed. The CPU
    part names the SIMD kernels torch dispatches to (AVX2, AVX512): they round differently, so the same seed and
    versions can end an evaluation a few rows apart on machines of the two kinds (BENCHMARKS.md, FFN-only set)."""
    import torch

    cpu = f"{os.cpu_count()}-core CPU ({cpu_model()}, torch CPU kernels {torch.backends.cpu.get_cpu_capability()})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return (f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA "
                f"{torch.version.cuda}), {cpu}")
    return f"{cpu}, no CUDA device, torch {torch.__version__}"


def kernels() -> str:
    """What rounds a training run's floats beside the library versions: the CUDA device torch would train on, else
    the CPU model and the SIMD kernels torch dispatches to. One kind of machine repeats a seed's ElaLoRA run to the
    bit; another may not (the same SST-2 trial 0 ended 83.03% on an AMD EPYC and 82.45% on an Intel Xeon, both
    AVX512: a rounding difference flipped a rank choice; over a whole search the same configurations scored 0.2
    points lower on the Intel), so rows of two kinds are no clean pair."""
    import torch

    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    return f"CPU {cpu_model()}, {torch.backends.cpu.get_cpu_capability()}"


def row_kernels(row: dict) -> str:
    """A result row's `kernels`; a row written before that field has them in its `machine_before` (`device_note`'s
    words: a CUDA device first, else the CPU; the SIMD kernels only since they were added there)."""
    if "kernels" in row:
        return row["kernels"]
    note = row.get("machine_before", "")
    cuda = re.match(r"\d+ x (.+?) \(\d+ GiB", note)
    cpu = re.search(r"CPU \((.+?)(?:, torch CPU kernels (\w+))?\)(?=[,;]|$)", note)
    if cuda or not cpu:
        return f"CUDA {cuda[1]}" if cuda else "unrecorded"
    return f"CPU {cpu[1]}, {cpu[2] or 'kernels unrecorded'}"


def busy_processes(limit: int = 4) -> list[str]:
    """Other Python processes using >= 20% of a CPU now (they share the cores a timing ran on)."""
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                            check=False).stdout.splitlines()[1:]
    except OSError:
        return []
    found = []
    for line in ps:
        pid, pcpu, args = line.strip().split(None, 2)
        if int(pid) != os.getpid() and float(pcpu) >= 20 and "python" in args:
            found.append(f"`{args[:70]}` ({pcpu}% CPU)")
    return found[:limit]


def machine_note() -> str:
    """The device, the load averages and the other heavy Python processes, measured now."""
    load = os.getloadavg()
    note = (f"{device_note()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min); "
            f"Python {platform.python_version()}")
    others = busy_processes()
    return note + ("; other busy processes: " + ", ".join(others) if others else "")


def versions() -> dict[str, str]:
    """Python's and the libraries' versions a training run's numbers depend on (stamped on every result row: rows
    of different versions are not compared with each other)."""
    import importlib.metadata

    names = ("torch", "transformers", "peft", "accelerate", "optuna", "datasets")
    return {"python": platform.python_version(), **{n: importlib.metadata.version(n) for n in names}}


def command_line() -> str:
    """How this script was started, relative to the checkout (a result row says how to reproduce it)."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
