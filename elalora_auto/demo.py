"""`elalora-auto demo`: a complete small study with no network, through the real code paths.

The model is a tiny BERT built here (elalora_auto.tiny) and the task a synthetic keyword-sentiment set written
as CSV files and read by the ordinary custom-task loader. Everything after that is what a real study does:
search (Optuna, pruning, Pareto front), trials with ElaLoRA rank rounds, MLflow tracking, export.
"""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path
from typing import Any, Callable

from elalora_auto.workdir import Workdir

POSITIVE = ("great", "good", "fun", "wonderful", "superb", "lovely")
NEGATIVE = ("bad", "awful", "boring", "dull", "terrible", "weak")
SUBJECTS = ("movie", "film", "plot", "story", "acting", "actor", "music", "ending", "cast", "script")
ADVERBS = ("very", "really", "quite", "rather", "truly", "so")
FILLERS = ("today", "again", "overall", "at times", "for me", "in the end", "by far", "as usual")
OPENERS = ("the", "this", "that", "my friend said the", "honestly the", "i think the")
TASK_TEXT = ("keyword sentiment: short reviews like 'honestly the plot was really dull at times'; the label is "
             "positive or negative depending on one of 12 key adjectives, among random subjects, adverbs and "
             "filler words")


def demo_words() -> list[str]:
    """Every word the generator can write: the tiny tokenizer's vocabulary."""
    parts = POSITIVE + NEGATIVE + SUBJECTS + ADVERBS + FILLERS + OPENERS + ("was", "is")
    return sorted({word for part in parts for word in part.split()})


def write_dataset(folder: Path, n_train: int = 800, n_eval: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """Balanced train.csv / eval.csv; deterministic for a seed, so every demo run sees the same rows."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def row(i: int) -> tuple[str, str]:
        label = "positive" if i % 2 == 0 else "negative"
        adjective = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        words = [rng.choice(OPENERS), rng.choice(SUBJECTS), rng.choice(("was", "is"))]
        if rng.random() < 0.6:
            words.append(rng.choice(ADVERBS))
        words.append(adjective)
        if rng.random() < 0.5:
            words.append(rng.choice(FILLERS))
        return " ".join(words), label

    paths = []
    for name, count in (("train.csv", n_train), ("eval.csv", n_eval)):
        path = folder / name
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(row(i) for i in range(count))
        paths.append(path)
    return paths[0], paths[1]


def demo_inputs(workdir: Path) -> dict[str, Any]:
    """Build the demo's tiny model and task files under `workdir`; the search options that point at them.

    `search --config demo` uses these too, so the built-in demo study runs as a plain search as well.
    """
    from elalora_auto.tiny import build_tiny_bert

    model_dir = Workdir(workdir).demo_model
    if not (model_dir / "config.json").is_file():
        build_tiny_bert(model_dir, demo_words(), num_labels=2, hidden_size=64, num_layers=2, seed=0)
    train, evaluation = write_dataset(Workdir(workdir).demo_data)
    custom = {"train_file": str(train), "eval_file": str(evaluation),
              "text_columns": ["text"], "label_column": "label"}
    return {"task": "keyword-sentiment", "model": str(model_dir), "custom": custom, "workdir": str(workdir)}


def demo_settings(workdir: Path, trials: int | None = None, tracking: bool = True) -> Any:
    """The demo study (studies/demo.yaml) pointed at the model and data it builds under `workdir`."""
    from elalora_auto.search import SearchSettings

    overrides = {**demo_inputs(workdir), "trials": trials, "no_tracking": not tracking or None}
    return SearchSettings.from_sources("demo", overrides)


def run_demo(workdir: str | Path = "elalora_runs", trials: int | None = None, tracking: bool = True,
             echo: Callable[[str], None] = print) -> Any:
    """Run the demo study, print its front, export its knee trial, and say what to open next. Returns the study."""
    import torch

    from elalora_auto.export import export_trial
    from elalora_auto.results import knee_row, study_rows, summary_table
    from elalora_auto.search import run_search
    from elalora_auto.tracking import make_listeners

    # One intra-op thread: the tiny model gains nothing from two, and on a busy 2-core machine two threads
    # spin against other processes (measured under load: 4 s per trial with one thread, 119 s with two).
    torch.set_num_threads(1)
    workdir = Path(workdir).resolve()
    start = time.perf_counter()
    echo(f"elalora-auto demo: a tiny BERT (built locally) on a synthetic task, no network.\nTask: {TASK_TEXT}.")
    settings = demo_settings(workdir, trials, tracking)
    study = run_search(settings, make_listeners(settings), echo=echo, progress=False)
    trials_dir = Workdir(workdir).trials(study.study_name)
    rows = study_rows(study, trials_dir)
    echo(summary_table(study, rows))
    chosen = knee_row(rows)
    if chosen is not None:
        # The demo owns its export folder: a re-run replaces it.
        exported = export_trial(study, chosen, trials_dir / str(chosen.number), Workdir(workdir).demo_export,
                                force=True)
        echo(f"exported trial {chosen.number} (the knee of the front) to {exported}")
    echo(f"done in {time.perf_counter() - start:.0f} s; everything is under {workdir}")
    echo("next:")
    if tracking:
        echo(f"  elalora-auto ui --workdir {workdir}        # MLflow: runs, metrics, rank plots")
    echo(f"  elalora-auto status --workdir {workdir}")
    echo(f"  elalora-auto report --study {study.study_name} --workdir {workdir}")
    echo(f"  elalora-auto export --study {study.study_name} --workdir {workdir} --pick knee --out DIR")
    return study
