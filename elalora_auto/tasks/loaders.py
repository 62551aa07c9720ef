"""Task data from a local folder (GLUE TSV or Hugging Face schema files), the hub, or the user's own files.

Every source ends as in-memory `datasets.Dataset`s with the spec's text columns plus an integer (float for
regression) "label" column, so fingerprints are content hashes: the same data gives the same fingerprint in
every process, which is what lets `tokenize_cached` reuse its cache across trials and workers.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from elalora_auto.errors import DataError, UserError
from elalora_auto.tasks.registry import TaskSpec, task_key

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"
HF_EXTENSIONS = ("jsonl", "json", "csv", "parquet")
SEARCH_VALIDATION = "search_validation"
# A custom task without an eval file reports on this fixed share of train, the same rows for every seed.
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0


@dataclass
class TaskData:
    """One task's rows: `evals` maps split names (spec.eval_splits that exist, plus "search_validation"
    when carved) to datasets."""

    spec: TaskSpec
    train: datasets.Dataset
    evals: dict[str, datasets.Dataset]


@dataclass(frozen=True)
class _TsvLayout:
    """Where a GLUE TSV keeps the spec's text columns and label; `header` is given when the file has none."""

    text: tuple[str, ...]
    label: str
    header: tuple[str, ...] | None = None


_PAIR_TSV = _TsvLayout(("sentence1", "sentence2"), "label")
_GLUE_TSV = {
    "cola": _TsvLayout(("sentence",), "label", header=("source", "label", "original_label", "sentence")),
    "sst2": _TsvLayout(("sentence",), "label"),
    "mrpc": _TsvLayout(("#1 String", "#2 String"), "Quality"),
    "qqp": _TsvLayout(("question1", "question2"), "is_duplicate"),
    "stsb": _TsvLayout(("sentence1", "sentence2"), "score"),
    "mnli": _TsvLayout(("sentence1", "sentence2"), "gold_label"),
    "qnli": _TsvLayout(("question", "sentence"), "label"),
    "rte": _PAIR_TSV,
    "wnli": _PAIR_TSV,
}


def _tsv_name(split: str) -> str:
    """GLUE's file name for a split: dev.tsv for "validation", dev_matched.tsv for "validation_matched"."""
    return split.replace("validation", "dev") + ".tsv"


def layout_hint(spec: TaskSpec, root: str = "DIR") -> str:
    """The two folder layouts a user can give for a GLUE task, for error messages."""
    folder = f"{root}/{spec.glue_folder}"
    return (
        f"{folder}/train.tsv and {_tsv_name(spec.primary_split)} (GLUE layout) or "
        f"{folder}/train.jsonl and {spec.primary_split}.jsonl (HF layout)"
    )


def require_utf8(path: Path) -> None:
    """A DataError naming the first byte that is not UTF-8 (and how to convert the file): pyarrow would read such
    a column as bytes and the model would train on their repr."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = min(max(exc.start, 0), len(chunk) - 1)
                line += chunk[:bad].count(b"\n")
                raise DataError(f"{path} is not UTF-8 text (byte 0x{chunk[bad]:02x} on line {line}); re-save it as "
                                f"UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > {path.with_suffix('.utf8' + path.suffix)}"
                                ) from None
            line += chunk.count(b"\n")


def read_table(path: Path) -> pa.Table:
    """A csv/tsv/jsonl/json/parquet file as an Arrow table, read in memory (no cache files, no progress bars).

    Text stays text: empty or "NA"-like cells in string columns are kept as strings, and TSVs are read with
    quoting off, as GLUE's are.
    """
    import json

    import pyarrow as pa
    from pyarrow import csv as pa_csv, json as pa_json, parquet as pa_parquet

    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower().lstrip(".")
    if suffix != "parquet":
        require_utf8(path)
    convert = pa_csv.ConvertOptions(strings_can_be_null=False)
    try:
        if suffix == "jsonl":
            return pa_json.read_json(path)
        if suffix == "json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            return pa.Table.from_pylist(rows if isinstance(rows, list) else [rows])
        if suffix == "csv":
            return pa_csv.read_csv(path, convert_options=convert)
        if suffix == "tsv":
            parse = pa_csv.ParseOptions(delimiter="\t", quote_char=False)
            return pa_csv.read_csv(path, parse_options=parse, convert_options=convert)
        if suffix == "parquet":
            return pa_parquet.read_table(path)
    except (pa.ArrowInvalid, json.JSONDecodeError) as exc:
        raise DataError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from exc
    raise UserError(f"cannot read {path}: use a .csv, .tsv, .jsonl, .json or .parquet file")


def require_columns(table: pa.Table, path: Path, columns: list[str], hint: str = "") -> None:
    """A DataError listing the columns the file does have, so the user can fix the names."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path} has no column(s) {', '.join(missing)}; available columns: {', '.join(table.column_names)}{hint}"
        )


