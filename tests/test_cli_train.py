"""`elalora-auto train` end to end: result.json, an adapter stock PEFT loads, and one-line errors (exit 2)."""

from __future__ import annotations

import json

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
