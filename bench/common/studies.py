"""A search arm on a built-in study file, as the search benches run one: the study file's settings with the arm's
method, seed, budget and pruning on top; its per-trial lines written as the search goes (from the
`trial_finished` event); its trials read back through the project's own reader; a study's results row.

A trial line and a study row share the study's key (task, arm, seed, trials, steps): a study already in a results
file is skipped, one cut short resumes from its Optuna journal in the workdir."""

from __future__ import annotations

import argparse
import datetime
import json
import warnings
from pathlib import Path
from typing import Any, Callable

from common.notes import command_line, git_commit, machine_note
from common.results import RESULTS_DIR, append_jsonl

ARMS = ("elalora", "lora", "adalora", "trainer-hps")
PROJECT_ARMS = ARMS[:3]  # the arms that are elalora-auto searches (and so take a --space)
STUDY_FILES = {"sst2": "sst2-minilm", "mnli": "mnli-minilm", "mrpc": "mrpc-minilm"}
SMOKE_TASK, SMOKE_FILE, SMOKE_TRIALS, SMOKE_STEPS = "smoke", "demo", 2, 20
SEARCH_RESULTS = RESULTS_DIR / "search_vs_peers.jsonl"  # the search arms' studies (other scripts pair with them)
NO_PRUNING = '{"rule": "none"}'
Record = dict[str, Any]
# transformers 5 warns on every PEFT model built (a deprecated name PEFT still calls): one line per trial of noise
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def arm_args(workdir: Path, data_dir: Path, max_steps: int | None = None,
             pruning_json: str = NO_PRUNING) -> argparse.Namespace:
    """What `planned_steps` and `arm_settings` read, for a script that runs an arm outside a search bench."""
    return argparse.Namespace(workdir=workdir, data_dir=data_dir, max_steps=max_steps, pruning_json=pruning_json)


def study_key(record: Record) -> tuple[Any, ...]:
    """What makes two studies the same experiment: a study with other steps or another budget is another one."""
    return record["task"], record["arm"], record["seed"], record["trials"], record["steps"]


def planned_steps(args: argparse.Namespace, task: str) -> int:
    """Optimizer steps per trial: --max-steps, else the smoke size, else the study file's."""
    from elalora_auto.search.space import read_yaml, resolve_resource

    if args.max_steps is not None:
        return args.max_steps
    if task == SMOKE_TASK:
        return SMOKE_STEPS
    return int(read_yaml(resolve_resource(STUDY_FILES[task], "studies"))["max_steps"])


def study_pruning(task: str) -> str:
    """The built-in study file's own pruning settings as JSON (what a user of that study gets), for a bench that
    measures the shipped search rather than every trial run to the end."""
    from elalora_auto.search.space import read_yaml, resolve_resource

    return json.dumps(read_yaml(resolve_resource(STUDY_FILES.get(task, SMOKE_FILE), "studies")).get("pruning", {}))


def arm_settings(args: argparse.Namespace, key: Record) -> Any:
    """The study file with this arm's method, budget, seed, study name, workdir and pruning on top; the
    trainer-hps arm gets the lora arm's settings (data, model, steps), which it reads but does not search with."""
    from elalora_auto.search import SearchSettings

    method = "lora" if key["arm"] == "trainer-hps" else key["arm"]
    workdir = args.workdir / key["task"]
    overrides: dict[str, Any] = {"data_dir": str(args.data_dir)}
    config = STUDY_FILES.get(key["task"], SMOKE_FILE)
    if key["task"] == SMOKE_TASK:
        from elalora_auto.demo import demo_inputs

        overrides = demo_inputs(workdir.resolve())
    # a paired search arm's options
    overrides |= {k: key[k] for k in ("sampler", "startup_trials", "sampler_seed") if k in key}
    overrides |= {"method": method, "space": key.get("space", method), "trials": key["trials"], "seed": key["seed"],
                  "max_steps": key["steps"], "study": key["study"], "workdir": str(workdir), "no_tracking": True,
                  "pruning": json.loads(args.pruning_json)}
    return SearchSettings.from_sources(config, overrides)


def trial_record(key: Record, number: int, state: str, accuracy: float | None, size: int | None,
                 steps: int | None, wall: float | None, params: dict[str, Any]) -> Record:
    return {"kind": "trial", **key, "number": number, "state": state, "accuracy": accuracy,
            "trainable_params": size, "steps_done": steps, "wall_time_s": wall, "params": params}


def trial_listener(results: Path, key: Record) -> Callable[[Any], None]:
    """The elalora-auto arms' per-trial lines, written from the search's `trial_finished` event."""
    def listen(event: Any) -> None:
        if event.kind != "trial_finished":
            return
        data = event.data
        done = data["result"] if data["state"].name == "COMPLETE" else None  # steps and time of complete trials
        values = data.get("values") or [None, None]
        size = None if values[1] is None else int(values[1])  # Optuna keeps objective values as floats
        append_jsonl(results, trial_record(key, data["trial_number"], data["state"].name, values[0], size,
                                            done and done.steps_done, done and done.wall_time_s, data["params"]))

    return listen


def run_project_arm(settings: Any, results: Path, key: Record) -> tuple[Any, Any, Path]:
    """elalora-auto's own search; resumes the study when it exists (journal in the workdir). Library log lines go to
    the workdir's log, as under the CLI's `search`, so a long bench run prints its own lines only."""
    from elalora_auto.output import library_output
    from elalora_auto.search import run_search
    from elalora_auto.search.plan import plan_study
    from elalora_auto.workdir import Workdir

    with library_output(settings.workdir):
        study = run_search(settings, [trial_listener(results, key)], progress=False)
    return study, plan_study(settings), Workdir(settings.workdir).trials(study.study_name)


def study_rows_of(study: Any, trials_dir: Path | None) -> list[Record]:
    """Every trial as the project's reader sees it (accuracy, size, steps from result.json), with the steps and
    wall time the trainer-hps arm keeps in user attrs, and Optuna's duration where a trial recorded none."""
    from elalora_auto.results import study_rows

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for row in study_rows(study, trials_dir):
        trial = trials[row.number]
        wall = trial.user_attrs.get("wall_time_s") or (trial.duration and trial.duration.total_seconds())
        rows.append({"number": row.number, "state": row.state.name, "accuracy": row.metric,
                     "trainable_params": row.trainable_params,
                     "steps_done": row.reached.steps_done if row.reached.steps_done is not None
                     else trial.user_attrs.get("steps_done"), "wall_time_s": wall, "params": dict(row.params)})
    return rows


def study_record(key: Record, study: Any, plan: Any, trials_dir: Path | None, before: str, elapsed: float,
                 threads: int) -> Record:
    rows = study_rows_of(study, trials_dir)
    settings = plan.settings
    return {"kind": "study", **key, "metric": plan.primary_metric, "baseline": plan.baseline,
            "steps_per_trial": plan.total_steps, "eval_every": plan.eval_every, "batch_size": settings.batch_size,
            "max_length": settings.max_length, "max_train_samples": settings.max_train_samples,
            "pruning": settings.pruning.rule, "rows": rows,
            "steps_total": sum(r["steps_done"] or 0 for r in rows),
            "wall_time_s": round(sum(r["wall_time_s"] or 0.0 for r in rows), 1), "elapsed_s": round(elapsed, 1),
            "threads": threads, "command": command_line(), "machine_before": before, "machine_after": machine_note(),
            "commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


