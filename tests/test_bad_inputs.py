"""Bad input to every command ends in one line naming the fix: a non-zero exit, no traceback, no hang, and a study
it was aimed at left byte-identical.

Each case runs as a real `elalora-auto` process (the CLI's own printing and exit code, not main()'s). The cases
share one small study, created once, and run a few at a time; most fail before torch is even imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_trial import write_tiny_sst2

from elalora_auto.cli import main
from elalora_auto.tiny import build_tiny_bert

TIMEOUT_S = 240
STUDY = "bad-inputs"
WORDS = ("the", "movie", "was", "very", "great", "good", "fun", "fine", "bad", "awful", "boring", "long")


def _space(method_params: str) -> str:
    return f"method: elalora\nmethod_params:\n{method_params}\n"


SPACES = {
    "r_init_zero.yaml": _space("  r_init: {type: int, low: 0, high: 4, default: 2}"),
    "unknown_param.yaml": _space("  rr_init: {type: int, low: 1, high: 4}"),
    "beta_above_one.yaml": _space("  beta1: {type: float, low: 0.5, high: 1.5, default: 0.85}"),
    "lora_dropout.yaml": "method: lora\nmethod_params:\n  lora_dropout: {type: float, low: 0.0, high: 1.5}\n",
    "lora_unknown.yaml": "method: lora\nmethod_params:\n  use_dora: {type: categorical, choices: [true]}\n",
    "eva_rho_below_one.yaml": "method: eva\nmethod_params:\n  rho: {type: float, low: 0.5, high: 2.0, default: 2.0}\n",
    "final_budget_zero.yaml": _space("  final_budget: {type: categorical, choices: [0.0, 0.5, 1.0], default: 1.0}"),
}
SPACES_SAY = {"r_init_zero.yaml": "method_params.r_init = 0: r_init=0 must be >= 1",
              "unknown_param.yaml": "unknown elalora parameter 'rr_init' (valid: ",
              "beta_above_one.yaml": "beta1 = 1.5: beta1=1.5 must be in [0, 1)",
              "lora_dropout.yaml": "lora_dropout = 1.5",
              "lora_unknown.yaml": "unknown lora parameter 'use_dora' (valid: ",
              "eva_rho_below_one.yaml": "method_params.rho = 0.5: bad eva parameters: `rho` must be >= 1.0",
              "final_budget_zero.yaml": "final_budget = 0.0: final_budget=0.0 must be in (0, 1]"}
STUDY_FILES = {
    "trials_many.yaml": 'trials: "many"\n',
    "batch_zero.yaml": "batch_size: 0\n",
    "storage_malformed.yaml": "storage: 'sqlite:x.db'\n",
    "sampler_unknown.yaml": "sampler: cmaes\n",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny model, tiny SST-2 data, broken copies of both, and one created study (no trial run)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    model = build_tiny_bert(root / "model", WORDS)
    broken = {"no-weights": "model.safetensors", "no-tokenizer": "tokenizer*", "truncated": None}
    for name, remove in broken.items():
        folder = root / name
        build_tiny_bert(folder, WORDS)
        for path in folder.glob(remove or "-"):
            path.unlink()
    with (root / "truncated" / "model.safetensors").open("r+b") as handle:
        handle.truncate(2000)
    data = write_tiny_sst2(root / "glue")
    latin = write_tiny_sst2(root / "latin1")
    with (latin / "SST-2" / "train.tsv").open("ab") as handle:
        handle.write("un caf\xe9 tr\xe8s good\t1\n".encode("latin-1"))
    for name, text in {**SPACES, **STUDY_FILES, **CLASS_FILES}.items():
        (root / name).write_text(text)
    (root / "a-file").write_text("not a folder\n")
    workdir = root / "runs"
    assert main(["search", "--task", "sst2", "--data-dir", str(data), "--model", str(model), "--workdir",
                 str(workdir), "--study", STUDY, "--trials", "2", "--max-steps", "8", "--no-tracking", "--quiet",
                 "--create-only"]) == 0
    return {"root": root, "model": model, "data": data, "latin": latin, "workdir": workdir,
            "journal": workdir / "optuna-journal.log"}


def _with(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with the value after `flag` replaced."""
    at = args.index(flag) + 1
    return [*args[:at], value, *args[at + 1:]]


