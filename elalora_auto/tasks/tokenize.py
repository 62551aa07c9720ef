"""Tokenisation done once per (tokenizer, task, max length, data sample) and shared by every trial and worker.

What a row becomes is the task family's (`TaskFamily.encoder`); this module caches it and adds the "length"
column. Rows are not padded here: `make_collator` (the family's) pads each batch to its own longest row, and the
"length" column lets a plain torch DataLoader group rows of similar length with transformers' sampler:

    LengthGroupedSampler(batch_size, lengths=data.train["length"], generator=torch.Generator().manual_seed(seed))
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elalora_auto.tasks.families import family_of, get_family
from elalora_auto.tasks.families.base import Collator
from elalora_auto.tasks.loaders import TaskData
from elalora_auto.tasks.registry import DEFAULT_FAMILY

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

# Bump when the columns written below change, so stale cache files are not picked up.
_FORMAT_VERSION = "1"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of a tokenizer: its class, name and full vocabulary (a path alone can be reused by
    a different tokenizer, e.g. a rebuilt local model)."""
    digest = hashlib.sha256()
    digest.update(f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}".encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()


def _tokenize_split(
    ds: datasets.Dataset,
    split: str,
    task_data: TaskData,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_id: str,
    max_length: int,
    cache_dir: Path | None,
) -> datasets.Dataset:
    spec = task_data.spec
    key = hashlib.sha256(
        f"{_FORMAT_VERSION}|{tokenizer_id}|{spec.family}|{spec.name}|{max_length}|{ds._fingerprint}".encode()
    ).hexdigest()[:20]
    family_encode = family_of(spec).encoder(spec, tokenizer, max_length)

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        encoded = family_encode(batch)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    # new_fingerprint=key: datasets would otherwise hash the closure (tokenizer included) on every call.
    options: dict[str, Any] = {"keep_in_memory": True}
    if cache_dir is not None:
        safe_name = re.sub(r"[^A-Za-z0-9_.]", "_", spec.name)  # custom task names may hold spaces or slashes
        cache_file = cache_dir / f"tok-{safe_name}-{split}-{key}.arrow"
        options = {"cache_file_name": str(cache_file), "load_from_cache_file": True}
    return ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=key,
        desc=f"tokenising {spec.name}/{split}",
        **options,
    )


def tokenize_cached(
    task_data: TaskData,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    cache_dir: str | Path | None = None,
) -> TaskData:
    """Tokenised copies of every split: the family's columns (sequence classification: input_ids,
    attention_mask, [token_type_ids], labels) and length.

    With `cache_dir` (e.g. WORKDIR/cache) each split is written once to a file named by a hash of the
    tokenizer, task (and its family), max length and the split's data fingerprint; later calls in any process map that
    file instead of tokenising again. Without it, tokenisation stays in memory.
    """
    cache_path = Path(cache_dir) if cache_dir is not None else None
    if cache_path is not None:
        cache_path.mkdir(parents=True, exist_ok=True)
    tokenizer_id = tokenizer_fingerprint(tokenizer)

    def run(ds: datasets.Dataset, split: str) -> datasets.Dataset:
        return _tokenize_split(ds, split, task_data, tokenizer, tokenizer_id, max_length, cache_path)

    return TaskData(
        spec=task_data.spec,
        train=run(task_data.train, "train"),
        evals={split: run(ds, split) for split, ds in task_data.evals.items()},
    )


def make_collator(tokenizer: PreTrainedTokenizerBase, family: str = DEFAULT_FAMILY) -> Collator:
    """The family's dynamic padding (each batch padded to its own longest row, so the cache stores no padding),
    dropping the "length" column."""
    return get_family(family).collator(tokenizer)
