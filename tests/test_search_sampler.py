"""The search's sampler option (`sampler: tpe | gp`): GP proposes once its start-up trials are done, with the
constraints the TPE path sets (a pruned Pareto trial's, the `--max-params` cap); TPE stays the default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from test_search_study import _space, _study, study_file  # noqa: F401 - the tiny study fixture

from elalora_auto.cli import main
from elalora_auto.search import SearchSettings, run_search
from elalora_auto.search.pruning import PRUNED

GP_PARAMS = "gp:relative_params:0"  # the system attr GPSampler writes on each trial whose params its model proposed


def _gp_study_file(study_file: Path, **extra: object) -> Path:
    """The tiny study with two start-up trials; `extra` settings on top."""
    config = {**yaml.safe_load(study_file.read_text()), "startup_trials": 2, **extra}
    study_file.write_text(yaml.safe_dump(config))
    return study_file


def test_gp_proposes_after_its_startup_trials_in_a_pareto_study_with_pruned_trials(study_file: Path,
                                                                                   tmp_path: Path) -> None:
    """Strict halving rungs prune the random draws larger than trial 0 (equal metric, more parameters), each marked
    infeasible (the constraint TPE needs); GP models the complete trials only and proposes once three are done,
    without failing a trial."""
    halving = {"rule": "halving", "min_steps": 3, "reduction_factor": 2, "rung_ties": "hypervolume",
               "baseline_patience": 99}
    path = _gp_study_file(study_file, startup_trials=3, pruning=halving, trial0={"learning_rate": 5e-3, "r_init": 2})
    assert main(["search", "--config", str(path), "--space", str(_space(tmp_path)), "--study", "gp", "--sampler", "gp",
                 "--trials", "10", "--quiet"]) == 0
    study = _study(tmp_path, "gp")
    trials = study.get_trials()
    assert study.user_attrs["settings"]["sampler"] == "gp"
    assert {t.state.name for t in trials} == {"COMPLETE", "PRUNED"}
    assert all(t.constraints == {PRUNED: 1.0} for t in trials if t.state.name == "PRUNED")
    proposed = [t for t in trials if GP_PARAMS in t.system_attrs]
    assert len(proposed) >= 2, [(t.number, t.state.name) for t in trials]
    for t in proposed:  # GP's proposal is what the trial ran, and it came after three complete trials
        drawn = json.loads(t.system_attrs[GP_PARAMS])  # every name with a range (k, target_modules have one value)
        assert set(drawn) == {"r_init", "b", "t_init", "t_final", "delta_t", "learning_rate"}
        assert drawn == {k: t.params[k] for k in drawn}
        assert sum(u.state.name == "COMPLETE" for u in trials if u.number < t.number) >= 3
    done = [t.number for t in trials if t.state.name == "COMPLETE"]
    assert all(t.number > done[2] for t in proposed)  # the draws before were random


def test_gp_with_two_workers_proposes_in_both_beside_pruned_trials(study_file: Path, tmp_path: Path) -> None:
    """Each worker process builds its own GPSampler (seeded by its pid); a trial running in the other one enters the
    batch acquisition through the params GP stored on it. No trial fails.

    The start-up runs in this process first (its draws and rungs are seeded, so which trials complete is fixed):
    once three are complete, every trial either worker starts is GP's, whichever of them finishes first."""
    halving = {"rule": "halving", "min_steps": 3, "reduction_factor": 2, "rung_ties": "hypervolume",
               "baseline_patience": 99}
    path = _gp_study_file(study_file, startup_trials=3, pruning=halving, trial0={"learning_rate": 5e-3, "r_init": 2})
    args = ["search", "--config", str(path), "--space", str(_space(tmp_path)), "--study", "gp2", "--sampler", "gp",
            "--quiet"]
    assert main([*args, "--trials", "9"]) == 0
    startup = _study(tmp_path, "gp2").get_trials()
    assert sum(t.state.name == "COMPLETE" for t in startup) >= 3, [(t.number, t.state.name) for t in startup]
    assert main([*args, "--trials", "16", "--workers", "2"]) == 0
    trials = _study(tmp_path, "gp2").get_trials()
    assert len(trials) == 16 and {t.state.name for t in trials} == {"COMPLETE", "PRUNED"}
    parallel = trials[9:]
    assert all(GP_PARAMS in t.system_attrs for t in parallel), [(t.number, t.state.name) for t in parallel]
    assert len({t.user_attrs["worker"] for t in parallel}) == 2, [(t.number, t.user_attrs["worker"]) for t in trials]


