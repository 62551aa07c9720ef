"""Multi-fidelity pruning (`pruning.rule: halving`) and `rule: none`: rung steps, Optuna's successive halving in
single-objective mode, the non-dominated-rank rung rule in Pareto mode."""

from __future__ import annotations

import optuna
import pytest

from elalora_auto.errors import ConfigError
from elalora_auto.search.pareto import front_ranks
from elalora_auto.search.pruning import RUNG_SIZES, PruningRule, rung_cutoff
from elalora_auto.search.settings import PruningSettings, SearchSettings

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_rungs_sit_on_evaluations_before_the_end_of_the_run() -> None:
    assert PruningSettings(rule="halving").rungs(50, 300) == [50, 150]
    assert PruningSettings(rule="halving", min_steps=100, reduction_factor=2).rungs(50, 1000) == [100, 200, 400, 800]
    assert PruningSettings().rungs(50, 300) == [] and PruningSettings(rule="none").rungs(50, 300) == []
    with pytest.raises(ConfigError, match="min_steps 75 is not a multiple of eval_every 50.*use 50"):
        PruningSettings(rule="halving", min_steps=75).rungs(50, 300)
    with pytest.raises(ConfigError, match="not before the end of the 300-step run"):
        PruningSettings(rule="halving", min_steps=300).rungs(100, 300)


