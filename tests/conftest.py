"""Shared test set-up: offline, quiet, deterministic, and small thread counts for a 2-core machine."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per process: test subprocesses (workers, stock-PEFT checks) would otherwise oversubscribe 2 cores,
# and OpenMP spin-waiting then slows tiny models down by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


@pytest.fixture
def glue_dir() -> Path:
    """The real GLUE copy beside the project; tests needing it skip when it is absent."""
    if not GLUE_DIR.is_dir():
        pytest.skip(f"real GLUE data not found at {GLUE_DIR} (optional; only present on dev machines)")
    return GLUE_DIR


TINY_WORDS = (
    "the a movie film was is great good bad awful fine boring fun plot actor acting story long short "
    "not very really quite cat dog sat on mat man woman plays guitar sings city big small red blue "
    "yes no maybe question answer because so and or but it this that"
).split()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny BERT (2 labels) plus tokenizer, loadable by path like any hub model."""
    from elalora_auto.tiny import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), TINY_WORDS, num_labels=2)
