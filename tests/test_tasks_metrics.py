"""GLUE metrics against values worked out by hand."""

import math

import numpy as np
import pytest

from elalora_auto.tasks import compute_metrics, custom_task, get_task

LABELS = np.array([1, 1, 1, 0, 0, 0])
PREDS = np.array([1, 1, 0, 0, 0, 1])  # TP=2, FN=1, TN=2, FP=1


def test_cola_mcc_by_hand():
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert compute_metrics(get_task("cola"), PREDS, LABELS) == {"matthews_correlation": pytest.approx(1 / 3)}


def test_mrpc_accuracy_and_f1_from_logits():
    logits = np.where(PREDS[:, None] == np.arange(2), 2.0, -1.0)  # argmax gives PREDS
    metrics = compute_metrics(get_task("mrpc"), logits, LABELS)
    # precision = recall = 2/3, so F1 = 2/3; accuracy 4/6
    assert metrics == {"accuracy": pytest.approx(4 / 6), "f1": pytest.approx(2 / 3)}


def test_stsb_pearson_and_spearman_by_hand():
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    scores = np.array([[1.0], [2.0], [3.0], [5.0]])  # regression head output (N, 1)
    # deviations (-1.5,-.5,.5,1.5) and (-1.75,-.75,.25,2.25): r = 6.5 / sqrt(5 * 8.75); ranks agree: rho = 1
    metrics = compute_metrics(get_task("stsb"), scores, labels)
    assert metrics == {"pearson": pytest.approx(6.5 / math.sqrt(43.75)), "spearmanr": pytest.approx(1.0)}


def test_constant_regression_output_scores_zero_not_nan():
    metrics = compute_metrics(get_task("stsb"), np.full(4, 2.5), np.array([1.0, 2.0, 3.0, 4.0]))
    assert metrics == {"pearson": 0.0, "spearmanr": 0.0}


def test_three_class_accuracy_and_macro_f1(tmp_path):
    assert compute_metrics(get_task("mnli"), np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 1, 2])) == {"accuracy": 0.75}
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,x\nb,y\nc,z\n")
    spec = custom_task("three", path, metric="f1")
    # per class F1: x 1.0, y 2/3 (P=1, R=1/2), z 2/3 (P=1/2, R=1) -> macro 7/9
    metrics = compute_metrics(spec, np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert metrics["f1"] == pytest.approx(7 / 9) and spec.primary_metric == "f1"


def test_misaligned_predictions_are_a_bug():
    with pytest.raises(ValueError, match="do not line up"):
        compute_metrics(get_task("sst2"), np.zeros(5), np.zeros(6))
