"""`export` and `report` on a real study of real tiny trials; the adapter is checked in a process without us."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from elalora_auto.cli import main
from elalora_auto.search.storage import open_storage
from elalora_auto.trial import TrialSpec, run_trial

POS = "great good fun fine".split()
NEG = "bad awful boring long".split()

# Runs in a fresh interpreter that never imports elalora_auto: stock transformers + peft only.
STOCK_EVAL = textwrap.dedent("""
    import csv, json, sys
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model_dir, export_dir, dev = sys.argv[1:4]
    rows = list(csv.DictReader(open(dev), delimiter="\\t"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    def accuracy(model):
        model.eval()
        batch = tok([r["sentence"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            pred = model(**batch).logits.argmax(-1).tolist()
        return sum(p == int(r["label"]) for p, r in zip(pred, rows)) / len(rows)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    adapted = accuracy(PeftModel.from_pretrained(base, export_dir + "/adapter"))
    merged = accuracy(AutoModelForSequenceClassification.from_pretrained(export_dir + "/merged"))
    print(json.dumps({"adapter": adapted, "merged": merged, "ours_loaded": "elalora_auto" in sys.modules}))
""")


def _write_sst2(root: Path) -> Path:
    import random

    rng = random.Random(0)
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    for split, n in (("train", 160), ("dev", 48)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            word = rng.choice(POS if label else NEG)
            lines.append(f"the movie was {'really ' * rng.randint(0, 2)}{word} and the plot {rng.choice(POS + NEG)}\t{label}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder / "dev.tsv"


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, tiny_model_dir):
    """A workdir with a two-trial LoRA study (ranks 2 and 4) laid out as the search writes it."""
    workdir = tmp_path_factory.mktemp("work")
    dev = _write_sst2(workdir / "data")
    study = optuna.create_study(study_name="ex", directions=["maximize", "minimize"],
                                storage=open_storage(None, workdir))
    study.set_user_attr("settings", {"task": "sst2", "method": "lora", "primary_metric": "accuracy"})
    for r in (2, 4):
        trial = study.ask()
        rank = trial.suggest_int("r", r, r)
        spec = TrialSpec.from_dict({
            "task": "sst2", "model": str(tiny_model_dir), "method": "lora", "params": {"r": rank, "lora_alpha": 8},
            "training": {"learning_rate": 2e-2, "max_steps": 60, "batch_size": 16, "max_length": 32, "seed": 1,
                         "device": "cpu"},
            "data": {"data_dir": str(workdir / "data"), "cache_dir": str(workdir / "cache")}})
        result = run_trial(spec, output_dir=workdir / "trials" / "ex" / str(trial.number), progress=False)
        study.tell(trial, [result.primary, result.trainable_params])
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    return workdir, dev, study


def test_exported_adapter_reproduces_the_metric_with_stock_peft(study_dir, tiny_model_dir, tmp_path, capsys):
    workdir, dev, study = study_dir
    out = tmp_path / "export"
    assert main(["export", "--study", "ex", "--workdir", str(workdir), "--pick", "best", "--out", str(out),
                 "--merge"]) == 0
    best = max(study.best_trials, key=lambda t: (t.values[0], -t.values[1]))
    assert f"trial {best.number} " in capsys.readouterr().out
    logged = json.loads((workdir / "trials" / "ex" / str(best.number) / "result.json").read_text())
    proc = subprocess.run([sys.executable, "-c", STOCK_EVAL, str(tiny_model_dir), str(out), str(dev)],
                          capture_output=True, text=True, check=True, timeout=120)
    stock = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stock["ours_loaded"] is False
    assert logged["primary"] > 0.6  # it learned something, so the match below means something
    assert abs(stock["adapter"] - logged["primary"]) <= 1e-4
    assert abs(stock["merged"] - logged["primary"]) <= 1e-4
    spec = TrialSpec.from_yaml(out / "config.yaml")  # re-runnable as `train --config`
    assert spec.params["r"] == best.params["r"] and spec.method == "lora"
    assert f"# final rank map ({sum(logged['rank_map'].values())} in total)" in (out / "config.yaml").read_text()
    card = (out / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and f"{logged['trainable_params']:,}" in card


def test_export_picks_and_rejects(study_dir, tmp_path, capsys):
    workdir, _, study = study_dir
    smallest = min(study.best_trials, key=lambda t: t.values[1])
    assert main(["export", "--study", "ex", "--workdir", str(workdir), "--max-params", str(smallest.values[1]),
                 "--out", str(tmp_path / "small")]) == 0
    assert json.loads((tmp_path / "small" / "adapter" / "adapter_config.json").read_text())["r"] == smallest.params["r"]
    capsys.readouterr()
    assert main(["export", "--study", "ex", "--workdir", str(workdir), "--trial", "2", "--out", str(tmp_path / "x")]) == 2
    assert "trial 2 is FAIL" in capsys.readouterr().err
    assert main(["export", "--study", "nope", "--workdir", str(workdir), "--out", str(tmp_path / "x")]) == 2
    assert main(["export", "--study", "ex", "--workdir", str(workdir), "--max-params", "1", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_report_prints_the_front_and_writes_the_plots(study_dir, tmp_path, capsys):
    workdir, _, study = study_dir
    assert main(["report", "--study", "ex", "--workdir", str(workdir), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "3 trials (COMPLETE: 2, FAIL: 1)" in out
    for trial in study.best_trials:
        assert f"{int(trial.values[1]):>16,}" in out
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"index.html", "pareto_front.png", "pareto_front.html", "trials.csv", "optuna_history.html"} <= names
    assert "pareto_front.png" in (tmp_path / "rep" / "index.html").read_text()
