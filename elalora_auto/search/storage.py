"""Where a study lives: the Optuna storage, opened once per process and kept (the worker uses its public
methods, never a study's private one).

Storage (`open_storage`):
- Default: an Optuna JournalStorage file, WORKDIR/optuna-journal.log. It needs no server; it is append-only, so
  a crash loses at most the line being written and a restart replays the log (the study survives); several
  processes on one machine share it through a file lock; and, unlike SQLite, `enqueue_trial` stays correct
  with parallel workers (a waiting trial is popped by exactly one of them).
- `--storage postgresql://...` (any SQLAlchemy URL) for many workers on many machines: RDBStorage with a
  heartbeat, so a trial whose worker died is marked FAIL after the grace period and re-queued by
  RetryHeartbeatStaleTrialCallback, up to MAX_RERUNS times (a configuration whose worker keeps dying is likely
  what kills it, e.g. out of memory). Optuna checks for such stale trials at the start of every trial of every
  live worker (`fail_stale_trials`), so a surviving worker picks up the dead one's trial. The timing is the
  study setting `heartbeat: {interval_s, grace_s}`, stored with the study so that every worker uses the same
  values (a worker whose grace period were shorter than another's heartbeat interval would fail live trials).
  The `search` command creates the study; `worker` only loads it. Processes opening a fresh database at once
  collide in its schema creation, and the losers retry (`_racing_schema_creation`).

Budget: `trial_gate` is one lock per study (a file lock beside a journal or SQLite file, PostgreSQL's advisory
lock), held by a worker from its budget check until the trial it allowed exists, so workers never overshoot it.

Secrets: a URL's password never leaves the process. Messages, events and the settings stored in the study
carry `redact(uri)`; every process gets the full URL from its own `--storage` flag or from the environment
variable ELALORA_STORAGE (`resolve_storage`), so a password need not appear on a command line either.

A journal whose last line is unterminated (what a kill during a write leaves) is repaired on open, under the
journal's own lock: the torn line is dropped (it was never acknowledged to anyone) and a one-line notice says so.
Left in place, Optuna would skip it on replay and append the next record onto it, corrupting the file for good.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from elalora_auto.errors import UserError
from elalora_auto.search.settings import HeartbeatSettings
from elalora_auto.workdir import Workdir

STORAGE_ENV = "ELALORA_STORAGE"


def resolve_storage(uri: str | None) -> str | None:
    """The storage a process uses: its `--storage` value, else $ELALORA_STORAGE, else None (the journal)."""
    return uri or os.environ.get(STORAGE_ENV) or None


def storage_uri(settings_storage: str | None, workdir: str | Path) -> str:
    """The storage for messages and events, password hidden (the journal file as its path)."""
    uri = resolve_storage(settings_storage)
    return redact(uri) if uri and "://" in uri else uri or str(Workdir(workdir).journal.resolve())


def redacted_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they may be stored or shown: the storage URL without its password."""
    storage = settings.get("storage")
    return {**settings, "storage": redact(storage) if storage and "://" in storage else storage}


def open_storage(uri: str | None, workdir: str | Path, create: bool = True,
                 heartbeat: HeartbeatSettings | None = None) -> Any:
    """JournalStorage on WORKDIR/optuna-journal.log by default (or a given *.log path), else RDBStorage with
    `heartbeat`'s timing (default 60 s / 180 s; pass the study's own to run trials). Optuna is imported once the
    storage is known to exist: `status` on a missing one answers without it."""
    heartbeat, uri = heartbeat or HeartbeatSettings(), resolve_storage(uri)
    if uri is None or "://" not in uri:
        path = journal_path(uri, workdir)
        if not path.exists() and not create:
            raise UserError(f"no study storage at {path}; run `elalora-auto search` first or pass --storage/--workdir")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _InterruptSafeLock(str(path))
        repair_journal(path, lock)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat, retry
            return _racing_schema_creation(lambda: RDBStorage(
                _with_installed_driver(uri),
                heartbeat_interval=heartbeat.interval_s,
                grace_period=heartbeat.grace_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RERUNS),
            ))
    except ImportError as exc:
        raise UserError(f"storage {redact(uri)}: missing driver ({exc}); for PostgreSQL: pip install psycopg2-binary") from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError, ...; optuna wraps none of them
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open storage {redact(uri)}: {first}") from None


