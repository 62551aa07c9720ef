"""The one owner of the runs folder's layout: every path a command reads or writes under WORKDIR is named here.

Why: the search writes, and `status`, `report`, `export`, `ui`, the tracker and the demo read back, the same files;
spelled out in one place, a change of layout is one edit and no reader looks in an old place.

    WORKDIR/
      optuna-journal.log       the study storage when no --storage is given (search.storage)
      mlflow.db, mlartifacts/  the MLflow store when no --tracking-uri is given
      mlflow-spool/            tracking records not yet in MLflow (tracking.spool)
      trials/STUDY/N/          one trial's folder: config, result, rank map, adapter
      reports/STUDY/           `report`'s plots and index.html
      cache/                   tokenised datasets
      elalora-auto.log         the libraries' warnings and log lines (output.py)
      demo-model/, demo-data/  the demo's tiny model and task files
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT = "elalora_runs"
JOURNAL_FILE = "optuna-journal.log"
LOG_FILE = "elalora-auto.log"


@dataclass(frozen=True)
class Workdir:
    """Paths under one runs folder; nothing is created here (the writer of each file makes its folder)."""

    root: Path

    def __init__(self, root: str | Path | None = None) -> None:
        object.__setattr__(self, "root", Path(root if root is not None else DEFAULT))

    @property
    def journal(self) -> Path:
        return self.root / JOURNAL_FILE

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    def tracking_uri(self) -> str:
        """The store that needs no server: an SQLite file in the workdir (absolute, so any cwd finds it)."""
        return f"sqlite:///{self.mlflow_db.resolve()}"

    @property
    def spool(self) -> Path:
        return self.root / "mlflow-spool"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @classmethod
    def of_trial(cls, trial_dir: str | Path) -> Workdir | None:
        """The workdir a WORKDIR/trials/STUDY/N folder lies in (None for a folder too shallow to be one)."""
        parents = Path(trial_dir).parents
        return cls(parents[2]) if len(parents) > 2 else None

    def trials(self, study: str) -> Path:
        return self.root / "trials" / study

    def trial(self, study: str, number: int) -> Path:
        return self.trials(study) / str(number)

    def reports(self, study: str) -> Path:
        return self.root / "reports" / study

    @property
    def demo_model(self) -> Path:
        return self.root / "demo-model"

    @property
    def demo_data(self) -> Path:
        return self.root / "demo-data"

    @property
    def demo_export(self) -> Path:
        return self.root / "export"
