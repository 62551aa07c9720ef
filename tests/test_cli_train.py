"""`elalora-auto train` end to end: result.json, an adapter stock PEFT loads, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pytest
import torch
from peft import PeftModel
from test_trial import write_tiny_sst2
from transformers import AutoModelForSequenceClassification

from elalora_auto.cli import main


def test_train_writes_result_and_loadable_adapter(tiny_model_dir, tmp_path, capsys):
    data = write_tiny_sst2(tmp_path / "glue")
    out = tmp_path / "result.json"
    code = main([
        "train", "--task", "sst2", "--data-dir", str(data), "--model", str(tiny_model_dir), "--method", "elalora",
        "--max-steps", "10", "--set", "training.batch_size=8", "--set", "max_length=16",
        "--set", "params.r_init=2", "--set", "params.b=2", "--set", "params.k=1",
        "--output", str(out), "--export", str(tmp_path / "exp"), "--quiet",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "trainable parameters" in printed
    result = json.loads(out.read_text())
    assert {"metrics", "trainable_params", "rank_map"} <= set(result) and result["trainable_params"] > 0
    assert sum(result["rank_map"].values()) == 2 * len(result["rank_map"])

    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, tmp_path / "exp" / "adapter")
    assert torch.isfinite(model(input_ids=torch.tensor([[2, 10, 11, 3]])).logits).all()

    # The exported config re-runs: flags still override it.
    code = main(["train", "--config", str(tmp_path / "exp" / "config.yaml"), "--method", "lora",
                 "--set", "params={r_init: 2}", "--max-steps", "2", "--quiet", "--output", str(out)])
    assert code == 0 and set(json.loads(out.read_text())["rank_map"].values()) == {2}


def test_min_rank_0_trains_empties_matrices_and_exports_the_rest(tiny_model_dir, tmp_path, capsys):
    """`--set params.min_rank=0` with a small final_budget: some matrices end at rank 0; the export leaves them
    as their base layers and stock PEFT loads the rest."""
    data = write_tiny_sst2(tmp_path / "glue")
    out = tmp_path / "result.json"
    assert main([
        "train", "--task", "sst2", "--data-dir", str(data), "--model", str(tiny_model_dir), "--method", "elalora",
        "--max-steps", "12", "--set", "training.batch_size=8", "--set", "max_length=16",
        "--set", "params={r_init: 2, b: 2, k: 2, min_rank: 0, final_budget: 0.1}",
        "--output", str(out), "--export", str(tmp_path / "exp"), "--quiet",
    ]) == 0
    ranks = json.loads(out.read_text())["rank_map"]
    assert 0 in ranks.values() and sum(ranks.values()) == math.ceil(0.1 * 2 * len(ranks))
    saved = json.loads((tmp_path / "exp" / "adapter" / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == sorted(name for name, rank in ranks.items() if rank)
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir),
                                      tmp_path / "exp" / "adapter")
    assert torch.isfinite(model(input_ids=torch.tensor([[2, 10, 11, 3]])).logits).all()


def test_a_custom_block_may_name_its_task(tiny_model_dir, tmp_path, capsys):
    """`custom: {name: ...}` (custom_task's own first argument) names the task when `task:` is absent; the config
    written back names it as `task:`, once."""
    data = write_tiny_sst2(tmp_path / "glue") / "SST-2"
    config = tmp_path / "mine.yaml"
    config.write_text(f"model: {tiny_model_dir}\ncustom:\n  name: my-reviews\n  train_file: {data / 'train.tsv'}\n"
                      f"  eval_file: {data / 'dev.tsv'}\n  text_columns: sentence\ntraining: {{max_steps: 4}}\n"
                      "params: {r_init: 2, b: 1, k: 1}\n")
    assert main(["train", "--config", str(config), "--quiet", "--export", str(tmp_path / "exp")]) == 0
    assert "on my-reviews: accuracy" in capsys.readouterr().out
    written = (tmp_path / "exp" / "config.yaml").read_text()
    assert "task: my-reviews" in written and "name:" not in written and "- sentence" in written


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "sst3"], "unknown task"),
        (["--task", "sst2", "--method", "dora"], "unknown method"),
        (["--task", "sst2", "--set", "params.target_modules=[nope]", "--method", "lora"], "nope"),
        (["--task", "sst2", "--data-dir", "/nonexistent/dir"], "does not exist"),
        (["--task", "sst2", "--set", "training.lr=1"], "unknown setting 'training.lr'"),
        (["--config", "BAD_YAML"], "malformed YAML"),
        (["--task", "sst2", "--model", "no/such-model-offline"], "--model PATH"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys, extra, message):
    data = write_tiny_sst2(tmp_path / "glue")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("task: sst2\ntraining: {max_steps: [1\n")
    args = [str(bad_yaml) if a == "BAD_YAML" else a for a in extra]
    defaults = {"--data-dir": str(data), "--model": str(tiny_model_dir)}
    for flag, value in defaults.items():
        if flag not in args and "--config" not in args:
            args += [flag, value]
    assert main(["train", *args, "--max-steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


def write_jsonl_task(root: Path, folder: str, columns: tuple[str, str], splits: tuple[str, ...],
                     label: Callable[[int], float | int], n: int = 24) -> Path:
    """DIR/<folder>/<split>.jsonl in the Hugging Face schema (a sentence pair and a label)."""
    words = ("the", "movie", "was", "good", "bad", "a", "plot")
    (root / folder).mkdir(parents=True, exist_ok=True)
    for split in splits:
        rows = [{columns[0]: " ".join(words[(i + j) % 7] for j in range(4)),
                 columns[1]: " ".join(words[(i * 3 + j) % 7] for j in range(3)), "label": label(i)} for i in range(n)]
        (root / folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


MISMATCHED_TASKS = {
    "stsb": ("STS-B", ("sentence1", "sentence2"), ("train", "validation"), lambda i: (i % 6) * 1.0),
    "mnli": ("MNLI", ("premise", "hypothesis"), ("train", "validation_matched", "validation_mismatched"),
             lambda i: i % 3),
}


@pytest.mark.parametrize("task", sorted(MISMATCHED_TASKS))
def test_a_checkpoint_with_another_head_size_trains_with_a_fresh_head(task, tmp_path, capsys, caplog):
    """A 2-label fine-tune used for STS-B (1 output) or MNLI (3): the head is re-drawn, said in one line."""
    from elalora_auto.tiny import build_tiny_bert

    model = build_tiny_bert(tmp_path / "two-labels", ("the", "movie", "was", "good", "bad", "a", "plot"))
    data = write_jsonl_task(tmp_path / "glue", *MISMATCHED_TASKS[task])
    out = tmp_path / "result.json"
    code = main(["train", "--task", task, "--data-dir", str(data), "--model", str(model), "--max-steps", "4",
                 "--set", "training.batch_size=8", "--set", "max_length=16", "--quiet", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    notices = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert len(notices) == 1 and "another number of labels" in notices[0], notices
    assert all(math.isfinite(v) for v in json.loads(out.read_text())["metrics"].values())


@pytest.mark.parametrize("task", sorted(MISMATCHED_TASKS))
def test_a_search_from_a_checkpoint_with_another_head_size_says_so_once(task, tmp_path):
    """Two trials in one `search` process: both train (none fails), and the re-initialised head is reported once."""
    import subprocess
    import sys

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from elalora_auto.tiny import build_tiny_bert

    model = build_tiny_bert(tmp_path / "two-labels", ("the", "movie", "was", "good", "bad", "a", "plot"))
    data = write_jsonl_task(tmp_path / "glue", *MISMATCHED_TASKS[task])
    run = subprocess.run(
        [sys.executable, "-m", "elalora_auto.cli", "search", "--task", task, "--model", str(model), "--data-dir",
         str(data), "--method", "lora", "--trials", "2", "--max-steps", "4", "--no-tracking", "--quiet",
         "--workdir", str(tmp_path / "runs"), "--study", "s"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert sum("re-initialised" in line for line in run.stderr.splitlines()) == 1, run.stderr
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "optuna-journal.log")))
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert len(states) == 2 and set(states) <= {"COMPLETE", "PRUNED"}, run.stderr  # trained, none failed


@pytest.mark.parametrize(("length", "reads"), [
    (["--set", "training.max_steps=null", "--set", "training.epochs=1"], 2),  # one to size the run, one to train
    (["--max-steps", "3"], 1),  # max_steps sizes it: the trial's own read only
])
def test_train_reads_its_data_once_to_size_the_run(tiny_model_dir, tmp_path, monkeypatch, capsys, length, reads):
    """`train` by epochs sized the run twice (the method's defaults, then its rules), reading the training rows for
    each, before the trial read them a third time."""
    import elalora_auto.tasks

    data, loads = write_tiny_sst2(tmp_path / "glue", n_train=24), []
    real = elalora_auto.tasks.load_task_data

    def counted(*args, **kwargs):
        loads.append(args[0].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(elalora_auto.tasks, "load_task_data", counted)
    assert main(["train", "--task", "sst2", "--data-dir", str(data), "--model", str(tiny_model_dir), "--quiet",
                 "--set", "training.batch_size=8", "--set", "params.r_init=2", *length]) == 0
    assert loads == ["sst2"] * reads
    assert "accuracy" in capsys.readouterr().out
