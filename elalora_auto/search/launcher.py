"""One worker process per slot from one command: `search --workers N` (CPU) or `--gpus 0,1,2,3`.

The parent has created (or loaded) the study before it calls `launch_workers`, so the children only join it
(`elalora-auto worker`), through the engines that already share a study: the journal file on one machine, an
RDB storage (PostgreSQL) across machines. Each child gets its own CUDA_VISIBLE_DEVICES for `--gpus`, and the
storage through ELALORA_STORAGE rather than its command line (where `ps` would show a password). The children
run in their own sessions, so a terminal's Ctrl-C reaches the parent only; the parent forwards it once to every
child (each stops its trial and re-queues it) and collects which trials will be re-run. A second Ctrl-C kills
them all at once. Every child counts the study's trials before it starts one (`study.counted_trials`), so
together they end with exactly the budget.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from typing import Callable, Mapping, Sequence

from elalora_auto.errors import UserError
from elalora_auto.search.settings import SearchSettings
from elalora_auto.search.storage import STORAGE_ENV, resolve_storage
from elalora_auto.search.worker import Interrupted

_RERUN = re.compile(r"^interrupted: trials? ([\d, ]+) will be re-run")


def worker_slots(workers: int | None, gpus: str | None,
                 device: str = "auto") -> list[tuple[str, Mapping[str, str]]]:
    """(label, extra environment) per child: one per GPU index of `gpus`, else `workers` plain CPU slots.

    GPU indices count the GPUs this process sees (as torch numbers them, so within a CUDA_VISIBLE_DEVICES of
    its own); one that is not there fails now, not as a worker silently training on the CPU.
    """
    if workers is not None and gpus is not None:
        raise UserError("give --workers N (CPU) or --gpus 0,1,... (one worker per GPU), not both")
    if gpus is not None:
        indices = [g.strip() for g in gpus.split(",")]
        if not indices or not all(g.isdigit() for g in indices) or len(set(indices)) != len(indices):
            raise UserError(f"--gpus {gpus!r}: expected distinct GPU indices separated by commas, e.g. --gpus 0,1,2,3")
        if device == "cpu":
            raise UserError("--gpus puts one worker on each GPU, but --device is cpu: drop --device cpu, or use "
                            "--workers N for CPU workers")
        visible = visible_gpus()
        missing = [g for g in indices if int(g) >= len(visible)]
        if missing:
            have = ",".join(map(str, range(len(visible))))
            raise UserError(f"--gpus {gpus}: there is no GPU {missing[0]} here (torch sees {len(visible)}); "
                            + (f"use --gpus {have}" if visible else "drop --gpus") + ", or --workers N for CPU workers")
        return [(f"gpu {g}", {"CUDA_VISIBLE_DEVICES": visible[int(g)]}) for g in indices]
    if workers is None or workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    return [(f"worker {i}", {}) for i in range(workers)]


def visible_gpus() -> list[str]:
    """The CUDA_VISIBLE_DEVICES entry of each GPU this process sees, in torch's numbering."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [g.strip() for g in listed.split(",")][:count] if listed else [str(i) for i in range(count)]


def worker_command(study_name: str, settings: SearchSettings) -> list[str]:
    """`elalora-auto worker` on the study with this process's local choices (the rest is stored in the study)."""
    args = ["--study", study_name, "--workdir", str(settings.workdir), "--device", settings.device, "--quiet",
            "--no-summary"]
    if settings.timeout is not None:
        args += ["--timeout", str(settings.timeout)]
    if settings.no_tracking:
        args.append("--no-tracking")
    elif settings.tracking_uri:
        args += ["--tracking-uri", settings.tracking_uri]
    return [sys.executable, "-m", "elalora_auto.cli", "worker", *args]


def launch_workers(study_name: str, settings: SearchSettings, slots: Sequence[tuple[str, Mapping[str, str]]],
                   echo: Callable[[str], None] = print) -> None:
    """Run one `worker` per slot on the study until all exit; their lines are echoed with the slot's label.
    Ctrl-C is forwarded (then raised as `Interrupted` with the re-queued trials); a child that fails makes this
    raise a UserError once the others have finished."""
    base, storage = worker_command(study_name, settings), resolve_storage(settings.storage)
    env = {**os.environ, **({STORAGE_ENV: storage} if storage else {})}
    children = [subprocess.Popen(base, env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, bufsize=1, start_new_session=True) for _, extra in slots]
    reruns: list[int] = []
    lock = threading.Lock()
    readers = [threading.Thread(target=_relay, args=(child, label, echo, reruns, lock), daemon=True)
               for child, (label, _) in zip(children, slots)]
    for reader in readers:
        reader.start()
    main = threading.current_thread() is threading.main_thread()  # signals can be set there only
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    if main:
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the children too
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        if main:
            signal.signal(signal.SIGINT, lambda *_: _kill_all(children))
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            child.wait()
        for reader in readers:
            reader.join()
        raise Interrupted(reruns) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for reader in readers:
        reader.join()
    failed = [f"{label} exited with {code}" for (label, _), code in zip(slots, codes) if code != 0]
    if failed:
        raise UserError(f"{'; '.join(failed)} (its lines above say why); run the same command again to resume")


def _relay(child: subprocess.Popen, label: str, echo: Callable[[str], None], reruns: list[int],
           lock: threading.Lock) -> None:
    """Echo a child's lines with its label; its own interrupted line only adds to `reruns` (the parent prints
    one for all)."""
    assert child.stdout is not None
    for line in child.stdout:
        match = _RERUN.match(line)
        with lock:
            if match:
                reruns.extend(int(n) for n in match.group(1).split(","))
            elif not line.startswith("interrupted"):
                echo(f"[{label}] {line.rstrip()}")


def _kill_all(children: Sequence[subprocess.Popen]) -> None:
    """The second Ctrl-C: stop every child now and exit."""
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    print("interrupted again: workers killed, exiting now", file=sys.stderr, flush=True)
    os._exit(130)
