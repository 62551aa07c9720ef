"""Loaders: every GLUE task from the original TSV layout and from HF-schema files, custom files, sampling,
validation carving and the errors a user can fix. Fixture files are written here, with GLUE's quirks."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elalora_auto.errors import DataError, UserError
from elalora_auto.tasks import TASKS, custom_task, get_task, load_task_data

# Fields that open with a bare, unbalanced quote (as in MRPC): a quoting csv reader would swallow the lines after.
ONE = ['" no to it , he said .', "it 's a \"great\" film"]
TWO = ['" the cat sat', "the dog sat"]
THREE = ["a man plays", '" a woman sings loudly']

# (text columns of the row, label as the GLUE TSV writes it, expected label id)
GLUE_ROWS = {
    "cola": [(ONE[:1], "1", 1), (ONE[1:], "0", 0)],
    "sst2": [(ONE[:1], "0", 0), (ONE[1:], "1", 1)],
    "mrpc": [(TWO, "1", 1), (THREE, "0", 0)],
    "qqp": [(TWO, "0", 0), (THREE, "1", 1)],
    "stsb": [(TWO, "4.750", 4.75), (THREE, "0.000", 0.0)],
    "mnli": [(TWO, "neutral", 1), (THREE, "contradiction", 2)],
    "qnli": [(TWO, "not_entailment", 1), (THREE, "entailment", 0)],
    "rte": [(TWO, "entailment", 0), (THREE, "not_entailment", 1)],
    "wnli": [(TWO, "1", 1), (THREE, "0", 0)],
}


def _glue_fields(task: str, split: str, i: int, texts: list[str], label: str) -> tuple[list[str] | None, list[str]]:
    """GLUE's header (None for CoLA) and one row, column for column as in the original files."""
    if task == "cola":
        return None, ["gj04", label, "" if label == "1" else "*", texts[0]]
    if task == "sst2":
        return ["sentence", "label"], [texts[0] + " ", label]
    if task == "mrpc":
        return ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [label, "11", "12", *texts]
    if task == "qqp":
        return ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], [str(i), "1", "2", *texts, label]
    if task == "stsb":
        head = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
        head.append("score")
        return head, [str(i), "main-captions", "MSRvid", "2012test", "0001", "none", "none", *texts, label]
    if task == "mnli":
        parses = ["sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse", "sentence2_parse"]
        labels = ["label1"] if split == "train" else ["label1", "label2", "label3", "label4", "label5"]
        head = ["index", "promptID", "pairID", "genre", *parses, "sentence1", "sentence2", *labels, "gold_label"]
        return head, [str(i), "7", "7n", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", *texts] + [label] * (
            len(labels) + 1
        )
    first = "question" if task == "qnli" else "sentence1"
    second = "sentence" if task == "qnli" else "sentence2"
    return ["index", first, second, "label"], [str(i), *texts, label]


