"""Where library output goes: warnings and log lines of the libraries to a log file in the workdir, not the terminal.

Why: a user of `search` or `demo` reads progress bars and one line per trial. transformers' FutureWarnings, MLflow's
schema-migration lines, Optuna's "A new study created" and the "Writing model shards" bar are for whoever debugs a
run, so they land in WORKDIR/elalora-auto.log; `--verbose` (or ELALORA_AUTO_VERBOSE=1, which worker processes
inherit) shows them on the terminal as well. The project's own warnings (tracking failures, ...) stay on the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from elalora_auto.workdir import Workdir

VERBOSE_ENV = "ELALORA_AUTO_VERBOSE"
# The loggers whose records leave the terminal; "py.warnings" carries Python warnings (logging.captureWarnings).
LIBRARY_LOGGERS = ("optuna", "transformers", "mlflow", "alembic", "peft", "datasets", "huggingface_hub", "urllib3",
                   "filelock", "py.warnings")
OWN_LOGGER = "elalora_auto"


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (a test's capture, a redirected stream)."""

    def __init__(self, level: int) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


class _LazyFile(logging.FileHandler):
    """A log file made (with its folder) at its first record only: a command that logs nothing writes nothing."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, delay=True, encoding="utf-8")

    def _open(self):  # type: ignore[override]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def is_verbose(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _quiet_library_handlers() -> None:
    """Libraries that attach their own terminal handler at import are imported now and made to propagate instead."""
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # for an MLflow imported later in this process
    import optuna
    from transformers.utils import logging as hf_logging

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


@contextmanager
def library_output(workdir: str | Path, verbose: bool = False) -> Iterator[Path]:
    """Within: library records and warnings go to WORKDIR/elalora-auto.log (and stderr when verbose); restored after."""
    verbose = is_verbose(verbose)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    _quiet_library_handlers()
    from transformers.utils import logging as hf_logging

    path = Workdir(workdir).log
    file_handler = _LazyFile(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"))
    shown = _Stderr(logging.INFO if verbose else logging.WARNING)
    libraries = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(lg, lg.handlers[:], lg.propagate, lg.level) for lg in libraries]
    for lg in libraries:
        lg.handlers = [file_handler, *([shown] if verbose else [])]
        lg.propagate = False
        if lg.level == logging.NOTSET:  # a library's own verbosity (transformers: warnings) stays as it set it
            lg.setLevel(logging.INFO)
    own = logging.getLogger(OWN_LOGGER)
    own.addHandler(file_handler)
    own.addHandler(shown)
    bars = hf_logging.is_progress_bar_enabled()
    if not verbose:
        hf_logging.disable_progress_bar()
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield path
    finally:
        logging.captureWarnings(False)
        if bars:
            hf_logging.enable_progress_bar()
        own.removeHandler(file_handler)
        own.removeHandler(shown)
        for lg, handlers, propagate, level in saved:
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
        file_handler.close()
