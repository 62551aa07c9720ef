"""Tokenisation cache (reused within and across processes), dynamic padding and length-grouped batching."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from elalora_auto.tasks import custom_task, load_task_data, make_collator, tokenize_cached
from elalora_auto.trial import _batches

WORDS = "the cat sat on the mat a dog plays guitar it was not very good big small red blue story".split()


@pytest.fixture
def pair_task(tmp_path):
    """A sentence-pair classification task of 12 rows with varied lengths, written as csv."""
    lines = ["first,second,label"]
    for i in range(12):
        lines.append(f"{' '.join(WORDS[: 2 + i])},{' '.join(WORDS[i:i + 3])},{'yes' if i % 3 else 'no'}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    return custom_task("pairs", tmp_path / "train.csv", tmp_path / "train.csv", ["first", "second"])


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_columns_no_padding_truncation_and_labels(pair_task, tokenizer, tmp_path):
    data = load_task_data(pair_task)
    tokenized = tokenize_cached(data, tokenizer, max_length=12, cache_dir=tmp_path / "cache")
    train = tokenized.train
    assert set(train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "length", "labels"}
    lengths = train["length"]
    assert lengths == [len(ids) for ids in train["input_ids"]]
    assert max(lengths) == 12 and min(lengths) < 12  # truncated to max_length, never padded
    assert train["labels"] == data.train["label"]
    first = tokenizer(data.train[0]["first"], data.train[0]["second"])["input_ids"]
    assert train[0]["input_ids"] == first  # a real pair encoding: [CLS] a [SEP] b [SEP]


def test_regression_labels_are_float(tmp_path, tokenizer):
    rows = [{"text": "the cat", "score": s} for s in (0.5, 2, 4.25)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = custom_task("r", tmp_path / "r.jsonl", tmp_path / "r.jsonl", label_column="score", task_type="regression")
    tokenized = tokenize_cached(load_task_data(spec), tokenizer, max_length=8)
    assert tokenized.evals["validation"]["labels"] == [0.5, 2.0, 4.25]
    assert tokenized.train.cache_files == []  # no cache_dir: in memory only


def test_second_call_and_new_process_reuse_the_cache(pair_task, tokenizer, tmp_path, monkeypatch, tiny_model_dir):
    cache = tmp_path / "cache"
    first = tokenize_cached(load_task_data(pair_task), tokenizer, max_length=16, cache_dir=cache)
    files = sorted(cache.glob("tok-*.arrow"))
    assert [f.name.split("-")[2] for f in files] == ["train", "validation"]
    assert first.train.cache_files == [{"filename": str(cache / files[0].name)}]
    stamps = {f: f.stat().st_mtime_ns for f in files}

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the tokenizer ran although the cache should have answered")

    # A fresh load of the same data in this process: the cache answers, the tokenizer is never called.
    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenizing)
    again = tokenize_cached(load_task_data(pair_task), tokenizer, max_length=16, cache_dir=cache)
    assert again.train.cache_files == first.train.cache_files
    assert again.train["input_ids"] == first.train["input_ids"]
    monkeypatch.undo()

    # A new process (another trial worker) finds the same files, again without tokenising.
    script = textwrap.dedent(f"""
        import json, sys
        from transformers import AutoTokenizer
        from elalora_auto.tasks import custom_task, load_task_data, tokenize_cached
        tok = AutoTokenizer.from_pretrained({str(tiny_model_dir)!r})
        def boom(*a, **k):
            raise SystemExit("tokenizer called")
        type(tok).__call__ = boom
        csv_file = {str(tmp_path / "train.csv")!r}
        spec = custom_task("pairs", csv_file, csv_file, ["first", "second"])
        out = tokenize_cached(load_task_data(spec), tok, max_length=16, cache_dir={str(cache)!r})
        print(json.dumps(out.train.cache_files))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == first.train.cache_files
    assert {f: f.stat().st_mtime_ns for f in files} == stamps and sorted(cache.glob("tok-*.arrow")) == files

    # Another max length (or sample) is another cache entry.
    tokenize_cached(load_task_data(pair_task, max_train_samples=5), tokenizer, max_length=8, cache_dir=cache)
    assert len(list(cache.glob("tok-pairs-train-*.arrow"))) == 2


def test_collator_pads_per_batch_and_the_sampler_groups_rows_by_length(pair_task, tokenizer):
    tokenized = tokenize_cached(load_task_data(pair_task), tokenizer, max_length=32)
    rows = [tokenized.train[i] for i in (0, 1, 2)]
    batch = make_collator(tokenizer)(rows)
    longest = max(r["length"] for r in rows)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}  # "length" dropped
    assert batch["input_ids"].shape == (3, longest)
    assert batch["attention_mask"].sum(dim=1).tolist() == [r["length"] for r in rows]
    assert batch["labels"].tolist() == [r["labels"] for r in rows]

    # 72 rows (the 12 six times) in a shuffled order: transformers' sampler sorts mega-batches of 16 by length
    # (it groups nothing below 32 rows), so batches of 4 hold rows of neighbouring lengths and pad little.
    perm = torch.randperm(72, generator=torch.Generator().manual_seed(0)).tolist()
    train = tokenized.train.select([i % 12 for i in perm])
    lengths = train["length"]
    collate = make_collator(tokenizer)

    def padding(batches) -> int:
        return sum(b["input_ids"].numel() for b in batches) - sum(lengths)

    in_order = padding(collate([train[i] for i in range(j, j + 4)]) for j in range(0, 72, 4))
    sampler = LengthGroupedSampler(4, lengths=lengths, generator=torch.Generator().manual_seed(0))
    assert sorted(sampler) == list(range(len(lengths)))
    loader = torch.utils.data.DataLoader(train, batch_size=4, sampler=sampler, collate_fn=collate)
    assert sum(len(b["labels"]) for b in loader) == len(lengths)
    # The documented recipe and the trial's own batches both pad less than half of what the shuffled order does.
    for batches in (loader, _batches(train, 4, collate, seed=3, epoch=1)):
        assert padding(batches) < in_order / 2, (padding(batches), in_order)
