"""`train --method X` and a search's trial 0 with the same settings build the same adapter (issue 27): both take
the method's defaults from its built-in space. Before, `train --method lora` built LoRA without dropout (PEFT's
default) while the lora space's trial 0 used 0.05."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from test_trial import write_tiny_sst2

from elalora_auto.cli import main
from elalora_auto.search import SearchSettings
from elalora_auto.search.plan import plan_study, train_spec
from elalora_auto.trial import TrialSpec, setup_trial

STEPS = 20


def trial0_spec(method: str, data: Path, model: Path, workdir: Path) -> TrialSpec:
    """The TrialSpec a search's trial 0 trains (the space's defaults, as the study enqueues them)."""
    settings = SearchSettings.from_sources(None, {
        "task": "sst2", "data_dir": str(data), "model": str(model), "method": method, "max_steps": STEPS,
        "max_length": 16, "workdir": str(workdir), "no_tracking": True})
    plan = plan_study(settings)
    return plan.trial_spec(optuna.trial.FixedTrial(plan.space.default_params(settings.trial0)))


def adapter_state(spec: TrialSpec) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(rank map, initial weights, PEFT config or {}) of the adapter a trial of `spec` starts from."""
    adapter = setup_trial(spec).adapter
    config = getattr(adapter.model, "peft_config", {}).get("default")
    return adapter.rank_map(), adapter.model.state_dict(), config.to_dict() if config is not None else {}


@pytest.mark.parametrize("method", ["lora", "adalora", "elalora"])
def test_train_builds_the_search_trial0_adapter(method, tiny_model_dir, tmp_path):
    data = write_tiny_sst2(tmp_path / "glue")
    assert main(["train", "--task", "sst2", "--data-dir", str(data), "--model", str(tiny_model_dir), "--method",
                 method, "--max-steps", str(STEPS), "--set", "max_length=16", "--export", str(tmp_path / "exp"),
                 "--quiet"]) == 0
    trained = TrialSpec.from_yaml(tmp_path / "exp" / "config.yaml")  # the spec the command ran, as it wrote it
    searched = trial0_spec(method, data, tiny_model_dir, tmp_path / "search")
    assert trained.method == searched.method == method
    assert trained.params == searched.params and trained.params
    assert trained.training.learning_rate == searched.training.learning_rate
    if method == "lora":
        assert trained.params["lora_dropout"] == 0.05  # the space's default, not PEFT's 0.0

    trained.data.cache_dir = searched.data.cache_dir  # only where the tokens are cached differs
    ranks, weights, config = adapter_state(trained)
    ranks0, weights0, config0 = adapter_state(searched)
    assert ranks == ranks0 and config == config0 and weights.keys() == weights0.keys()
    assert all(torch.equal(weights[k], weights0[k]) for k in weights)


def test_given_params_win_under_any_alias(tiny_model_dir, tmp_path):
    """A value given under a native name (ElaLoRA's r, PEFT's r) keeps the default of the shared name out."""
    data = write_tiny_sst2(tmp_path / "glue")
    base = TrialSpec(task="sst2", model=str(tiny_model_dir))
    common = [f"data.data_dir={data}", f"max_steps={STEPS}"]
    ela, _ = train_spec(base, [*common, "params.r=3"], fresh=True)
    assert ela.params["r"] == 3 and "r_init" not in ela.params and ela.params["b"] == 4
    lora, steps = train_spec(base, [*common, "method=lora", "params.r=3", "training.learning_rate=1e-3"], fresh=True)
    assert lora.params == {"r": 3, "lora_alpha": 16, "lora_dropout": 0.05}
    assert lora.training.learning_rate == 1e-3 and steps == STEPS
