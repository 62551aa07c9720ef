"""Front adapters as MLflow models and `export --register`: the registered model loads back in a process that
never imports elalora_auto (mlflow + stock transformers + peft) and gives the trial's own logits."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import optuna
import torch
from mlflow import MlflowClient

from elalora_auto.cli import main
from elalora_auto.events import Event
from elalora_auto.search.storage import open_storage
from elalora_auto.tracking import MlflowTracker, default_tracking_uri
from elalora_auto.trial import TrialSpec, run_trial
from test_export import _our_logits, _write_sst2

STOCK_LOAD = textwrap.dedent("""
    import csv, json, sys
    import mlflow, pandas
    mlflow.set_tracking_uri(sys.argv[1])
    model = mlflow.pyfunc.load_model(sys.argv[2])
    rows = list(csv.DictReader(open(sys.argv[3]), delimiter="\\t"))
    out = model.predict(pandas.DataFrame({"sentence": [r["sentence"] for r in rows]}))
    print(json.dumps({"logits": out["logits"].tolist(), "labels": out["label"].tolist(),
                      "ours_loaded": sorted(m for m in sys.modules if m.startswith("elalora"))}))
""")


def test_front_adapters_are_mlflow_models_and_the_registered_one_loads_with_stock_libraries(tmp_path, tiny_model_dir):
    from elalora_auto.adapters import build_adapter

    workdir = tmp_path / "work"
    dev = _write_sst2(workdir / "data")
    study = optuna.create_study(study_name="mm", directions=["maximize", "minimize"],
                                storage=open_storage(None, workdir))
    study.set_user_attr("settings", {"task": "sst2", "method": "elalora", "primary_metric": "accuracy", "trials": 1})
    tracker = MlflowTracker(workdir=workdir)
    tracker(Event("study_start", 0, {"study": study, "study_name": "mm", "storage": "journal", "settings": {}}))
    trial = study.ask()
    spec = TrialSpec.from_dict({
        "task": "sst2", "model": str(tiny_model_dir), "method": "elalora", "params": {"r_init": 4, "b": 2, "k": 1, "t_init": 8, "t_final": 8, "delta_t": 8},
        "training": {"learning_rate": 2e-2, "max_steps": 40, "batch_size": 16, "max_length": 32, "seed": 1,
                     "device": "cpu"},
        "data": {"data_dir": str(workdir / "data"), "cache_dir": str(workdir / "cache")}})
    out = workdir / "trials" / "mm" / "0"
    kept = {}
    result = run_trial(spec, output_dir=out, progress=False, listeners=[
        lambda event: tracker(Event(event.kind, event.step, {**event.data, "study_name": "mm", "trial_number": 0}))],
        adapter_factory=lambda *args: kept.setdefault(0, build_adapter(*args)))
    study.tell(trial, [result.primary, result.trainable_params])
    tracker(Event("trial_finished", 0, {"study": study, "study_name": "mm", "trial_number": 0,
                                        "state": result.state, "reason": None, "params": {},
                                        "values": [result.primary, result.trainable_params], "result": result,
                                        "output_dir": str(out)}))
    tracker(Event("study_end", 0, {"study": study, "study_name": "mm"}))

    uri = default_tracking_uri(workdir)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.trial_run_id("mm", 0))
    model_id = run.data.tags["elalora.model_id"]  # the front trial's model, logged at the study's end
    assert client.get_logged_model(model_id).source_run_id == run.info.run_id

    assert main(["export", "--study", "mm", "--workdir", str(workdir), "--trial", "0", "--out",
                 str(tmp_path / "export"), "--register", "mm-adapter"]) == 0
    version = client.get_model_version("mm-adapter", "1")
    assert version.run_id == run.info.run_id  # the same logged model, not a copy:
    assert version.source == client.get_logged_model(model_id).artifact_location
    proc = subprocess.run([sys.executable, "-c", STOCK_LOAD, uri, "models:/mm-adapter/1", str(dev)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["ours_loaded"] == []
    ours = _our_logits(kept[0], tiny_model_dir, dev)
    assert torch.allclose(torch.tensor(loaded["logits"]), ours, atol=1e-4)
    rows = list(csv.DictReader(dev.open(), delimiter="\t"))
    assert len(loaded["labels"]) == len(rows) and set(loaded["labels"]) <= {"negative", "positive"}
