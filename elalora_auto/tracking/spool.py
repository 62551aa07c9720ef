"""Events from the training thread to MLflow without the training thread ever waiting for MLflow.

`Spool.put` only enqueues (microseconds). A writer thread appends each record as one JSON line to this process's
spool file (local disk) and hands it to an applier thread, which sends it to MLflow. When MLflow fails and a
probe says the store itself is down (locked, unreachable, not yet migrated), the applier keeps the record and
retries with backoff; everything after it waits in order, in memory and in the file. So a slow or dead store
costs the trial nothing, and a process killed meanwhile leaves its unsent records in its spool file: the next
tracker on this host claims the files of dead processes and replays them before its own events.

Records must be idempotent (MLflow drops a metric logged twice with the same timestamp; params, tags, run
status and artifacts are set, not appended), because a record sent just before a kill is replayed again.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import psutil

log = logging.getLogger(__name__)

Record = dict[str, Any]
_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # between retries while the store is down


class Spool:
    """A durable, ordered hand-off of records to `apply`; `probe` raises when the store is down."""

    def __init__(self, directory: str | Path, apply: Callable[[Record], None], probe: Callable[[], None]) -> None:
        self.directory = Path(directory)
        self.owner = f"{socket.gethostname()}-{os.getpid()}"
        self.path = self.directory / f"{self.owner}.jsonl"
        self.apply, self.probe = apply, probe
        self.down_since: float | None = None  # monotonic time the store was found down; None while it answers
        self.replayed = 0
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: deque[Record] = deque()
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._queued = 0  # put and not yet applied (or dropped)
        self._unwritten = 0  # put and not yet in the spool file
        self._file: Any = None
        threading.Thread(target=self._write_loop, name="mlflow-spool", daemon=True).start()
        threading.Thread(target=self._apply_loop, name="mlflow-apply", daemon=True).start()

    # -- the training thread's side ---------------------------------------------------------------------
    def put(self, record: Record) -> None:
        with self._cond:
            self._queued += 1
            self._unwritten += 1
        self._inbox.put(record)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every record is applied (True), or until the store is down or `timeout_s` passed (False;
        the records stay spooled). Waiting for the local file write is always done first."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queued:
                left = deadline - time.monotonic()
                if left <= 0 or (self.down_since is not None and not self._unwritten):
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    @property
    def backlog(self) -> int:
        """Records not yet applied to MLflow."""
        with self._cond:
            return self._queued

    # -- writer thread ----------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        first = self._inbox.get()  # a tracker that never hears an event writes nothing, not even its folder
        for record in self._claim_dead_spools():
            self._append(record, put=False)
        self._append(first)
        while True:
            self._append(self._inbox.get())

    def _append(self, record: Record, put: bool = True) -> None:
        line = json.dumps(record, default=str)
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        with self._cond:  # one lock with the applier's truncation, so no written line is truncated unsent
            self._file.write(line + "\n")
            self._file.flush()
            self._pending.append(json.loads(line))  # applied as replayed: live and replayed records look alike
            self._unwritten -= put
            self._cond.notify_all()

    def _claim_dead_spools(self) -> list[Record]:
        """Records left by dead processes of this host (oldest file first); their files are taken over."""
        host = socket.gethostname()
        records: list[Record] = []
        if not self.directory.is_dir():
            return records
        for path in sorted(self.directory.glob(f"{host}-*.jsonl"), key=lambda p: p.stat().st_mtime):
            pid = path.stem.rpartition("-")[2]
            if path == self.path or not pid.isdigit() or psutil.pid_exists(int(pid)):
                continue
            claimed = path.with_suffix(f".claimed-{os.getpid()}")
            try:
                path.rename(claimed)  # atomic: two new trackers never both replay one file
            except FileNotFoundError:
                continue
            records += _parse(claimed.read_text(encoding="utf-8").splitlines())
            claimed.unlink()
        if records:
            log.warning("replaying %d MLflow events left in the spool by ended processes", len(records))
        with self._cond:
            self._queued += len(records)
            self.replayed += len(records)
        return records

    # -- applier thread ---------------------------------------------------------------------------------
    def _apply_loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                record = self._pending[0]
            try:
                self.apply(record)
            except Exception as exc:  # noqa: BLE001 - tracking must never fail a trial
                if self._store_down(exc):
                    self._wake.wait(_BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)])
                    failures += 1
                    continue
                log.warning("MLflow tracking skipped a %s event: %s: %s", record.get("kind"), type(exc).__name__,
                            exc, exc_info=log.isEnabledFor(logging.DEBUG))
            if self.down_since is not None:
                log.warning("the MLflow store answers again after %.0f s; sending the spooled events",
                            time.monotonic() - self.down_since)
                self.down_since = None
            failures = 0
            self._done()

    def _done(self) -> None:
        with self._cond:
            self._pending.popleft()
            self._queued -= 1
            if not self._pending and not self._unwritten:
                self._file.truncate(0)  # everything written is applied: nothing left to replay
                self._file.seek(0)
            self._cond.notify_all()

    def _store_down(self, exc: Exception) -> bool:
        """Whether a failure is the store's (keep the record, retry) rather than the record's (drop it)."""
        try:
            self.probe()
        except Exception as probe_exc:  # noqa: BLE001 - any probe failure means the store is not usable
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.warning("the MLflow store is not answering (%s: %s); events are kept in %s and sent when it "
                            "answers", type(probe_exc).__name__, (str(probe_exc).splitlines() or [""])[0][:200], self.path)
                with self._cond:
                    self._cond.notify_all()
            return True
        return False


def _parse(lines: list[str]) -> list[Record]:
    """The records of a spool file; a last line a kill cut short is skipped."""
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