def cases(w: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, a phrase the one line must hold)."""
    root, wd = w["root"], str(w["workdir"])
    train = ["train", "--task", "sst2", "--data-dir", str(w["data"]), "--model", str(w["model"]), "--max-steps", "4"]
    search = ["search", "--task", "sst2", "--data-dir", str(w["data"]), "--model", str(w["model"]), "--workdir", wd,
              "--study", STUDY, "--max-steps", "8", "--no-tracking", "--quiet"]
    at = ["--study", STUDY, "--workdir", wd]
    out = {
        "train: task typo": (_with(train, "--task", "sst3"), "did you mean 'sst2'"),
        "train: learning_rate=abc": (train + ["--set", "training.learning_rate=abc"], "training.learning_rate"),
        "train: batch_size=0": (train + ["--set", "batch_size=0"], "training.batch_size"),
        "train: params.r_init=0": (train + ["--set", "params.r_init=0"], "r_init=0 must be >= 1"),
        "train: unknown param": (train + ["--set", "params.rr_init=2"], "unknown elalora parameter 'rr_init' (valid"),
        "train: final_budget=0": (train + ["--set", "params.final_budget=0"], "final_budget=0 must be in (0, 1]"),
        "train: eva rho=0.5": (train + ["--method", "eva", "--set", "params.rho=0.5"], "`rho` must be >= 1.0"),
        "train: eva rho=abc": (train + ["--method", "eva", "--set", "params.rho=abc"], "{'rho': 'abc'}"),
        "train: eva_batches=0": (train + ["--method", "eva", "--set", "params.eva_batches=0"], "eva_batches=0 must be"),
        "train: eva unknown param": (train + ["--method", "eva", "--set", "params.rhoo=2"],
                                     "unknown eva parameter 'rhoo'"),
        "train: model typo": (_with(train, "--model", "minlm"), "did you mean 'minilm'"),
        "train: no weights": (_with(train, "--model", str(root / "no-weights")), "has no weights"),
        "train: truncated weights": (_with(train, "--model", str(root / "truncated")), "truncated"),
        "train: no tokenizer": (_with(train, "--model", str(root / "no-tokenizer")), "tokenizer"),
        "train: latin-1 data": (_with(train, "--data-dir", str(w["latin"])), "not UTF-8"),
        "train: --output a folder": (train + ["--output", str(root)], "is a folder"),
        "train: --max-steps 0": (_with(train, "--max-steps", "0"), "at least 1"),
        "search: study typo": (["search", "--config", "sst2-minlm"], "did you mean 'sst2-minilm'"),
        "search: space typo": (search + ["--space", "elalor"], "did you mean 'elalora'"),
        "status: malformed storage": (["status", "--storage", "postgresql:db"], "postgresql:///db"),
        "search: model typo": (_with(search, "--model", "minlm"), "did you mean 'minilm'"),
        "search: no tokenizer": (_with(search, "--model", str(root / "no-tokenizer")), "tokenizer"),
        "search: trials 'many'": (search + ["--config", str(root / "trials_many.yaml")], "trials"),
        "search: batch_size 0": (search + ["--config", str(root / "batch_zero.yaml")], "batch_size"),
        "search: storage in a study file": (search + ["--config", str(root / "storage_malformed.yaml")], ":///"),
        "search: sampler in a study file": (search + ["--config", str(root / "sampler_unknown.yaml")],
                                            "--sampler 'cmaes': choose one of tpe, gp"),
        "search: --sampler cmaes": (search + ["--sampler", "cmaes"], "invalid choice: 'cmaes'"),
        "search: --timeout -5": (search + ["--timeout", "-5"], "> 0"),
        "search: --trials 0": (search + ["--trials", "0"], "at least 1"),
        "search: --workdir a file": (_with(search, "--workdir", str(root / "a-file")), "is a file"),
        "search: --storage sqlite:x.db": (search + ["--storage", "sqlite:x.db"], "sqlite:///x.db"),
        "worker: no such study": (["worker", "--study", "nope", "--workdir", wd], "no study 'nope'"),
        "worker: malformed storage": (["worker", "--study", STUDY, "--storage", "sqlite:x.db"], "sqlite:///x.db"),
        "status: --workdir a file": (["status", "--workdir", str(root / "a-file")], "is a file"),
        "status: no such study": (["status", "--study", "nope", "--workdir", wd], "no study 'nope'"),
        "report: --out a file": (["report", *at, "--out", str(root / "a-file")], "is a file"),
        "export: --out a file": (["export", *at, "--out", str(root / "a-file")], "is a file"),
        "export: no such study": (["export", "--study", "nope", "--workdir", wd, "--out", str(root / "x")], "nope"),
        "ui: --port 99999": (["ui", "--workdir", wd, "--port", "99999"], "1..65535"),
        "ui: --port abc": (["ui", "--workdir", wd, "--port", "abc"], "whole number"),
        "demo: --trials 0": (["demo", "--workdir", str(root / "demo"), "--trials", "0"], "at least 1"),
        "demo: --workdir a file": (["demo", "--workdir", str(root / "a-file")], "is a file"),
    }
    if not _has_cuda():
        out["search: --device cuda"] = (search + ["--device", "cuda"], "no CUDA device")
        out["worker: --device cuda"] = (["worker", "--study", STUDY, "--workdir", wd, "--device", "cuda",
                                         "--no-tracking"], "no CUDA device")
        out["train: device=cuda"] = (train + ["--set", "training.device=cuda"], "no CUDA device")
    for name in SPACES:
        method = next((m for m in ("lora", "eva") if name.startswith(m)), "elalora")
        out[f"search: space {name}"] = (search + ["--method", method, "--space", str(root / name)], SPACES_SAY[name])
    out.update(class_cases(w, train, search))
    return out


# Issue 30's classes: tracking URIs, GPU ids, registry names, `custom:` blocks, enumerated training settings,
# empty names and paths. Relative paths in these files resolve against the cases' cwd (the fixture's root).
_CUSTOM = "custom:\n  train_file: glue/SST-2/train.tsv\n  text_columns: [sentence]\n"
CLASS_FILES = {
    "custom_other_name.yaml": f"task: sst2\nmodel: model\n{_CUSTOM}  name: other\n",
    "custom_typo.yaml": "task: mine\nmodel: model\ncustom:\n  train_fil: glue/SST-2/train.tsv\n",
    "custom_not_a_mapping.yaml": "custom: 5\n",
    "study_custom_other_name.yaml": f"{_CUSTOM}  name: other\n",
    "study_tracking_uri.yaml": "tracking_uri: 'foo://x'\n",
    "study_trial0_typo.yaml": "trial0: {r_int: 4}\n",
    "params_list.yaml": "task: sst2\nmodel: model\nparams: [1, 2]\n",
    "epochs_unknown_param.yaml": "task: sst2\nmodel: model\ndata: {data_dir: glue}\ntraining: {max_steps: null, epochs: 1}\n"
                                 "params: {rr_init: 2}\n",
    "bf16_space.yaml": _space("  r_init: {type: int, low: 2, high: 4}") + "training_params:\n"
                                                                        "  bf16: {type: categorical, choices: [maybe]}\n",
}


def class_cases(w: dict[str, Path], train: list[str], search: list[str]) -> dict[str, tuple[list[str], str]]:
    """Issue 30's cases: name -> (arguments, a phrase the one line must hold)."""
    root, wd = w["root"], str(w["workdir"])
    tracked = [a for a in search if a != "--no-tracking"]  # tracking on: a bad store must stop the search anyway
    at = ["--study", STUDY, "--workdir", wd]
    unknown_scheme = "no tracking store for 'foo:' URIs"
    out = {
        "search: --tracking-uri unknown scheme": (tracked + ["--tracking-uri", "foo://x"], unknown_scheme),
        "search: tracking_uri in a study file": (tracked + ["--config", str(root / "study_tracking_uri.yaml")],
                                                 unknown_scheme),
        "search: --tracking-uri sqlite:x.db": (tracked + ["--tracking-uri", "sqlite:x.db"], "sqlite:///x.db"),
        "search: --tracking-uri a folder store": (tracked + ["--tracking-uri", str(root / "store")], "sqlite:///"),
        "worker: --tracking-uri unknown scheme": (["worker", *at, "--tracking-uri", "foo://x"], unknown_scheme),
        "ui: --tracking-uri unknown scheme": (["ui", "--workdir", wd, "--tracking-uri", "foo://x"], unknown_scheme),
        "ui: --tracking-uri a server": (["ui", "--workdir", wd, "--tracking-uri", "http://127.0.0.1:9"],
                                        "already served"),
        "export: --register ''": (["export", *at, "--out", str(root / "exported"), "--register", ""],
                                  "registered model name"),
        "export: --register a/b": (["export", *at, "--out", str(root / "exported"), "--register", "a/b"],
                                   "without '/'"),
        "export: --tracking-uri without --register": (["export", *at, "--out", str(root / "exported"),
                                                       "--tracking-uri", "sqlite:///m.db"], "add --register NAME"),
        "export: --tracking-uri unknown scheme": (["export", *at, "--out", str(root / "exported"), "--register", "m",
                                                   "--tracking-uri", "foo://x"], unknown_scheme),
        "search: --gpus beyond the GPUs here": (search + ["--gpus", str(_gpu_count())], "there is no GPU"),
        "search: --gpus with --device cpu": (search + ["--gpus", "0", "--device", "cpu"], "--device is cpu"),
        "train: custom.name differs from task": (["train", "--config", str(root / "custom_other_name.yaml")],
                                                 "custom.name 'other' differs from task 'sst2'"),
        "train: custom key typo": (["train", "--config", str(root / "custom_typo.yaml")],
                                   "custom: unknown key 'train_fil' (valid: "),
        "train: custom not a mapping": (["train", "--config", str(root / "custom_not_a_mapping.yaml")],
                                        "custom: expected a mapping with the keys name, train_file"),
        "search: custom.name differs in a study file": (
            search + ["--config", str(root / "study_custom_other_name.yaml")], "custom.name 'other' differs"),
        "search: trial0 typo": (search + ["--config", str(root / "study_trial0_typo.yaml")],
                                "trial0: unknown parameter 'r_int'"),
        "train: training.bf16=maybe": (train + ["--set", "training.bf16=maybe"],
                                       "training.bf16: expected true or false or 'auto', got 'maybe'"),
        "train: training.bf16='true' (text)": (train + ["--set", "training.bf16='true'"], "training.bf16"),
        "train: training.device=gpu": (train + ["--set", "training.device=gpu"],
                                       "training.device: expected 'auto' or 'cpu' or 'cuda'"),
        "search: space training_params.bf16": (search + ["--space", str(root / "bf16_space.yaml")],
                                               "training_params.bf16"),
        "train: params a list": (["train", "--config", str(root / "params_list.yaml")], "'params' must be a mapping"),
        "train: by epochs, unknown param": (["train", "--config", str(root / "epochs_unknown_param.yaml"),
                                             "--export", str(root / "epochs-export")],
                                            "unknown elalora parameter 'rr_init'"),
        "search: --study ''": (search + ["--study", ""], "study: empty"),
        "search: --workdir ''": (_with(search, "--workdir", ""), "empty"),
        "train: --export ''": (train + ["--export", ""], "empty"),
        "train: model=''": (train + ["--set", "model="], "model: expected a name"),
    }
    return out


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "elalora_auto.cli", *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def outcomes(world) -> dict[str, tuple[subprocess.CompletedProcess, bytes, bytes]]:
    """Every case run once, four at a time: (process, journal before, journal after)."""
    before = world["journal"].read_bytes()
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = {name: pool.submit(_run, args, world["root"]) for name, (args, _) in cases(world).items()}
        done = {name: future.result() for name, future in runs.items()}
    after = world["journal"].read_bytes()
    return {name: (run, before, after) for name, run in done.items()}