def write_glue_tsv(root, task: str) -> None:
    spec = get_task(task)
    folder = root / spec.glue_folder
    folder.mkdir(parents=True)
    for split in ("train", *spec.eval_splits):
        name = split.replace("validation", "dev") + ".tsv"
        lines = []
        for i, (texts, label, _) in enumerate(GLUE_ROWS[task]):
            header, row = _glue_fields(task, split, i, texts, label)
            lines.append("\t".join(row))
        if header:
            lines.insert(0, "\t".join(header))
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_hf_jsonl(root, task: str, splits=None) -> None:
    spec = get_task(task)
    folder = root / task  # the lowercase task name is accepted as well as GLUE's folder name
    folder.mkdir(parents=True)
    for split in splits or ("train", *spec.eval_splits):
        rows = [
            {**dict(zip(spec.text_columns, texts)), "label": label_id, "idx": i}
            for i, (texts, _, label_id) in enumerate(GLUE_ROWS[task])
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def expected_rows(task: str) -> list[dict]:
    spec = get_task(task)
    return [{**dict(zip(spec.text_columns, texts)), "label": label_id} for texts, _, label_id in GLUE_ROWS[task]]


def _rows(ds) -> list[dict]:
    return [dict(row) for row in ds]


def _strip_sst2(rows: list[dict]) -> list[dict]:
    return [{k: v.rstrip() if isinstance(v, str) else v for k, v in row.items()} for row in rows]


@pytest.mark.parametrize("task", list(TASKS))
def test_glue_tsv_layout(tmp_path, task):
    write_glue_tsv(tmp_path, task)
    data = load_task_data(get_task(task), tmp_path)
    assert list(data.evals) == list(get_task(task).eval_splits)
    for ds in (data.train, *data.evals.values()):
        # SST-2's sentences end in a space in the real files; it is kept, as the HF copy keeps it.
        assert _strip_sst2(_rows(ds)) == expected_rows(task)


@pytest.mark.parametrize("task", list(TASKS))
def test_hf_jsonl_layout(tmp_path, task):
    write_hf_jsonl(tmp_path, task)
    data = load_task_data(get_task(task), tmp_path)
    assert list(data.evals) == list(get_task(task).eval_splits)
    assert _rows(data.train) == expected_rows(task) == _rows(data.evals[get_task(task).primary_split])


def test_missing_eval_split_is_absent_but_one_is_required(tmp_path):
    write_hf_jsonl(tmp_path, "mnli", splits=("train", "validation_matched"))
    assert list(load_task_data(get_task("mnli"), tmp_path).evals) == ["validation_matched"]
    (tmp_path / "mnli" / "validation_matched.jsonl").unlink()
    with pytest.raises(DataError, match=r"no evaluation file in .*mnli; expected .*MNLI/train.tsv and dev_matched.tsv"):
        load_task_data(get_task("mnli"), tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_hf_csv_and_parquet_and_the_task_folder_itself(tmp_path, fmt):
    folder = tmp_path / "Sst-2"
    folder.mkdir()
    table = pa.table({"sentence": ["good fun", "NA", "boring"], "label": [1, 0, 0], "idx": [0, 1, 2]})
    for split in ("train", "validation"):
        if fmt == "csv":
            (folder / f"{split}.csv").write_text("sentence,label,idx\ngood fun,1,0\nNA,0,1\nboring,0,2\n")
        else:
            pq.write_table(table, folder / f"{split}.parquet")
    for data_dir in (tmp_path, folder):
        data = load_task_data(get_task("sst2"), data_dir)
        assert data.train["sentence"] == ["good fun", "NA", "boring"]  # "NA" is text, not a missing value
        assert data.evals["validation"]["label"] == [1, 0, 0]


def test_custom_csv_string_labels_sorted(tmp_path):
    (tmp_path / "train.csv").write_text('review,stars\n"great, really",pos\nawful,neg\nfine,mid\nbad,neg\n')
    (tmp_path / "dev.csv").write_text("review,stars\nok,mid\n")
    spec = custom_task("reviews", tmp_path / "train.csv", tmp_path / "dev.csv", ["review"], "stars")
    assert spec.label_names == ("mid", "neg", "pos") and spec.num_labels == 3
    data = load_task_data(spec)
    assert data.train["review"] == ["great, really", "awful", "fine", "bad"]
    assert data.train["label"] == [2, 1, 0, 1] and data.evals["validation"]["label"] == [0]


def test_custom_jsonl_pair_regression_without_eval_file(tmp_path):
    rows = [{"a": f"s{i}", "b": f"t{i}", "score": i / 4} for i in range(20)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = custom_task("pairs", tmp_path / "train.jsonl", text_columns=["a", "b"], label_column="score",
                       task_type="regression")
    assert spec.is_regression and spec.num_labels == 1 and spec.primary_metric == "pearson"
    data = load_task_data(spec, seed=123)
    # 10% held out as "validation", fixed whatever the seed, so every trial reports on the same rows
    assert len(data.train) == 18 and len(data.evals["validation"]) == 2
    assert data.evals["validation"]["a"] == load_task_data(spec, seed=7).evals["validation"]["a"]
    assert set(data.train["a"]) | set(data.evals["validation"]["a"]) == {r["a"] for r in rows}


def test_custom_parquet_int_labels(tmp_path):
    pq.write_table(pa.table({"text": ["x", "y", "z"], "label": [0, 2, 1]}), tmp_path / "t.parquet")
    spec = custom_task("ints", tmp_path / "t.parquet", tmp_path / "t.parquet")
    assert spec.label_names == ("0", "1", "2")
    assert load_task_data(spec).train["label"] == [0, 2, 1]


def test_custom_errors_name_the_fix(tmp_path):
    (tmp_path / "t.csv").write_text("review,stars\ngood,1\nbad,0\n")
    with pytest.raises(UserError, match="no column.s. text, label; available columns: review, stars"):
        custom_task("c", tmp_path / "t.csv")
    with pytest.raises(UserError, match="choose one of pearson, spearmanr"):
        custom_task("c", tmp_path / "t.csv", text_columns=["review"], label_column="stars",
                    task_type="regression", metric="accuracy")
    with pytest.raises(DataError, match="data file not found: .*nope.csv"):
        custom_task("c", tmp_path / "nope.csv")
    with pytest.raises(UserError, match="use a .csv, .tsv, .jsonl, .json or .parquet"):
        (tmp_path / "t.xlsx").write_text("x")
        custom_task("c", tmp_path / "t.xlsx")


def _numbered_sst2(root, n: int = 40) -> None:
    folder = root / "SST-2"
    folder.mkdir()
    body = "".join(f"row {i}\t{i % 2}\n" for i in range(n))
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("sentence\tlabel\n" + body)


def test_subsampling_is_seeded(tmp_path):
    _numbered_sst2(tmp_path)
    spec = get_task("sst2")
    first = load_task_data(spec, tmp_path, max_train_samples=10, max_eval_samples=5, seed=1)
    again = load_task_data(spec, tmp_path, max_train_samples=10, max_eval_samples=5, seed=1)
    other = load_task_data(spec, tmp_path, max_train_samples=10, max_eval_samples=5, seed=2)
    assert len(first.train) == 10 and len(first.evals["validation"]) == 5
    assert first.train["sentence"] == again.train["sentence"] != other.train["sentence"]
    assert first.evals["validation"]["sentence"] == again.evals["validation"]["sentence"]
    assert len(load_task_data(spec, tmp_path, max_train_samples=1000).train) == 40  # a limit above the size is a no-op


def test_validation_carved_from_train(tmp_path):
    _numbered_sst2(tmp_path)
    spec = get_task("sst2")
    data = load_task_data(spec, tmp_path, validation_fraction=0.25, seed=3)
    carved = data.evals["search_validation"]["sentence"]
    assert list(data.evals) == ["validation", "search_validation"]
    assert len(carved) == 10 and len(data.train) == 30
    assert set(carved).isdisjoint(data.train["sentence"])
    assert set(carved) | set(data.train["sentence"]) == {f"row {i}" for i in range(40)}
    again = load_task_data(spec, tmp_path, validation_fraction=0.25, seed=3)
    assert again.evals["search_validation"]["sentence"] == carved
    # carved before subsampling: a smaller training sample does not move the search split
    small = load_task_data(spec, tmp_path, validation_fraction=0.25, seed=3, max_train_samples=5)
    assert small.evals["search_validation"]["sentence"] == carved and len(small.train) == 5
    with pytest.raises(UserError, match="validation_fraction must be in"):
        load_task_data(spec, tmp_path, validation_fraction=1.0)


def test_missing_files_and_bad_rows(tmp_path, caplog):
    spec = get_task("rte")
    with pytest.raises(DataError, match=r"no RTE folder in .*; expected .*/RTE/train.tsv and dev.tsv \(GLUE layout\)"):
        load_task_data(spec, tmp_path)
    (tmp_path / "rte").mkdir()
    with pytest.raises(DataError, match=r"no training file in .*rte; expected .*RTE/train.jsonl and validation.jsonl"):
        load_task_data(spec, tmp_path)
    (tmp_path / "rte" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    (tmp_path / "rte" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\n")
    with pytest.raises(DataError, match=r"train.tsv: label 'maybe' is not one of \['entailment', 'not_entailment'\]"):
        load_task_data(spec, tmp_path)
    (tmp_path / "rte" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match=r"dev.tsv has no complete rows"):
        load_task_data(spec, tmp_path)
    # A corrupt (short) row is dropped with a warning, as the Hugging Face GLUE script drops it.
    (tmp_path / "rte" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\n1\tc\td\tentailment\n")
    assert load_task_data(spec, tmp_path).evals["validation"]["sentence1"] == ["c"]
    assert "skipped 1 row(s) with missing fields (line 2 first)" in caplog.text


def test_offline_hub_error_is_one_line_naming_data_dir():
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:  # conftest sets HF_HUB_OFFLINE=1 unless the caller overrode it
        pytest.skip("HF_HUB_OFFLINE is off: this test would reach for the hub")
    with pytest.raises(DataError) as info:
        load_task_data(get_task("mnli"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot reach the Hugging Face hub for glue/mnli; pass --data-dir DIR with")
    assert "DIR/MNLI/train.tsv and dev_matched.tsv (GLUE layout)" in message
    assert "DIR/MNLI/train.jsonl and validation_matched.jsonl (HF layout)" in message


def test_real_glue_row_counts(glue_dir):
    counts = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3667, 408), "rte": (2490, 277),
              "stsb": (5749, 1500), "wnli": (635, 71), "mnli": (8999, 1000)}
    for task, (train, dev) in counts.items():
        data = load_task_data(get_task(task), glue_dir)
        assert (len(data.train), len(data.evals[get_task(task).primary_split])) == (train, dev), task