def journal_path(uri: str | None, workdir: str | Path) -> Path:
    """The journal file of a storage that is not a URL: the given *.log path, else WORKDIR/optuna-journal.log."""
    return Path(uri) if uri else Workdir(workdir).journal


class _FileGate:
    """An exclusive flock on a file next to the study's own file (processes on one machine, as that file)."""

    def __init__(self, path: Path) -> None:
        self.path, self._handle = path, None

    def acquire(self) -> None:
        import fcntl

        handle = self.path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        self._handle = handle

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing the file drops its lock


class _AdvisoryGate:
    """PostgreSQL's session advisory lock keyed by the study, on a connection of its own (workers on any
    machine; the server drops the lock when a dead worker's connection goes)."""

    def __init__(self, engine: Any, study_name: str) -> None:
        import hashlib

        digest = hashlib.sha256(f"elalora-auto trial gate {study_name}".encode()).digest()
        self.engine, self.key, self._connection = engine, int.from_bytes(digest[:8], "big", signed=True), None

    def _run(self, connection: Any, function: str) -> None:
        from sqlalchemy import text

        try:
            connection.execute(text(f"SELECT {function}(:key)"), {"key": self.key})
        except BaseException:
            connection.invalidate()  # a connection holding the lock in an unknown state must not be pooled
            raise

    def acquire(self) -> None:
        connection = self.engine.connect()
        self._run(connection, "pg_advisory_lock")
        self._connection = connection

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._run(connection, "pg_advisory_unlock")
            connection.close()


class _NoGate:
    """Storages with no lock to share (MySQL, other servers)."""

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