CASE_NAMES = sorted(cases({k: Path("/x") for k in ("root", "model", "data", "latin", "workdir")}))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_and_a_non_zero_exit(name, world, outcomes):
    run, before, after = outcomes[name]
    phrase = cases(world)[name][1]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode not in (0, None), f"exit 0 for {name}: {run.stdout[-2000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if lines and lines[0].startswith("usage:"):  # argparse: its usage, then the one error line
        assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), run.stderr
        assert ": error: argument" in lines[-1], run.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    assert phrase in lines[-1], lines[-1]
    assert after == before, f"{name} changed the study's journal"


def test_demo_checks_its_flags_before_writing_anything(world, outcomes):
    assert not (world["root"] / "demo").exists()


def test_bad_stores_names_and_paths_write_nothing(world, outcomes):
    """The study was created untracked: none of the bad tracking cases may have made an MLflow store, spool or
    run; the refused exports and trials wrote no folder; an empty --workdir wrote nothing into the cwd."""
    workdir, root = world["workdir"], world["root"]
    assert not [p.name for p in workdir.iterdir() if p.name.startswith(("mlflow", "mlartifacts"))]
    for name in ("exported", "epochs-export", "store", "m.db", "cache", "trials"):
        assert not (root / name).exists(), name


def test_ui_on_a_taken_port_fails_at_once_naming_a_free_one(world):
    """`mlflow server` on a taken port retried for about 90 s and exited 0; `ui` now checks the port first."""
    import socket
    import time

    store = world["root"] / "ui-store.db"
    store.touch()  # `ui` wants an existing store file; the port is checked before the store is opened
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        start = time.perf_counter()
        run = _run(["ui", "--tracking-uri", f"sqlite:///{store}", "--port", str(port)], world["root"])
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert f"port {port} on 127.0.0.1 is taken" in lines[0] and "pass --port " in lines[0], lines[0]
    assert time.perf_counter() - start < 60
    assert store.stat().st_size == 0  # the store was not opened (nor migrated)


def test_an_unknown_model_fails_fast_offline(monkeypatch):
    """No hub retries: a name that is neither a folder nor cached fails offline without one network call (counted
    by Python's own audit events for DNS look-ups and socket connections, not by a clock)."""
    from elalora_auto.errors import UserError
    from elalora_auto.loading import resolve_model

    calls, recording = [], [True]

    def audit(event: str, args: tuple) -> None:
        if recording[0] and event in ("socket.getaddrinfo", "socket.connect"):
            calls.append((event, args))

    sys.addaudithook(audit)  # a hook stays for the process; it records only while this test runs
    try:
        with pytest.raises(UserError, match="did you mean 'minilm'"):
            resolve_model("minlm")
    finally:
        recording[0] = False
    assert calls == []
