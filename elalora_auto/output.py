"""Where library output goes: warnings and log lines of the libraries to a log file in the workdir, not the terminal.

Why: a user of `search` or `demo` reads progress bars and one line per trial. transformers' FutureWarnings, MLflow's
schema-migration lines, Optuna's "A new study created" and the "Writing model shards" bar are for whoever debugs a
run, so they land in WORKDIR/elalora-auto.log; `--verbose` (or ELALORA_AUTO_VERBOSE=1, which worker processes
inherit) shows them on the terminal as well. The project's own warnings (tracking failures, ...) stay on the terminal.
A library with its own terminal handler (Optuna, transformers) is quieted when the command imports it, never imported
for it: importing both cost every command about 0.7 s, `status` included.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

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


class _AfterImport(importlib.abc.MetaPathFinder):
    """While installed, runs `actions[name](module)` right after module `name` is first imported, so a library is
    quieted when the command imports it, never imported for that alone (transformers and optuna cost most of a
    second: `--help`, `ui` and `status` on a missing store need neither, `status` on a study no transformers).
    Needed while a command imports either within `library_output`: each attaches its own terminal handler then."""

    def __init__(self, actions: dict[str, Callable[[ModuleType], None]]) -> None:
        self.actions = actions

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        action = self.actions.get(name)
        if action is None:
            return None
        spec = next((found for finder in sys.meta_path if finder is not self
                     and (found := getattr(finder, "find_spec", lambda *_: None)(name, path, target))), None)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            action(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


class _Libraries:
    """Optuna and transformers attach their own terminal handler when imported; transformers also has progress
    bars ("Writing model shards"). Each is quieted now if imported already, else right after its import."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.bars: ModuleType | None = None  # transformers' logging module, when this switched its bars off
        self.hook = _AfterImport({"optuna.logging": self.quiet, "transformers.utils.logging": self.quiet})

    def quiet(self, logs: ModuleType) -> None:
        """`logs`: optuna.logging or transformers.utils.logging. Its terminal handler goes for good, and its records
        propagate once `library_output` ends; within, they go to the handlers it set (propagation kept off)."""
        root = logging.getLogger(logs.__name__.partition(".")[0])
        within = root.propagate
        logs.disable_default_handler()
        logs.enable_propagation()
        root.propagate = within
        if hasattr(logs, "disable_progress_bar") and not self.verbose and logs.is_progress_bar_enabled():
            logs.disable_progress_bar()
            self.bars = logs

    def __enter__(self) -> None:
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # for an MLflow imported later in this process
        for name in self.hook.actions:
            if name in sys.modules:
                self.quiet(sys.modules[name])
        sys.meta_path.insert(0, self.hook)

    def __exit__(self, *exc: object) -> None:
        sys.meta_path.remove(self.hook)
        if self.bars is not None:
            self.bars.enable_progress_bar()


@contextmanager
def library_output(workdir: str | Path, verbose: bool = False) -> Iterator[Path]:
    """Within: library records and warnings go to WORKDIR/elalora-auto.log (and stderr when verbose); restored after."""
    verbose = is_verbose(verbose)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
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
    logging.captureWarnings(True)
    try:
        with _Libraries(verbose), warnings.catch_warnings():
            warnings.simplefilter("default")
            yield path
    finally:
        logging.captureWarnings(False)
        own.removeHandler(file_handler)
        own.removeHandler(shown)
        for lg, handlers, propagate, level in saved:
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
        file_handler.close()
