"""Where a study lives: the Optuna storage, opened once per process and kept (the worker uses its public
methods, never a study's private one).

Storage (`open_storage`):
- Default: an Optuna JournalStorage file, WORKDIR/optuna-journal.log. It needs no server; it is append-only, so
  a crash loses at most the line being written and a restart replays the log (the study survives); several
  processes on one machine share it through a file lock; and, unlike SQLite, `enqueue_trial` stays correct
  with parallel workers (a waiting trial is popped by exactly one of them).
- `--storage postgresql://...` (any SQLAlchemy URL) for many workers on many machines: RDBStorage with a
  heartbeat, so a trial whose worker died is marked FAIL after the grace period and re-queued once by
  RetryHeartbeatStaleTrialCallback. Optuna checks for such stale trials at the start of every trial of every
  live worker (`fail_stale_trials`), so a surviving worker picks up the dead one's trial. The timing is the
  study setting `heartbeat: {interval_s, grace_s}`, stored with the study so that every worker uses the same
  values (a worker whose grace period were shorter than another's heartbeat interval would fail live trials).
  The `search` command creates the study (several workers creating one study at once on a fresh database
  collide); `worker` only loads it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from elalora_auto.errors import UserError
from elalora_auto.search.settings import HeartbeatSettings

JOURNAL_FILE = "optuna-journal.log"


def storage_uri(settings_storage: str | None, workdir: str | Path) -> str:
    """The storage as a URI for messages and events (the journal file as its path)."""
    return settings_storage or str((Path(workdir) / JOURNAL_FILE).resolve())


def open_storage(uri: str | None, workdir: str | Path, create: bool = True,
                 heartbeat: HeartbeatSettings | None = None) -> Any:
    """JournalStorage on WORKDIR/optuna-journal.log by default (or a given *.log path), else RDBStorage with
    `heartbeat`'s timing (default 60 s / 180 s; pass the study's own to run trials)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    heartbeat = heartbeat or HeartbeatSettings()
    if uri is None or "://" not in uri:
        path = Path(uri) if uri else Path(workdir) / JOURNAL_FILE
        if not path.exists() and not create:
            raise UserError(f"no study storage at {path}; run `elalora-auto search` first or pass --storage/--workdir")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat, retry
            return RDBStorage(
                _with_installed_driver(uri),
                heartbeat_interval=heartbeat.interval_s,
                grace_period=heartbeat.grace_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except ImportError as exc:
        raise UserError(f"storage {redact(uri)}: missing driver ({exc}); for PostgreSQL: pip install psycopg2-binary") from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError, ...; optuna wraps none of them
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open storage {redact(uri)}: {first}") from None


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
