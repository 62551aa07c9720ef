"""Where a study's MLflow store lives, and how a process reaches it in bounded time and without racing others.

Two hazards are handled here, once per process, before anything is logged:
- MLflow creates and migrates an SQLite store's schema on first open. Several processes opening a fresh store at
  once race on that migration (`table _alembic_tmp_experiments already exists`) and leave it broken for good.
  `prepare_store` does the creation under a file lock beside the database, so exactly one process migrates.
- MLflow's HTTP client retries a dead server for minutes (7 retries, exponential backoff, 120 s timeouts).
  `bound_http_calls` sets short limits for this process (the user's own environment values win).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from elalora_auto.errors import UserError
from elalora_auto.workdir import Workdir

# Per MLflow HTTP call: at most ~3 attempts of <= 5 s each, instead of MLflow's default of several minutes.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
}
_LOCK_TIMEOUT_S = 120.0


def default_tracking_uri(workdir: str | Path) -> str:
    """The store that needs no server: WORKDIR/mlflow.db (the layout is workdir.py's)."""
    return Workdir(workdir).tracking_uri()


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of an `sqlite:///` URI, else None."""
    return Path(tracking_uri[len("sqlite:///"):]).resolve() if tracking_uri.startswith("sqlite:///") else None


def check_tracking_uri(uri: str, flag: str = "--tracking-uri") -> str:
    """A tracking URI MLflow can open, by scheme and form, checked before any work: past this point a bad one
    fails only inside the tracker's thread, where the search goes on untracked with warnings.

    The schemes are MLflow's own (its tracking-store registry, plugins included); database URLs follow the
    storage rules (`sqlite:///FILE`, not `sqlite:x.db` nor an in-memory database); a server needs a host.
    """
    from urllib.parse import urlparse

    if not uri.strip():
        raise UserError(f"{flag} is empty: give sqlite:///PATH/mlflow.db or http://HOST:PORT, or leave it out "
                        "for WORKDIR/mlflow.db")
    known = _store_schemes()
    if uri in known:  # a bare profile name: databricks, databricks-uc, uc
        return uri
    scheme = "" if re.match(r"^[A-Za-z]:[\\/]", uri) else urlparse(uri).scheme.lower()
    if scheme.partition("+")[0] not in known:
        raise UserError(f"{flag} {uri!r}: MLflow has no tracking store for '{scheme}:' URIs; use sqlite:///PATH.db, "
                        f"http://HOST:PORT or a database URL (MLflow knows: {', '.join(sorted(k for k in known if k))})")
    if scheme in ("http", "https") and not urlparse(uri).netloc:
        raise UserError(f"{flag} {uri!r} names no server: write {scheme}://HOST:PORT")
    if scheme in ("", "file"):
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

        if not MLFLOW_ALLOW_FILE_STORE.get():
            raise UserError(f"{flag} {uri!r} is a folder store, which this MLflow refuses: use "
                            f"sqlite:///{Path(uri.removeprefix('file://')) / 'mlflow.db'} (or set "
                            "MLFLOW_ALLOW_FILE_STORE=true)")
    from mlflow.store.db.db_types import DATABASE_ENGINES

    from elalora_auto.search.settings import check_storage_url

    if scheme.partition("+")[0] in DATABASE_ENGINES:
        check_storage_url(uri, flag, "leave it out for WORKDIR/mlflow.db")
    path = sqlite_path(uri)
    if path is not None and (path.is_dir() or any(parent.is_file() for parent in path.parents)):
        raise UserError(f"{flag} {uri!r}: not a database file path (a folder, or under a file); name a file, "
                        "e.g. sqlite:///runs/mlflow.db")
    return uri


def _store_schemes() -> set[str]:
    """The URI schemes this MLflow (with its plugins) has a tracking store for."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return set(_tracking_store_registry._registry)


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifacts beside an SQLite store (WORKDIR/mlartifacts); remote stores choose their own.

    MLflow would otherwise default an SQLite store's artifacts to ./mlruns under whatever cwd a worker has.
    """
    path = sqlite_path(tracking_uri)
    return None if path is None else (path.parent / "mlartifacts").as_uri()


def bound_http_calls() -> None:
    """Short HTTP timeouts and few retries for this process's MLflow calls (values already set are kept).

    Also no artifact progress bars: logging a trial's model copies its artifacts, and the bars would interleave
    with the search's own one-line-per-trial output.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def prepare_store(tracking_uri: str) -> None:
    """Create and migrate the MLflow store once, under a lock, before any worker logs to it.

    Call it in the parent process before starting workers (`search --workers N`); every tracker calls it again on
    first use, which costs one lock and a schema check once the store exists. Stores behind a server (`http://`)
    are migrated by that server; database URIs other than SQLite are migrated here under no file lock (their
    server serialises DDL).
    """
    bound_http_calls()
    path = sqlite_path(tracking_uri)
    if path is None:
        if "://" in tracking_uri and not tracking_uri.startswith(("http://", "https://", "databricks", "file:")):
            _open_stores(tracking_uri)
        return
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=_LOCK_TIMEOUT_S):
        _open_stores(tracking_uri)


def _open_stores(tracking_uri: str) -> None:
    """Opening MLflow's SQL stores creates their tables and runs pending migrations (tracking, then registry)."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for engine_owner in (SqlAlchemyStore(tracking_uri, artifact_root_for(tracking_uri) or "./mlruns"),
                         RegistryStore(tracking_uri)):
        engine_owner.engine.dispose()  # the lock's holder keeps no connection the others would wait on


def open_client(tracking_uri: str) -> Any:
    """An MlflowClient on a prepared store, with this process's HTTP limits in place."""
    prepare_store(tracking_uri)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)
