"""Events instead of sleeps: wait until some thread or process is blocked on a study's trial gate, as the kernel
(/proc/locks lists each waiting flock request with "->") or PostgreSQL (pg_locks, granted = false) records it.
Once seen, the waiter cannot have passed the gate before it is released, so a test checks what happens while
it waits without racing; a gate that does not block never shows a waiter and the wait fails."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

WAIT_S = 60  # only a failing test waits this long


def _flock_waiters(path: Path) -> int:
    inode = str(os.stat(path).st_ino)
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line.split() and line.split()[-3].rpartition(":")[2] == inode)


def _advisory_waiters(engine: Any) -> int:
    from sqlalchemy import text

    with engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                       "AND NOT granted")).scalar()


def wait_until_blocked(gate: Any, waiters: int = 1) -> None:
    """Return once `waiters` requests wait on the gate (a file gate has .path, PostgreSQL's has .engine)."""
    count = (lambda: _flock_waiters(gate.path)) if hasattr(gate, "path") else (lambda: _advisory_waiters(gate.engine))
    deadline = time.monotonic() + WAIT_S
    while count() < waiters:
        assert time.monotonic() < deadline, f"nothing blocked on the trial gate within {WAIT_S} s"
        time.sleep(0.05)