def test_gp_takes_the_max_params_cap_as_its_constraint(study_file: Path, tmp_path: Path) -> None:
    """Single objective under a cap no trial meets: every complete trial is infeasible, and GP still proposes."""
    settings = SearchSettings.from_sources(str(_gp_study_file(study_file)), {
        "space": str(_space(tmp_path)), "study": "capped", "sampler": "gp", "objective": "metric",
        "max_params": 10, "trials": 4})
    study = run_search(settings, progress=False)
    assert isinstance(study.sampler, optuna.samplers.GPSampler)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert all(t.constraints["max_params"] > 0 for t in trials)
    assert [t.number for t in trials if GP_PARAMS in t.system_attrs] == [2, 3]


def test_gp_says_once_when_pruning_keeps_it_at_random(study_file: Path, tmp_path: Path, capsys) -> None:
    """GPSampler counts complete trials only towards its start-up: once as many trials have ended as the start-up
    asks and fewer are complete, the search says so, once, with the `startup_trials` that would let it model."""
    halving = {"rule": "halving", "min_steps": 3, "reduction_factor": 2, "rung_ties": "hypervolume",
               "baseline_patience": 99}
    path = _gp_study_file(study_file, startup_trials=4, pruning=halving, trial0={"learning_rate": 5e-3, "r_init": 2})
    assert main(["search", "--config", str(path), "--space", str(_space(tmp_path)), "--study", "gpn", "--sampler",
                 "gp", "--trials", "6", "--quiet"]) == 0
    trials = _study(tmp_path, "gpn").get_trials()
    first_four = [t.state.name for t in trials[:4]]
    complete = first_four.count("COMPLETE")
    assert complete < 4, first_four  # the strict rungs pruned a draw among the first four
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [f"note: the GP sampler still draws at random: 4 trials ended, {complete} complete, and "
                     "GPSampler counts complete trials only towards its 4 start-up trials (pruning stopped the "
                     f"rest); to let it model, set startup_trials: {max(complete, 1)} in the study file and run the "
                     "search again, or use --sampler tpe, which counts pruned trials too"]
    assert not any(GP_PARAMS in t.system_attrs for t in trials)  # and indeed it never proposed


def test_tpe_stays_the_default(study_file: Path, tmp_path: Path) -> None:
    settings = SearchSettings.from_sources(str(study_file), {"space": str(_space(tmp_path)), "study": "t",
                                                              "trials": 1})
    study = run_search(settings, progress=False)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert study.user_attrs["settings"]["sampler"] == "tpe" == SearchSettings().sampler


@pytest.mark.parametrize("where", ["flag", "study file"])
def test_an_unknown_sampler_is_one_line_before_any_work(study_file: Path, tmp_path: Path, capsys,
                                                        where: str) -> None:
    args = ["search", "--config", str(study_file), "--study", "bad", "--trials", "1", "--quiet"]
    if where == "flag":
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--sampler", "cmaes"])
        assert exit_.value.code == 2
        assert "argument --sampler: invalid choice: 'cmaes' (choose from 'tpe', 'gp')" in capsys.readouterr().err
    else:
        _gp_study_file(study_file, sampler="cmaes")
        assert main(args) == 2
        assert capsys.readouterr().err.strip() == "error: --sampler 'cmaes': choose one of tpe, gp"
    assert not (tmp_path / "runs").exists()


def test_a_study_resumes_only_with_its_own_sampler(study_file: Path, tmp_path: Path, capsys) -> None:
    args = ["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "s", "--quiet"]
    assert main([*args, "--trials", "1", "--sampler", "gp"]) == 0
    assert main([*args, "--trials", "2"]) == 2
    assert "exists with sampler='gp', not 'tpe'; pass --sampler gp to resume it" in capsys.readouterr().err
    assert len(_study(tmp_path, "s").get_trials()) == 1


def test_gp_proposes_without_a_library_warning() -> None:
    """The sampler the search builds for `gp`, proposing in a fresh process (Optuna warns once per process, when GP
    first proposes): no warning, as greenlet (a dependency) lets it optimise its acquisition in batches."""
    code = ("import optuna\n"
            "from elalora_auto.search.worker import make_sampler\n"
            "study = optuna.create_study(sampler=make_sampler('gp', 0, 2))\n"
            "study.optimize(lambda t: (t.suggest_float('x', -1, 1) - 0.3) ** 2, n_trials=4)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [line for line in proc.stderr.splitlines() if "[W " in line or "Warning" in line], proc.stderr