def _encode_labels(values: Iterable[Any], spec: TaskSpec, where: str) -> list:
    """Label ids from names ("entailment"), digit strings ("1") or ints; floats for regression."""
    if spec.is_regression:
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: regression labels must be numbers ({exc})") from exc
    index = {name: i for i, name in enumerate(spec.label_names)}
    ids = []
    for v in values:
        text = str(v).strip()
        if text in index:
            ids.append(index[text])
        elif text.isdigit() and int(text) < spec.num_labels:
            ids.append(int(text))
        else:
            raise DataError(f"{where}: label {v!r} is not one of {list(spec.label_names)} or 0..{spec.num_labels - 1}")
    return ids


def _build(spec: TaskSpec, texts: dict[str, list], labels: list, where: str) -> datasets.Dataset:
    """The normalised in-memory Dataset: text columns (None -> "") and "label"."""
    import datasets

    features = {c: datasets.Value("string") for c in spec.text_columns}
    features["label"] = datasets.Value("float32" if spec.is_regression else "int64")
    columns = {c: ["" if t is None else str(t) for t in texts[c]] for c in spec.text_columns}
    columns["label"] = _encode_labels(labels, spec, where)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _read_glue_tsv(spec: TaskSpec, path: Path) -> datasets.Dataset:
    """An original GLUE TSV: quoting off (sentences hold bare quote characters), BOM stripped (MRPC).

    Rows too short to hold every needed field are dropped with a warning, as the Hugging Face GLUE script
    drops them, so row counts match the hub copy.
    """
    layout = _GLUE_TSV[spec.name]
    require_utf8(path)
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(layout.header or next(rows, []))
        wanted = [*layout.text, layout.label]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(
                f"{path}: no column(s) {missing} in header {header}; is this the GLUE {spec.glue_folder} file?"
            )
        positions = [header.index(c) for c in wanted]
        columns: list[list[str]] = [[] for _ in wanted]
        short = []
        for line, row in enumerate(rows, start=1 if layout.header else 2):
            if len(row) <= max(positions):
                short.append(line)
                continue
            for column, position in zip(columns, positions):
                column.append(row[position])
    if short:
        logger.warning("%s: skipped %d row(s) with missing fields (line %d first)", path, len(short), short[0])
    if not columns[0]:
        raise DataError(f"{path} has no complete rows; expected the GLUE {spec.glue_folder} TSV with header {header}")
    texts = dict(zip(spec.text_columns, columns))
    return _build(spec, texts, columns[-1], str(path))


def _read_file(spec: TaskSpec, path: Path, label_column: str = "label") -> datasets.Dataset:
    """A Hugging Face schema file (or a custom task's file), reduced to text columns + label."""
    table = read_table(path)
    require_columns(table, path, [*spec.text_columns, label_column])
    data = table.select([*spec.text_columns, label_column]).to_pydict()
    return _build(spec, data, data[label_column], str(path))


def _task_folder(spec: TaskSpec, data_dir: Path) -> Path:
    """DIR/<GLUE name or task name, any case>, or DIR itself when it is already that folder."""
    if not data_dir.is_dir():
        raise DataError(f"data dir {data_dir} is not a folder; expected {layout_hint(spec, str(data_dir))}")
    if task_key(data_dir.name) == spec.name:
        return data_dir
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and task_key(child.name) == spec.name:
            return child
    raise DataError(f"no {spec.glue_folder} folder in {data_dir}; expected {layout_hint(spec, str(data_dir))}")


