"""The MLflow pyfunc model of one exported trial: a stock PEFT LoRA adapter on its base model.

MLflow copies this file into every model it logs ("models from code"), so loading a logged or registered model
needs mlflow, torch, transformers and peft only, never elalora-auto. Artifacts: `adapter` (the PEFT folder) and
`tokenizer`; model_config: base_model (hub id or path), num_labels, label_names, text_columns, max_length.
Input: a DataFrame with the task's text columns (or one column of strings); output: a DataFrame with the
predicted `label` and the `logits`.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class AdapterClassifier(PythonModel):
    """Base model + PEFT adapter, loaded once; predicts label names and logits."""

    def load_context(self, context: Any) -> None:
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        config = context.model_config
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["tokenizer"])
        labels = list(config.get("label_names") or [])
        base = AutoModelForSequenceClassification.from_pretrained(
            config["base_model"], num_labels=int(config["num_labels"]), ignore_mismatched_sizes=True,
            id2label=dict(enumerate(labels)) or None, label2id={n: i for i, n in enumerate(labels)} or None)
        self.model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).eval()

    # No type hints here: MLflow reads them as an input schema; the signature is given when the model is saved.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import pandas as pd
        import torch

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"text": list(model_input)})
        columns = [c for c in self.config.get("text_columns") or [] if c in frame.columns] or list(frame.columns[:1])
        texts = [frame[c].astype(str).tolist() for c in columns]
        batch = self.tokenizer(*texts, truncation=True, max_length=int(self.config.get("max_length") or 512),
                               padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**batch).logits.float()
        labels = list(self.config.get("label_names") or [])
        names = [labels[i] for i in logits.argmax(-1).tolist()] if labels else logits[:, 0].tolist()
        return pd.DataFrame({"label": names, "logits": logits.tolist()})


mlflow.models.set_model(AdapterClassifier())
