"""Search spaces: every shipped space loads and suggests, bad spaces fail with the key named; Pareto helpers."""

from pathlib import Path

import numpy as np
import optuna
import pytest

from elalora_auto.errors import ConfigError, UserError
from elalora_auto.search.pareto import hypervolume, knee, pareto_front
from elalora_auto.search.space import SearchSpace, builtin_names

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", ["elalora", "adalora", "lora", "eva"])
def test_shipped_spaces_suggest_values_that_fit_the_run(name: str) -> None:
    space = SearchSpace.load(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):  # no draw breaks the space's constraints: a broken one is a trial wasted (TrialPruned)
        method, training = space.suggest(study.ask(), {"total_steps": 120, "model_type": "deberta-v2"})
        assert 1e-4 <= training["learning_rate"] <= 5e-3
        if "target_modules" in method:  # absent for the choice `default` (the method's own targets)
            assert "query_proj" in method["target_modules"] and "query" not in method["target_modules"]
        if "delta_t" in method:
            assert method["t_init"] >= 1 and method["t_final"] >= 1
            assert 1 <= method["delta_t"] <= 120 - method["t_init"] - method["t_final"]
        if "r_target" in method:
            assert 1 <= method["r_target"] < method["r_init"]


def test_default_is_enqueueable_and_gives_the_authors_schedule_proportions() -> None:
    space = SearchSpace.load("elalora")
    study = optuna.create_study()
    study.enqueue_trial(space.default_params({"learning_rate": 1e-3}))
    method, training = space.suggest(study.ask(), {"total_steps": 1000, "model_type": "bert"})
    assert (method["r_init"], method["b"], method["k"], method["lora_alpha"]) == (10, 4, 2, 16)
    assert (method["t_init"], method["t_final"], method["delta_t"]) == (80, 160, 84)
    assert training == {"learning_rate": 1e-3}
    with pytest.raises(UserError, match="trial0: unknown parameter 'lr'"):
        space.default_params({"lr": 1e-3})


def test_builtin_names_are_packaged() -> None:
    assert {"elalora", "adalora", "lora"} <= set(builtin_names("search_spaces"))
    # the repo-root folder is the packaged one (a symlink), so a checkout and a wheel see the same files
    root = Path(__file__).resolve().parents[1] / "search_spaces"
    assert (root / "elalora.yaml").resolve() == Path(SearchSpace.load("elalora").path).resolve()


BASE = {"method": "elalora", "method_params": {"r_init": {"type": "int", "low": 2, "high": 8}}}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"method_params": {"r_init": {"type": "gauss", "low": 1, "high": 2}}}, r"method_params\.r_init\.type: unknown type 'gauss'"),
        ({"method_params": {"r_init": {"type": "int", "low": 9, "high": 2}}}, r"method_params\.r_init: low 9 > high 2"),
        ({"method_params": {"r_init": {"type": "int", "low": 2}}}, r"method_params\.r_init: missing key 'high'"),
        ({"method_params": {"lr": {"type": "log", "low": 0, "high": 1}}}, r"method_params\.lr: a log range needs low > 0"),
        ({"method_params": {"t": {"type": "float", "low": 0, "high": 1, "of": "steps"}}}, r"t\.of: unknown name 'steps'"),
        ({"method_params": {"t": {"type": "float", "low": 0, "high": 1, "of": "__import__('os')"}}}, r"t\.of: unsupported syntax"),
        ({"method_params": {"target_modules": {"type": "categorical", "choices": ["mlp"]}}}, r"unknown module set 'mlp'"),
        ({"module_sets": {"ffn": "layer\\.(\\d+"}}, r"module_sets\.ffn: invalid regex"),
        ({"module_sets": {"ffn": ""}}, r"module_sets: expected \{set name: \[module names\] or \"regex\"\}"),
        ({"method": "dora"}, r"method: unknown method 'dora'"),
        ({"rounds": 3}, r"unknown key 'rounds'"),
        ({"anchors": {"r_init": 2}}, r"anchors: expected a list of \{parameter: value\} mappings"),
        ({"anchors": [{"rr_init": 2}]}, r"^s\.yaml: anchors\[0\]: unknown parameter 'rr_init'"),
        ({"anchors": [{"r_init": 2}, {"r_init": 9}]}, r"anchors\[1\]\.r_init: 9 is outside the space's range \[2, 8\]"),
    ],
)
def test_bad_spaces_name_the_key(patch: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict({**BASE, **patch}, source="s.yaml")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("method: elalora\nmethod_params:\n  r_init: {type: int, low: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line \d+: malformed YAML") as info:
        SearchSpace.load(path)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="unknown search space 'nope'"):
        SearchSpace.load("nope")


