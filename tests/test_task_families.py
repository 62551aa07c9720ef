"""The task-family registry (tasks/families/): every GLUE and custom task is sequence classification, and a family
added by one class and one registry line (a toy token-level family) is loaded, tokenised, collated, trained,
evaluated and exported through a real run_trial on the tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
import torch

from elalora_auto.adapters import build_adapter
from elalora_auto.errors import UserError
from elalora_auto.tasks import FAMILIES, custom_task, family_of, get_family, get_task, register_family
from elalora_auto.tasks.families import base as families_base
from elalora_auto.tasks.families.base import Collator, Encoder, TaskFamily
from elalora_auto.trial import TrialSpec, run_trial

IGNORED = -100  # transformers' label for positions no loss or metric counts


class EveryToken(TaskFamily):
    """A toy family as a newcomer would add one: token classification, every word of a row labelled with the
    row's label; special tokens and padding are not scored."""

    name = "every_token"
    peft_task_type = "TOKEN_CLS"
    pipeline_task = "token-classification"
    architectures = ("ForTokenClassification",)

    def __init__(self) -> None:
        self.scored: list[int] = []  # the positions each metrics call scored (the test reads them)

    def model_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def config_kwargs(self, task: Any) -> dict[str, Any]:
        return {"num_labels": task.num_labels}

    def head_note(self, task: Any) -> str:
        return f"saved for another number of token labels ({task.num_labels} here)"

    def encoder(self, task: Any, tokenizer: Any, max_length: int) -> Encoder:
        def encode(batch: dict[str, list]) -> dict[str, Any]:
            encoded = dict(tokenizer(batch[task.text_columns[0]], truncation=True, max_length=max_length,
                                     return_special_tokens_mask=True))
            special = encoded.pop("special_tokens_mask")
            encoded["labels"] = [[IGNORED if s else label for s in mask] for mask, label in zip(special, batch["label"])]
            return encoded

        return encode

    def pad(self, tokenizer: Any) -> Collator:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)

    def predict(self, model: Any, batch: Mapping[str, torch.Tensor], task: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        scored = batch["labels"] != IGNORED
        return logits.argmax(-1)[scored], batch["labels"][scored]

    def metrics(self, task: Any, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        self.scored.append(len(labels))
        return {"accuracy": float((predictions == labels).mean())}


@pytest.fixture
def toy_family(monkeypatch: pytest.MonkeyPatch) -> TaskFamily:
    """The toy family on the registry for one test (the registry line a real family adds in families/__init__)."""
    monkeypatch.setattr(families_base, "_REGISTRY", dict(families_base._REGISTRY))
    return register_family(EveryToken())


def _rows(path: Path, n: int) -> Path:
    words = {"pos": ["great", "good", "fun"], "neg": ["bad", "awful", "boring"]}
    with path.open("w") as out:
        for i in range(n):
            label = "pos" if i % 2 else "neg"
            out.write(json.dumps({"text": f"the movie was {'very ' * (i % 3)}{words[label][i % 3]}", "label": label})
                      + "\n")
    return path


def test_glue_and_custom_tasks_are_sequence_classification(tmp_path: Path) -> None:
    assert FAMILIES == ("sequence_classification",)
    for task in (get_task("sst2"), get_task("stsb"), custom_task("c", _rows(tmp_path / "c.jsonl", 6))):
        family = family_of(task)
        assert family.name == "sequence_classification" and family.peft_task_type == "SEQ_CLS"
        assert family.model_class().__name__ == "AutoModelForSequenceClassification"
    assert family_of(get_task("stsb")).config_kwargs(get_task("stsb")) == {"num_labels": 1, "problem_type": "regression"}
    with pytest.raises(UserError, match="unknown task family 'sequence_clasification'; choose one of "
                                        "sequence_classification"):
        custom_task("c", tmp_path / "c.jsonl", family="sequence_clasification")


def test_a_family_added_by_one_class_trains_and_scores_every_token(toy_family, tiny_model_dir, tmp_path) -> None:
    assert get_family("every_token") is toy_family
    custom = {"train_file": str(_rows(tmp_path / "train.jsonl", 32)), "eval_file": str(_rows(tmp_path / "dev.jsonl", 12)),
              "family": "every_token"}
    # BERT's default targets include the pooler, which a token classifier has not: the targets are named.
    spec = TrialSpec(task="toy", model=str(tiny_model_dir), method="lora", custom=custom,
                     params={"r_init": 2, "target_modules": ["query", "value"]})
    spec.training.max_steps, spec.training.batch_size, spec.training.learning_rate = 6, 8, 5e-3
    kept: list[Any] = []

    def keep(*args: Any, **kwargs: Any) -> Any:
        kept.append(build_adapter(*args, **kwargs))
        return kept[-1]

    result = run_trial(spec, output_dir=tmp_path / "out", progress=False, adapter_factory=keep)
    assert result.state.name == "COMPLETE" and result.primary_metric == "accuracy" and 0.0 <= result.primary <= 1.0
    assert type(kept[0].model).__name__ == "PeftModelForTokenClassification"
    assert type(kept[0].model.base_model.model).__name__ == "BertForTokenClassification"
    # Scored per word, not per row: every word of the 12 rows (4 to 6 each), special tokens left out.
    assert toy_family.scored == [sum(4 + i % 3 for i in range(12))]
    saved = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "TOKEN_CLS"
    assert TrialSpec.from_yaml(tmp_path / "out" / "config.yaml").custom["family"] == "every_token"