@pytest.mark.parametrize("pruning, message", [
    ({"rule": "hyperband"}, "pruning.rule 'hyperband': choose one of median, halving, none"),
    ({"rule": "halving", "reduction_factor": 1}, "pruning.reduction_factor: must be 2 or more"),
    ({"rule": "halving", "rung_ties": "crowding"},
     "pruning.rung_ties 'crowding': choose one of keep, hypervolume, adaptive"),
    ({"rule": "halving", "min_steps": 0}, "pruning.min_steps: must be > 0"),
    ({"baseline_patience": 0}, "pruning.baseline_patience: must be > 0"),
])
def test_bad_pruning_settings_fail_with_one_line(pruning: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSettings.from_dict({"task": "sst2", "pruning": pruning})


def test_front_ranks_sort_points_into_successive_fronts() -> None:
    # (metric up, cost down): (0.9, 100) and (0.7, 50) are the front; (0.8, 200) is behind (0.9, 100) only
    assert front_ranks([(0.9, 100), (0.8, 200), (0.7, 50), (0.6, 300)]) == [0, 1, 0, 2]
    assert front_ranks([]) == []


def test_single_objective_halving_is_optunas_successive_halving_at_the_rungs() -> None:
    rule = PruningRule(PruningSettings(rule="halving", baseline_patience=99, reduction_factor=3), multi=False,
                       baseline=0.5, margin=0.05, rungs=[2, 6])
    study = optuna.create_study(direction="maximize", pruner=rule.pruner())
    first = study.ask()
    rule.check(first, 2, 0.9, 100)  # alone at the rung: goes on
    rule.check(first, 4, 0.5, 100)  # between rungs: nothing to decide
    second = study.ask()
    with pytest.raises(optuna.TrialPruned, match=r"not among the best 1/3 of the trials at rung 0 \(step 2\): 0.5000"):
        rule.check(second, 2, 0.5, 100)
    assert study.trials[second.number].user_attrs["prune_reason"].startswith("not among the best 1/3")
    third = study.ask()
    rule.check(third, 2, 0.95, 100)  # better than every trial at the rung


def test_pareto_halving_keeps_the_rungs_front_and_stops_what_it_dominates() -> None:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    rule = PruningRule(PruningSettings(rule="halving", baseline_patience=99, rung_ties="hypervolume"), multi=True,
                       baseline=0.5, margin=0.05, storage=storage, rungs=[2, 6])
    big = study.ask()
    rule.check(big, 2, 0.9, 200)
    worse_and_bigger = study.ask()
    with pytest.raises(optuna.TrialPruned, match=r"rung 0 \(step 2\), 0.8000 with 300 parameters is on "
                                                 r"non-dominated front 2 of 2 trials"):
        rule.check(worse_and_bigger, 2, 0.8, 300)
    small = study.ask()
    rule.check(small, 2, 0.7, 50)  # weaker, but smaller than everything at the rung: on its front, goes on
    rule.check(small, 4, 0.1, 50)  # not a rung (and the baseline rule waits 99 evaluations)
    assert study.trials[small.number].user_attrs[RUNG_SIZES] == {"2": 50}
    assert study.trials[worse_and_bigger.number].intermediate_values == {2: 0.8}
    # On the front too, but 4 trials at the rung leave room for 1: the front is split by hypervolume contribution
    # (reference 0.5, 330 parameters): small 20, this one 7.5, big 6.5, so only small's place goes on.
    middle = study.ask()
    with pytest.raises(optuna.TrialPruned, match=r"0.8500 with 150 parameters is on non-dominated front 1 of 4 "
                                                 r"trials; only the best 1 \(1/3, by front, then by hypervolume"):
        rule.check(middle, 2, 0.85, 150)


def test_rung_cutoff_fills_the_quota_by_front_then_by_hypervolume_contribution() -> None:
    points = [(0.70, 50.0), (0.90, 200.0), (0.80, 300.0), (0.85, 150.0), (0.60, 400.0), (0.62, 30.0)]
    ranks, kept, goes_on = rung_cutoff(points, 2, reference=(0.5, 440.0))
    assert ranks == [0, 0, 1, 0, 2, 0] and kept == 3
    # front 0 holds four points for three places. Areas each adds: (0.62, 30) 0.12 x 20 = 2.4, (0.70, 50) 0.08 x 100,
    # (0.85, 150) 0.15 x 50, (0.90, 200) 0.05 x 240: the cheapest, barely above the floor, adds the least
    assert goes_on == [True, True, False, True, False, False]
    assert rung_cutoff(points, 2)[2] == [True, True, False, True, False, True]
    assert rung_cutoff([(0.7, 50.0), (0.7, 50.0)], 2, reference=(0.5, 55.0))[2] == [True, False]  # equal: first  # no reference: the whole front goes on


@pytest.mark.parametrize("earlier, goes_on", [(4, True), (5, False)])
def test_adaptive_rung_ties_keep_the_whole_front_until_the_rung_holds_enough_trials(earlier: int,
                                                                                     goes_on: bool) -> None:
    """`rung_ties: adaptive`, factor 2: a rung of 5 trials lets its whole front go on, one of 6 (SPLIT_FROM x 2)
    splits it. The last trial is on the front (the best metric) but adds almost no hypervolume."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    rule = PruningRule(PruningSettings(rule="halving", baseline_patience=99, reduction_factor=2, rung_ties="adaptive"),
                       multi=True, baseline=0.5, margin=0.05, storage=storage, rungs=[2])
    for value, size in [(0.6, 10), (0.7, 20), (0.8, 40), (0.85, 80), (0.9, 160)][:earlier]:
        rule.check(study.ask(), 2, value, size)  # every one on the front so far: all go on
    last = study.ask()
    if goes_on:
        rule.check(last, 2, 0.901, 1000)
    else:
        with pytest.raises(optuna.TrialPruned, match=r"front 1 of 6 trials; only the best 3 \(1/2, by front, then by"):
            rule.check(last, 2, 0.901, 1000)


def test_rule_none_records_every_value_and_stops_nothing() -> None:
    storage = optuna.storages.InMemoryStorage()
    for multi in (True, False):
        rule = PruningRule(PruningSettings(rule="none", baseline_patience=1), multi=multi, baseline=0.5,
                           margin=0.05, storage=storage)
        study = optuna.create_study(storage=storage, directions=["maximize", "minimize"] if multi else ["maximize"],
                                    pruner=rule.pruner())
        trial = study.ask()
        for step in (2, 4, 6):
            rule.check(trial, step, 0.5, 100)  # at the baseline throughout
        assert study.trials[trial.number].intermediate_values == {2: 0.5, 4: 0.5, 6: 0.5}


def test_tpe_samples_after_a_pruned_pareto_trial() -> None:
    """Optuna's TPE ranked pruned trials by their last intermediate value through `study.direction`, which raises
    for a multi-objective study: a Pareto search crashed at its first TPE trial after a pruned one (seen in
    bench/multifidelity.py at trial 10). The rule now marks such a trial infeasible, which TPE reads instead."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(
        n_startup_trials=2, seed=0, multivariate=True, constant_liar=True))
    rule = PruningRule(PruningSettings(rule="halving", baseline_patience=99), multi=True, baseline=0.5, margin=0.05,
                       storage=storage, rungs=[2])
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for value, size in ((0.9, 200), (0.8, 100)):  # both on the rung's front
        trial = study.ask(space)
        rule.check(trial, 2, value, size)
        study.tell(trial, [value, size])
    trial = study.ask(space)
    with pytest.raises(optuna.TrialPruned):
        rule.check(trial, 2, 0.1, 500)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[trial.number].constraints == {"pruned": 1.0}
    for _ in range(3):  # TPE proper (past its 2 startup trials), with a pruned trial holding intermediate values
        next_trial = study.ask(space)
        study.tell(next_trial, [0.5, 100])