FFN = r".*\.layer\.\d+\.(intermediate|output)\.dense"


def test_a_regex_module_set_names_what_suffixes_cannot() -> None:
    """BERT's FFN output is `layer.N.output.dense`; the suffix `output.dense` also takes `attention.output.dense`, so
    an FFN-only set needs PEFT's regex form: passed as written (no aliases) and matched in full."""
    from transformers import BertConfig, BertForSequenceClassification

    from elalora_auto.method.config import ElaLoraConfig

    space = SearchSpace.from_dict({"method": "elalora", "module_sets": {"ffn": FFN, "suffix": ["intermediate.dense",
                                                                                                "output.dense"]},
                                   "method_params": {"target_modules": {"type": "categorical",
                                                                        "choices": ["ffn", "suffix"]}}})
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=16))
    chosen = {}
    for name in ("ffn", "suffix"):
        method, _ = space.suggest(optuna.trial.FixedTrial({"target_modules": name}), {"total_steps": 10,
                                                                                       "model_type": "bert"})
        chosen[name] = ElaLoraConfig(target_modules=method["target_modules"]).match_targets(model)
    assert space.module_names("ffn", "distilbert") == FFN
    assert len(chosen["ffn"]) == 4 and not any("attention" in name for name in chosen["ffn"])
    assert sorted(set(chosen["suffix"]) - set(chosen["ffn"])) == [
        f"bert.encoder.layer.{i}.attention.output.dense" for i in (0, 1)]


def test_constraint_violation_prunes_before_training() -> None:
    space = SearchSpace.from_dict(
        {"method": "adalora", "method_params": {"r_init": {"type": "int", "low": 2, "high": 2},
                                                "r_target": {"type": "int", "low": 5, "high": 5}},
         "constraints": ["r_target <= r_init"]})
    with pytest.raises(optuna.TrialPruned, match="r_target <= r_init"):
        space.suggest(optuna.create_study().ask(), {"total_steps": 10})


def test_front_knee_and_hypervolume() -> None:
    points = [(0.80, 100.0), (0.85, 300.0), (0.70, 50.0), (0.84, 900.0), (0.86, 1000.0), (0.60, 200.0)]
    assert pareto_front(points) == [2, 0, 1, 4]
    assert knee(points) == 1  # the bend: 0.85 at 300 params; beyond it parameters buy little
    reference = (0.5, 2000.0)
    hv = hypervolume(points, reference)
    from optuna._hypervolume import compute_hypervolume  # cross-check against Optuna's WFG (minimisation form)

    expected = compute_hypervolume(np.array([[-m, c] for m, c in points]), np.array([-reference[0], reference[1]]))
    assert hv == pytest.approx(expected)
    assert hypervolume([], reference) == 0.0 and knee([]) is None


# -- every corner of a space against the method's rules (search.checks), before any study exists ------------------
@pytest.mark.parametrize("name", builtin_names("search_spaces"))
@pytest.mark.parametrize("steps", [8, 150, 6000])
def test_shipped_spaces_pass_their_corner_checks_at_any_run_length(name: str, steps: int) -> None:
    from elalora_auto.search.checks import check_space, corners

    space = SearchSpace.load(name)
    check_space(space, steps)
    assert len(list(corners(space, steps))) > len(space.params)  # trial 0 plus both ends of the ranges


def test_anchors_are_trial_0_changed_and_corners() -> None:
    """Each anchor is trial 0 (with the study's trial0 overrides) with its own values changed; the corner checks
    try it as a whole, as the ends of single ranges do not."""
    from elalora_auto.search.checks import corners

    space = SearchSpace.from_dict({**BASE, "method_params": {
        "r_init": {"type": "int", "low": 2, "high": 8, "default": 8},
        "b": {"type": "int", "low": 1, "high": 4, "default": 4}}, "anchors": [{"r_init": 2, "b": 1}]}, source="s.yaml")
    assert space.start_params({"b": 3}) == [{"r_init": 8, "b": 3}, {"r_init": 2, "b": 1}]
    where, method_params, _ = list(corners(space, 100))[-1]
    assert where == "anchors[0] (method_params.r_init = 2, method_params.b = 1)"
    assert (method_params["r_init"], method_params["b"]) == (2, 1)


