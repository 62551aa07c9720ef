"""Task registry: the nine GLUE tasks, their metrics and objectives, aliases and the unknown-task error."""

import pytest

from elalora_auto.errors import UserError
from elalora_auto.tasks import TASKS, get_task


def test_all_nine_glue_tasks_with_hf_schema_columns():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert get_task("qqp").text_columns == ("question1", "question2")
    assert get_task("qnli").text_columns == ("question", "sentence")
    assert get_task("mnli").text_columns == ("premise", "hypothesis")
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")


def test_metrics_and_primary_objectives():
    cola, stsb, mrpc, mnli = (get_task(n) for n in ("cola", "stsb", "mrpc", "mnli"))
    assert cola.metrics == ("matthews_correlation",) and cola.primary_metric == "matthews_correlation"
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.problem_type == "regression"
    assert stsb.metrics == ("pearson", "spearmanr") and stsb.primary_metric == "pearson"
    assert mrpc.metrics == ("accuracy", "f1") and mrpc.primary_metric == "f1"
    assert mnli.eval_splits == ("validation_matched", "validation_mismatched")
    assert mnli.primary_split == "validation_matched" and mnli.primary_metric == "accuracy"
    for spec in TASKS.values():
        assert spec.primary_metric in spec.metrics
        assert spec.primary_split in spec.eval_splits


@pytest.mark.parametrize(
    "alias, name",
    [("SST-2", "sst2"), ("sst_2", "sst2"), ("STS-B", "stsb"), ("CoLA", "cola"), ("MNLI-m", "mnli"), (" rte ", "rte")],
)
def test_aliases(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_names_valid_ones_and_close_match():
    with pytest.raises(UserError, match=r"unknown task 'sst3' \(did you mean 'sst2'\?\); valid tasks: cola, sst2"):
        get_task("sst3")
    with pytest.raises(UserError, match="valid tasks") as info:
        get_task("imagenet")
    assert "did you mean" not in str(info.value)
