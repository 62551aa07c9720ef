"""Two-stage ElaLoRA trials (`retrain: lora`, issue 27.3) on the tiny BERT: ElaLoRA finds the rank map, a stock PEFT
LoRA with that rank_pattern retrains from scratch and is the trial's result and exported adapter (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch

from elalora_auto.adapters import build_adapter, check_params, retrain_plan
from elalora_auto.errors import ConfigError
from elalora_auto.events import Event, with_context
from elalora_auto.trial import run_trial
from elalora_auto.trial_output import read_result
from elalora_auto.two_stage import SEARCH, retrain_spec
from test_trial import tiny_spec, write_tiny_sst2


@pytest.fixture
def sst2_dir(tmp_path: Path) -> Path:
    return write_tiny_sst2(tmp_path)


def two_stage(model_dir: Path, data_dir: Path, fraction: float, **training) -> object:
    spec = tiny_spec(model_dir, data_dir, "elalora", **training)
    spec.params.update(retrain="lora", search_fraction=fraction)
    return spec


def keeping(built: list) -> object:
    def factory(*args):
        built.append(build_adapter(*args))
        return built[-1]

    return factory


def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_a_two_stage_trial_trains_both_stages_and_exports_the_retrained_lora(tiny_model_dir, sst2_dir, tmp_path,
                                                                            capsys):
    """Stage 1 (ElaLoRA, 6 of the trial's 12 steps) finds the map; stage 2 (PEFT LoRA, 12 steps) has exactly its
    ranks, is the trial's result, the only thing the pruner saw, and `export`'s adapter stock PEFT loads to the same
    logits; MLflow shows both stages."""
    from mlflow import MlflowClient

    from elalora_auto.search.storage import open_storage
    from elalora_auto.tracking import MlflowTracker

    events, built, reported, work = [], [], [], tmp_path / "work"
    tracker = MlflowTracker(workdir=work)
    study = optuna.create_study(study_name="two", directions=["maximize", "minimize"], storage=open_storage(None, work))
    study.set_user_attr("settings", {"task": "sst2", "method": "elalora", "primary_metric": "accuracy"})
    tracker(Event("study_start", 0, {"study": study, "study_name": "two", "storage": "memory", "settings": {}}))
    spec = two_stage(tiny_model_dir, sst2_dir, 0.5, eval_every=3)
    trial, out = study.ask(), work / "trials" / "two" / "0"
    result = run_trial(spec, reporter=lambda step, value, size: reported.append((step, value, size)),
                       listeners=[events.append, *with_context([tracker], trial_number=0, study_name="two")],
                       output_dir=out, progress=False, adapter_factory=keeping(built))
    search, (elalora, lora) = result.search_stage, built

    assert result.state.name == "COMPLETE" and (elalora.method, lora.method) == ("elalora", "lora")
    assert search.steps == search.steps_done == 6 and result.steps == result.steps_done == 6 + 12
    assert events[-1].kind == "trial_end" and events[-1].step == 18
    assert search.rank_map == elalora.rank_map() and elalora.round_history  # ranks moved in stage 1
    assert lora.rank_map() == {name: rank for name, rank in search.rank_map.items() if rank > 0}
    assert result.rank_map == search.rank_map and result.rank_history == elalora.round_history
    assert result.trainable_params == lora.num_trainable_parameters() != search.trainable_params
    # Stage 1's evaluations are its own record; the trial's (and the pruner's) are stage 2's.
    assert [e["step"] for e in search.eval_history] == [3, 6] and search.primary == search.metrics["accuracy"]
    assert [e["step"] for e in result.eval_history] == [3, 6, 9, 12] and result.primary == result.metrics["accuracy"]
    assert reported == [(step, result.intermediate_values[step], result.trainable_params) for step in (3, 6, 9)]
    staged = [(e.kind, e.step) for e in events if e.data.get("stage") == SEARCH]
    assert ("eval", 6) in staged and max(step for _, step in staged) == 6
    assert [e.step for e in events if e.kind == "train_step" and "stage" not in e.data][-1] == 12
    assert read_result(out).search_stage == search and read_result(out).to_dict() == result.to_dict()

    study.tell(trial, [result.primary, result.trainable_params])
    _exports_the_lora(work, tmp_path / "export", lora, tiny_model_dir, capsys)

    assert tracker.flush(60)
    client, run_id = MlflowClient(tracker.tracking_uri), tracker.trial_run_id("two", 0)
    history = {m: [(p.step, p.value) for p in client.get_metric_history(run_id, m)]
               for m in ("search_eval_accuracy", "eval_accuracy", "search_final_primary", "final_primary")}
    assert history["search_eval_accuracy"] == [(e["step"], e["metrics"]["accuracy"]) for e in search.eval_history]
    assert history["eval_accuracy"] == [(e["step"], e["metrics"]["accuracy"]) for e in result.eval_history]
    assert history["search_final_primary"] == [(6, search.primary)]
    assert history["final_primary"] == [(18, result.primary)]


def _exports_the_lora(work: Path, export: Path, lora: object, model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """`export` of the study's trial 0: stage 2's stock LoRA folder (its rank_pattern), loaded by plain PEFT, gives
    the trial's final logits; the card says what the adapter is."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from elalora_auto.cli import main

    assert main(["export", "--study", "two", "--workdir", str(work), "--trial", "0", "--out", str(export)]) == 0
    capsys.readouterr()
    config = json.loads((export / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and sorted(config["target_modules"]) == sorted(lora.rank_map())
    assert sorted(config["rank_pattern"].values()) == sorted(lora.rank_map().values())
    assert "LoRA (rank map found by elalora) adapter" in (export / "README.md").read_text()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = dict(tokenizer(["the movie was great", "the film was very boring"], padding=True, return_tensors="pt"))
    loaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(model_dir),
                                       export / "adapter")
    assert torch.equal(_logits(loaded, batch), _logits(lora.model, batch))


def test_stage_one_is_the_elalora_trial_and_stage_two_the_lora_trial_of_its_map(tiny_model_dir, sst2_dir):
    """At search_fraction 1 stage 1 is the one-stage ElaLoRA trial, loss for loss; stage 2 is the `--method lora`
    trial of its rank map run on its own (re-seeded, same data order), loss for loss."""
    result = run_trial(two_stage(tiny_model_dir, sst2_dir, 1.0), progress=False)
    alone = run_trial(tiny_spec(tiny_model_dir, sst2_dir, "elalora"), progress=False)
    assert result.search_stage.train_loss_history == alone.train_loss_history
    assert result.search_stage.rank_map == alone.rank_map and result.search_stage.metrics == alone.metrics

    spec = two_stage(tiny_model_dir, sst2_dir, 1.0)
    plan = retrain_plan(spec.method, spec.params, spec.training.max_steps)
    lora = run_trial(retrain_spec(spec, plan, alone.rank_map), progress=False)
    assert lora.train_loss_history == result.train_loss_history and lora.metrics == result.metrics
    assert lora.trainable_params == result.trainable_params and lora.steps_done == 12 == result.steps_done - 12


def test_the_search_schedule_scales_with_its_fraction_and_zero_ranks_are_left_out():
    plan = retrain_plan("elalora", {"retrain": "lora", "search_fraction": 0.25, "t_init": 40, "t_final": 80,
                                    "delta_t": 2, "lora_alpha": 16}, 400)
    assert plan.search_steps == 100 and plan.total_steps == 400
    assert {k: plan.search_params[k] for k in ("t_init", "t_final", "delta_t")} == {"t_init": 10, "t_final": 20,
                                                                                   "delta_t": 1}
    assert retrain_plan("elalora", {"retrain": "none", "search_fraction": 0.5}, 400) is None
    assert retrain_plan("lora", {"r_init": 4}, 400) is None
    params = plan.retrain_params({"bert.pooler.dense": 3, "bert.encoder.layer.1.output.dense": 0})
    assert params == {"r_init": 3, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["bert.pooler.dense"],
                      "rank_pattern": {r"bert\.pooler\.dense": 3}}
    check_params("lora", params, 400)  # stage 2 is a valid lora configuration
    with pytest.raises(ConfigError, match="every rank at 0"):
        plan.retrain_params({"bert.pooler.dense": 0})


@pytest.mark.parametrize("params, says", [
    ({"retrain": "maybe"}, "retrain='maybe' must be one of none, lora"),
    ({"retrain": "lora", "search_fraction": 0}, "search_fraction=0 must be a number in (0, 1]"),
    ({"retrain": "lora", "search_fraction": 1.5}, "search_fraction=1.5 must be"),
    ({"search_fraction": "half"}, "search_fraction='half' must be"),
    ({"retrain": "lora", "search_fraction": 0.1, "t_init": 46, "t_final": 53}, "empty adjustment window"),
])
def test_bad_two_stage_values_fail_in_one_line_before_any_work(params, says):
    with pytest.raises(ConfigError) as error:
        check_params("elalora", params, 100)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_a_bad_rank_pattern_fails_in_one_line():
    with pytest.raises(ConfigError, match=r"rank_pattern\['query'\]=0 must be a whole number >= 1"):
        check_params("lora", {"rank_pattern": {"query": 0}}, 100)


def test_train_runs_a_fixed_two_stage_configuration_and_refuses_a_bad_one(tiny_model_dir, sst2_dir, tmp_path,
                                                                         capsys):
    """`train --method elalora --set params.retrain=lora`: both stages, counted; a bad value is one line, exit 2,
    before any data is read (the data folder here has none)."""
    from elalora_auto.cli import main

    train = ["train", "--task", "sst2", "--model", str(tiny_model_dir), "--method", "elalora", "--max-steps", "8",
             "--set", "training.batch_size=8", "--set", "max_length=16", "--set", "params.r_init=2", "--set",
             "params.b=1", "--set", "params.k=1", "--quiet", "--set", "params.retrain=lora"]
    out = tmp_path / "result.json"
    assert main([*train, "--data-dir", str(sst2_dir), "--set", "params.search_fraction=0.5", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["search_stage"]["steps_done"] == 4 and result["steps_done"] == 4 + 8
    assert "search stage: elalora found the rank map in 4 steps" in capsys.readouterr().out
    empty = tmp_path / "empty"
    (empty / "SST-2").mkdir(parents=True)
    for bad, says in (("params.retrain=maybe", "retrain='maybe' must be one of none, lora"),
                      ("params.search_fraction=0", "search_fraction=0 must be a number in (0, 1]")):
        assert main([*train, "--data-dir", str(empty), "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and says in err, err