def _corner_space(method: str, **params: dict) -> SearchSpace:
    return SearchSpace.from_dict({"method": method, "method_params": params,
                                  "constraints": ["t_init + t_final < total_steps"] if "t_init" in params else []},
                                 source="s.yaml")


@pytest.mark.parametrize(("method", "params", "message"), [
    ("elalora", {"r_init": {"type": "int", "low": 0, "high": 4, "default": 2}}, "method_params.r_init = 0: r_init=0"),
    ("elalora", {"beta1": {"type": "float", "low": 0.5, "high": 1.0}}, "beta1 = 1.0: beta1=1.0 must be in [0, 1)"),
    ("elalora", {"k": {"type": "categorical", "choices": [1, 0]}}, "k = 0"),
    ("elalora", {"rr_init": {"type": "int", "low": 1, "high": 4}}, "unknown elalora parameter 'rr_init' (valid: b,"),
    ("lora", {"r_init": {"type": "categorical", "choices": [4, 0]}}, "r_init = 0: r_init=0 must be >= 1"),
    ("lora", {"lora_dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "lora_dropout=1.5"),
    ("adalora", {"r_target": {"type": "int", "low": 1, "high": 20}}, "r_target=20 must be a whole number in [1"),
    ("adalora", {"beta2": {"type": "float", "low": -0.5, "high": 0.9}}, "beta2 = -0.5"),
])
def test_a_space_corner_the_method_rejects_is_named(method: str, params: dict, message: str) -> None:
    from elalora_auto.search.checks import check_space

    with pytest.raises(ConfigError, match="^s.yaml: ") as info:
        check_space(_corner_space(method, **params), 100)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_corners_the_constraints_prune_are_not_checked() -> None:
    """t_init at 0.9 of the run leaves no adjustment window, but the space's constraint prunes that corner, as a
    trial would never train it; without the constraint it is an error."""
    from elalora_auto.search.checks import check_space

    t_init = {"type": "float", "low": 0.05, "high": 0.9, "of": "total_steps", "min": 1, "default": 0.1}
    t_final = {"type": "float", "low": 0.05, "high": 0.2, "of": "total_steps", "min": 1, "default": 0.2}
    check_space(_corner_space("elalora", t_init=t_init, t_final=t_final), 100)
    unconstrained = SearchSpace.from_dict({"method": "elalora", "method_params": {"t_init": t_init,
                                                                                   "t_final": t_final}})
    with pytest.raises(ConfigError, match="empty adjustment window"):
        check_space(unconstrained, 100)


def test_settings_types_and_ranges_fail_in_one_line() -> None:
    from elalora_auto.search.settings import SearchSettings

    for data, message in [({"trials": "many"}, "trials: expected a whole number, got 'many'"),
                          ({"batch_size": 0}, "batch_size: must be > 0, got 0"),
                          ({"timeout": -5.0}, "timeout: must be > 0"),
                          ({"max_steps": 5.5}, "max_steps: expected a whole number or nothing"),
                          ({"storage": "sqlite:x.db"}, "write sqlite:///x.db"),
                          ({"storage": "sqlite://x.db"}, "names no database file"),
                          ({"pruning": {"n_startup_trials": "3"}}, "pruning.n_startup_trials: expected a whole")]:
        with pytest.raises(UserError, match=message):
            SearchSettings.from_dict({"task": "sst2", **data})


def test_adalora_with_nothing_to_prune_is_refused_in_one_line() -> None:
    """r_target == r_init crashed PEFT's AdaLoRA at its first budget step (kthvalue out of range) and ended the
    search with a traceback; the rule and the built-in space's constraint now exclude it."""
    from elalora_auto.search.checks import check_method_params
    from elalora_auto.search.space import SearchSpace

    with pytest.raises(ConfigError, match=r"r_target=6 must be a whole number in \[1, r_init - 1 = 5\]"):
        check_method_params("adalora", {"r_init": 6, "r_target": 6}, 100)
    check_method_params("adalora", {"r_init": 6, "r_target": 5}, 100)
    assert "r_target < r_init" in [c.text for c in SearchSpace.load("adalora").constraints]