class TrialGate(Protocol):
    """What `trial_gate` returns: a blocking `acquire` and a `release` that is a no-op when not held."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...


def trial_gate(uri: str | None, workdir: str | Path, storage: Any, study_name: str) -> TrialGate:
    """The lock every process on a study holds from "is the budget reached?" until the trial that answer allowed
    exists (`acquire` blocks; `release` is a no-op when not held).

    Without it, two workers can both see 5 of 6 trials and both create a sixth (a seventh trial ran, in CI).
    The lock lives where the study does: a file lock next to the journal or SQLite file, PostgreSQL's advisory
    lock. Other servers (MySQL) get none, and the budget may then be overshot by a trial per extra worker.
    """
    uri = resolve_storage(uri)
    if uri is None or "://" not in uri:
        path = journal_path(uri, workdir)
        return _FileGate(path.with_name(path.name + ".gate"))
    dialect, database = storage.engine.dialect.name, storage.engine.url.database
    if dialect == "sqlite" and database not in (None, "", ":memory:"):
        return _FileGate(Path(database).with_name(Path(database).name + ".gate"))
    return _AdvisoryGate(storage.engine, study_name) if dialect == "postgresql" else _NoGate()


MAX_RERUNS = 3  # how often a trial whose worker died is re-queued (a re-run killed again is re-queued too)


class SigintHold:
    """Ctrl-C held back over a stretch of code that must not be cut short, and delivered when it ends.

    `start` puts a recorder in place of the SIGINT handler; `release` puts the handler back and, if a SIGINT
    arrived meanwhile, hands it over (raising KeyboardInterrupt for Python's default handler). Both are no-ops
    off the main thread, where signals cannot be handled, and `release` is one when nothing is held. Holds nest:
    an inner hold's delivery goes to the outer one's recorder.
    """

    def __init__(self) -> None:
        self._active = self._held_back = False
        self._previous: Any = None

    def start(self) -> None:
        if not self._active and threading.current_thread() is threading.main_thread():
            self._previous, self._active = signal.signal(signal.SIGINT, self._record), True

    def _record(self, signum: int, frame: Any) -> None:
        self._held_back = True

    def release(self) -> None:
        if not self._active:
            return
        previous, self._active = self._previous, False
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if self._held_back:
            self._held_back = False
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous in (None, signal.SIG_DFL):
                raise KeyboardInterrupt


class _InterruptSafeLock:
    """Optuna's symlink lock on the journal, with Ctrl-C held back from taking the lock to releasing it.

    A KeyboardInterrupt that lands inside the lock's release (between its rename and its unlink) leaves the lock
    half released: the next write then fails with FileNotFoundError and a traceback. Every journal write happens
    under this lock, so holding SIGINT back here also keeps a record from being cut short by Ctrl-C; the signal is
    delivered, to whatever handler was in place, as soon as the lock is released.
    """

    def __init__(self, path: str) -> None:
        from optuna.storages.journal import JournalFileSymlinkLock

        self._lock = JournalFileSymlinkLock(path)
        self._hold = SigintHold()

    def acquire(self) -> bool:
        self._hold.start()
        try:
            return self._lock.acquire()
        except BaseException:
            self._hold.release()
            raise

    def release(self) -> None:
        try:
            self._lock.release()
        finally:
            self._hold.release()


def _racing_schema_creation(open_rdb: Callable[[], Any], attempts: int = 6) -> Any:
    """Open an RDBStorage, retrying while other processes create its tables on a fresh database.

    RDBStorage creates its schema on first open; processes doing so at once on PostgreSQL collide in the catalog
    ("duplicate key value violates unique constraint pg_type_typname_nsp_index"). The loser retries after the
    winner has committed, when the tables exist and creation is a no-op.
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts - 1):
        try:
            return open_rdb()
        except (IntegrityError, ProgrammingError):
            time.sleep(0.3 * (attempt + 1) + random.random() * 0.3)
    return open_rdb()


def repair_journal(path: Path, lock: Any) -> int:
    """Drop an unterminated last line (a write cut short by a crash) under `lock`; returns the bytes dropped.

    Checked without the lock first (the common case costs one read of the last byte); Optuna writes each batch
    of records under the same lock, so with the lock held an unterminated tail is never a write in progress.
    """
    if not _torn(path):
        return 0
    lock.acquire()
    try:
        if not _torn(path):
            return 0
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        lock.release()
    print(f"note: repaired {path}: dropped an unterminated last line ({len(data) - keep} bytes) left by an "
          "interrupted write", file=sys.stderr)
    return len(data) - keep


def _torn(path: Path) -> bool:
    """Whether the file exists, is non-empty and does not end with a newline."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _with_installed_driver(uri: str) -> str:
    """postgresql:// with whichever PostgreSQL driver is installed (SQLAlchemy 2.1 assumes psycopg 3; this
    project's `postgres` extra installs psycopg2)."""
    import importlib.util

    scheme, sep, rest = uri.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2{sep}{rest}"
    return uri


def redact(uri: str) -> str:
    """The URL with its password hidden, for messages (SQLAlchemy's own rendering)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL: show no part of it that could hold a password
        return uri.partition("://")[0] + "://..."


def load_study(name: str | None, storage: Any) -> Any:
    """An existing study; with no name, the only study in the storage."""
    import optuna

    names = optuna.get_all_study_names(storage=storage)
    if name is None:
        if len(names) != 1:
            raise UserError(f"pass --study NAME; studies in this storage: {', '.join(names) or 'none'}")
        name = names[0]
    if name not in names:
        raise UserError(f"no study {name!r} in this storage (studies: {', '.join(names) or 'none'}); "
                        "create it with `elalora-auto search`")
    return optuna.load_study(study_name=name, storage=storage)
