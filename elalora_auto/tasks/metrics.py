"""GLUE metrics for one eval split, computed with scikit-learn and scipy.

Keys are plain metric names ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr"); exactly
`spec.metrics` are returned and `spec.primary_metric` is one of them. Tasks with several eval splits (MNLI,
or any task with a carved "search_validation") are scored one split at a time; the trial prefixes the keys
with the split name when there is more than one split, e.g. "validation_matched_accuracy" and
"validation_mismatched_accuracy", and optimises `<split>_<spec.primary_metric>` on "search_validation" when
present, else on `spec.primary_split`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from elalora_auto.tasks.registry import TaskSpec


def _f1(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> float:
    """Binary F1 of the positive class (GLUE's MRPC/QQP F1); macro F1 for custom tasks with more classes."""
    return f1_score(labels, predictions, average="binary" if num_labels == 2 else "macro", zero_division=0.0)


def _correlation(fn: Callable) -> Callable[[np.ndarray, np.ndarray, int], float]:
    """A correlation that is 0.0 (no detectable relation) rather than NaN when either side is constant,
    as sklearn does for MCC, so a collapsed model scores low instead of poisoning the search with NaN."""

    def metric(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            value = float(fn(labels, predictions)[0])
        return 0.0 if math.isnan(value) else value

    return metric


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
    "accuracy": lambda labels, predictions, _: accuracy_score(labels, predictions),
    "f1": _f1,
    "matthews_correlation": lambda labels, predictions, _: matthews_corrcoef(labels, predictions),
    "pearson": _correlation(pearsonr),
    "spearmanr": _correlation(spearmanr),
}


def compute_metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Score predictions: classification takes logits (N, C) or class ids (N,); regression takes scores
    (N,) or (N, 1)."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if spec.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        predictions, labels = predictions.astype(np.float64), labels.astype(np.float64)
    elif predictions.ndim == 2:
        predictions = predictions.argmax(axis=-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} do not line up")
    if len(labels) == 0:
        raise ValueError("cannot score an empty eval split")
    return {name: float(_METRICS[name](labels, predictions, spec.num_labels)) for name in spec.metrics}
