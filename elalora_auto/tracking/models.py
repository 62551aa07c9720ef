"""Front trials' adapters as MLflow models, and `export --register`: the Model Registry and serving just work.

A model is MLflow's pyfunc flavour over `adapter_model.py` (models from code): the trial's stock PEFT adapter
and tokenizer as artifacts, the base model named in its config. MLflow's transformers flavour would need a
pipeline of the base model saved (or fetched from the hub) with every adapter; this one loads offline with
stock transformers + peft. A local base model is referenced by its path, so it must stay where the study
found it (a hub id works anywhere).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

from elalora_auto.errors import UserError
from elalora_auto.tracking.runs import TAG_ROLE, TAG_STUDY, TAG_TRIAL, RunIndex

MODEL_CODE = Path(__file__).with_name("adapter_model.py")
TAG_MODEL = "elalora.model_id"  # on a trial's run: its logged model, so a resume never logs it twice
MODEL_NAME = "model"


def model_config(trial_dir: Path) -> dict[str, Any]:
    """What the pyfunc needs besides its artifacts: base model, labels, text columns, max length."""
    from elalora_auto.tasks import resolve_task
    from elalora_auto.trial import TrialSpec

    spec = TrialSpec.from_yaml(trial_dir / "config.yaml")
    task = resolve_task(spec.task, spec.custom)
    adapter_config = json.loads((trial_dir / "adapter" / "adapter_config.json").read_text())
    return {"base_model": adapter_config.get("base_model_name_or_path") or spec.model,
            "num_labels": task.num_labels, "label_names": list(task.label_names),
            "text_columns": list(task.text_columns), "max_length": spec.training.max_length}


def log_trial_model(client: Any, run: Any, trial_dir: Path) -> str:
    """Log the trial's adapter as an MLflow model of its run (once: later calls return the same model id)."""
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelStatus

    if TAG_MODEL in run.data.tags:
        return run.data.tags[TAG_MODEL]
    config = model_config(trial_dir)
    logged = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run.info.run_id,
                                        tags={TAG_TRIAL: run.data.tags.get(TAG_TRIAL, "")})
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow suggests an input example and type hints; the signature is given, so those are noise here.
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        tokenizer = _tokenizer_dir(trial_dir / "adapter", config["base_model"], Path(tmp) / "tokenizer")
        mlflow.pyfunc.save_model(
            Path(tmp) / "model", python_model=str(MODEL_CODE), model_config=config,
            artifacts={"adapter": str(trial_dir / "adapter"), "tokenizer": str(tokenizer)},
            signature=_signature(config["text_columns"]), pip_requirements=_requirements())
        client.log_model_artifacts(logged.model_id, str(Path(tmp) / "model"))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.set_tag(run.info.run_id, TAG_MODEL, logged.model_id)
    return logged.model_id


def log_front_models(client: Any, study: Any, experiment_id: str, trials_dir: Path) -> list[str]:
    """The front trials' adapters as MLflow models of their runs."""
    from elalora_auto.results import front, study_rows

    ids = []
    for row in front(study_rows(study, trials_dir)):
        trial_dir = trials_dir / str(row.number)
        runs = client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = 'trial' and tags.`{TAG_TRIAL}` = "
                                                   f"'{row.number}' and tags.`{TAG_STUDY}` = '{study.study_name}'")
        if runs and (trial_dir / "adapter" / "adapter_config.json").is_file() and (trial_dir / "config.yaml").is_file():
            ids.append(log_trial_model(client, runs[0], trial_dir))
    return ids


def check_model_name(name: str) -> str:
    """A Model Registry name as MLflow accepts it (not empty, no '/' or ':'), checked before `export` writes."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException:
        raise UserError(f"--register {name!r}: expected a registered model name (not empty, without '/' or ':')"
                        ) from None
    return name


def register_trial(tracking_uri: str, study_name: str, number: int, trial_dir: Path, name: str) -> str:
    """`export --register NAME`: the trial's model (logged now if it was not) as a new version of NAME in the
    Model Registry; returns its URI `models:/NAME/VERSION`."""
    from mlflow.exceptions import MlflowException

    index = RunIndex(tracking_uri)
    client = index.client
    run = client.get_run(index.trial_run_id(study_name, number))
    model_id = log_trial_model(client, run, trial_dir)
    try:
        client.create_registered_model(name, description=f"ElaLoRA adapters of study {study_name}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = client.get_logged_model(model_id).artifact_location  # not models:/ID: MLflow resolves that globally
    version = client.create_model_version(name, source=source, run_id=run.info.run_id,
                                          model_id=model_id, description=f"trial {number} of study {study_name}")
    return f"models:/{name}/{version.version}"


def _tokenizer_dir(adapter_dir: Path, base_model: str, out: Path) -> Path:
    """The tokenizer saved beside the adapter, else the base model's, saved to `out`."""
    if (adapter_dir / "tokenizer_config.json").is_file():
        return adapter_dir
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)
    return out


def _signature(text_columns: list[str]) -> Any:
    """Input: one string column per text field of the task (what `predict` reads)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", column) for column in text_columns]))


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", "torch", "transformers", "peft")]