def _split_path(folder: Path, split: str) -> Path | None:
    """The HF-schema file for a split if present, else the GLUE TSV, else None."""
    for candidate in [folder / f"{split}.{ext}" for ext in HF_EXTENSIONS] + [folder / _tsv_name(split)]:
        if candidate.is_file():
            return candidate
    return None


def _read_local(spec: TaskSpec, data_dir: Path) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
    folder = _task_folder(spec, data_dir)

    def read(path: Path) -> datasets.Dataset:
        return _read_glue_tsv(spec, path) if path.suffix == ".tsv" else _read_file(spec, path)

    train_path = _split_path(folder, "train")
    if train_path is None:
        raise DataError(f"no training file in {folder}; expected {layout_hint(spec, str(data_dir))}")
    eval_paths = {split: path for split in spec.eval_splits if (path := _split_path(folder, split))}
    if not eval_paths:
        raise DataError(f"no evaluation file in {folder}; expected {layout_hint(spec, str(data_dir))}")
    return read(train_path), {split: read(path) for split, path in eval_paths.items()}


def _read_hub(spec: TaskSpec) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
    import datasets

    try:
        splits = datasets.load_dataset(HUB_DATASET, spec.name)
    except ConnectionError as exc:  # datasets raises it both when offline (HF_HUB_OFFLINE=1) and unreachable
        raise DataError(
            f"cannot reach the Hugging Face hub for glue/{spec.name}; pass --data-dir DIR with {layout_hint(spec)}"
        ) from exc

    def normalise(ds: datasets.Dataset, split: str) -> datasets.Dataset:
        data = ds.select_columns([*spec.text_columns, "label"]).to_dict()
        return _build(spec, data, data["label"], f"{HUB_DATASET}/{spec.name}/{split}")

    evals = {split: normalise(splits[split], split) for split in spec.eval_splits if split in splits}
    return normalise(splits["train"], "train"), evals


def _read_custom(spec: TaskSpec) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
    train = _read_file(spec, Path(spec.files["train"]), spec.source_label_column)
    if "validation" in spec.files:
        return train, {"validation": _read_file(spec, Path(spec.files["validation"]), spec.source_label_column)}
    held = train.train_test_split(test_size=HOLDOUT_FRACTION, seed=HOLDOUT_SEED)
    return held["train"], {"validation": held["test"]}


def _subsample(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))


def load_task_data(
    spec: TaskSpec,
    data_dir: str | Path | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    validation_fraction: float = 0.0,
    seed: int = 0,
) -> TaskData:
    """Read a task's train and eval splits: custom files, else `data_dir`, else the hub.

    `validation_fraction` > 0 carves a "search_validation" split out of train (before subsampling, so it does
    not move with `max_train_samples`) for the search to optimise, keeping the reported eval splits unseen.
    Subsamples are a seeded shuffle: pass the same seed to every trial to compare on identical rows.
    """
    for limit_name, limit in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if limit is not None and limit < 1:
            raise UserError(f"{limit_name} must be at least 1 (or unset for all rows), got {limit}")
    if not 0.0 <= validation_fraction < 1.0:
        raise UserError(f"validation_fraction must be in [0, 1), got {validation_fraction}")

    if spec.is_custom:
        train, evals = _read_custom(spec)
    elif data_dir is not None:
        train, evals = _read_local(spec, Path(data_dir))
    else:
        train, evals = _read_hub(spec)

    if validation_fraction > 0:
        try:
            carved = train.train_test_split(test_size=validation_fraction, seed=seed)
        except ValueError as exc:  # one side would be empty
            raise UserError(
                f"validation_fraction {validation_fraction} cannot split {len(train)} train rows: {exc}"
            ) from exc
        train, evals = carved["train"], {**evals, SEARCH_VALIDATION: carved["test"]}
    return TaskData(
        spec=spec,
        train=_subsample(train, max_train_samples, seed),
        evals={split: _subsample(ds, max_eval_samples, seed) for split, ds in evals.items()},
    )
