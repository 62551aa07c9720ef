"""The method registry (adapters/): derived name tables, a method added by one class and one registry line, and
EVA (PEFT LoRA with EVA initialisation) built, redistributed, trained, searched and exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

import elalora_auto
from elalora_auto.adapters import (Adapter, LoraAdapter, Method, build_adapter, check_params, get_method,
                                   method_names, register)
from elalora_auto.adapters import base as adapters_base
from elalora_auto.errors import ConfigError, UserError
from elalora_auto.results import write_study_report
from elalora_auto.search.checks import check_space
from elalora_auto.search.space import SearchSpace
from elalora_auto.search.storage import open_storage
from elalora_auto.trial import TrialSpec, run_trial

from test_search_study import _space, _study, study_file  # noqa: F401 - the tiny study fixture
from test_trial import tiny_spec, write_tiny_sst2


class QueryValueLora(Method):
    """A toy method as a newcomer would add one: PEFT LoRA on query/value only, with a rule of its own."""

    name = "qv-lora"
    aliases = {"r_init": "r"}

    def native_keys(self) -> Iterable[str]:
        return ("r", "lora_alpha")

    def check(self, native: dict[str, Any], total_steps: int) -> None:
        self.check_shared_rules(native)
        if native.get("r", 8) % 2:
            raise ConfigError(f"r_init={native['r']} must be even for qv-lora")

    def wrap(self, model: Any, native: dict[str, Any], total_steps: int, heads: list[str]) -> Adapter:
        from peft import LoraConfig, TaskType, get_peft_model

        native = {k: v for k, v in native.items() if k != "target_modules"}
        config = LoraConfig(task_type=TaskType.SEQ_CLS, target_modules=["query", "value"], modules_to_save=heads,
                            **native)
        return LoraAdapter(get_peft_model(model, config), self.name)


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> Method:
    """The toy method on the registry for one test (the registry line a real method adds in adapters/__init__)."""
    monkeypatch.setattr(adapters_base, "_REGISTRY", dict(adapters_base._REGISTRY))
    return register(QueryValueLora())


def test_name_tables_are_derived_from_each_methods_aliases() -> None:
    """Every method's own names round-trip through the shared vocabulary; the hint names the shared spelling."""
    for name in method_names():
        method = get_method(name)
        for own in method.native_keys():
            assert method.native({method.shared_name(own): 1}, 100).get(own) == 1, (name, own)
    adalora = get_method("adalora")
    assert adalora.shared_name("init_r") == "r_init" and adalora.shared_name("deltaT") == "delta_t"
    assert {"r_init", "r_target", "gamma"} <= set(adalora.names()) and "init_r" not in adalora.names()
    assert get_method("lora").shared_name("r") == "r_init" and "r" in get_method("elalora").names()
    with pytest.raises(ConfigError, match="unknown method 'dora'; choose one of elalora, lora, adalora, eva"):
        get_method("dora")


def test_a_method_added_by_one_class_is_checked_searched_and_trained(toy_registered, tiny_model_dir,
                                                                       tmp_path) -> None:
    assert "qv-lora" in method_names()
    with pytest.raises(ConfigError, match=r"unknown qv-lora parameter 'b' \(valid: lora_alpha, r_init\)"):
        check_params("qv-lora", {"r_init": 2, "b": 1}, 10)
    with pytest.raises(ConfigError, match="r_init=3 must be even"):
        check_params("qv-lora", {"r_init": 3}, 10)
    with pytest.raises(ConfigError, match="r_init=0 must be >= 1"):  # the shared rules hold for it too
        check_params("qv-lora", {"r_init": 0}, 10)
    space = SearchSpace.from_dict({"method": "qv-lora", "method_params": {
        "r_init": {"type": "categorical", "choices": [2, 3], "default": 2}}}, source="qv.yaml")
    with pytest.raises(ConfigError, match=r"^qv.yaml: method_params.r_init = 3: r_init=3 must be even"):
        check_space(space, 10)

    spec = tiny_spec(tiny_model_dir, write_tiny_sst2(tmp_path), "lora", max_steps=4)
    spec = TrialSpec.from_dict({**spec.to_dict(), "method": "qv-lora", "params": {"r_init": 2}})
    result = run_trial(spec, output_dir=tmp_path / "out", progress=False)
    assert result.state.name == "COMPLETE" and len(result.rank_map) == 4  # query and value of the 2 layers
    assert set(result.rank_map.values()) == {2} and all(k.endswith(("query", "value")) for k in result.rank_map)
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


def test_an_unregistered_method_is_refused_where_it_is_named() -> None:
    with pytest.raises(UserError, match="unknown method 'qv-lora'"):
        TrialSpec(task="sst2", method="qv-lora")


def test_the_default_prepare_draws_no_batch(tiny_model_dir) -> None:
    """The data hook is lazy: a method that needs no data never pulls a batch, so its random stream is unchanged."""

    def no_batches() -> Iterator[dict]:
        raise AssertionError("a batch was drawn")
        yield {}

    for name, params in (("lora", {"r_init": 2}), ("elalora", {"r_init": 2}), ("adalora", {"r_init": 3, "r_target": 2})):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
        build_adapter(model, name, params, 20).prepare(no_batches())


def _batches(tiny_model_dir: Path, n: int = 4) -> list[dict]:
    from elalora_auto.trial import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    words = "the movie was very great good fun fine bad awful boring long plot actor".split()
    out = []
    for i in range(n):
        texts = [" ".join(words[(i + j + k) % len(words)] for k in range(4 + (j % 5))) for j in range(16)]
        batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
        out.append({**batch, "labels": torch.arange(16) % 2})
    return out


@pytest.mark.parametrize("rho", [1.0, 2.0])
def test_eva_initialises_from_batches_and_redistributes_ranks_only_when_rho_exceeds_one(tiny_model_dir,
                                                                                        rho: float) -> None:
    adapter = build_adapter(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), "eva",
                            {"r_init": 4, "rho": rho}, 20)
    assert adapter.model.peft_config["default"].init_lora_weights == "eva"
    before = adapter.rank_map()
    assert set(before.values()) == {4} and len(before) == 13
    adapter.prepare(iter(_batches(tiny_model_dir)))
    ranks = adapter.rank_map()
    assert set(ranks) == set(before) and sum(ranks.values()) == 4 * 13  # EVA keeps LoRA's total rank
    assert adapter.round_history[-1].step == 0 and adapter.round_history[-1].total_rank == 4 * 13
    if rho == 1.0:
        assert set(ranks.values()) == {4} and adapter.round_history[-1].changed == {}
    else:
        assert len(set(ranks.values())) > 1 and max(ranks.values()) <= 8
        assert adapter.round_history[-1].changed
    trainable = sum(p.numel() for g in adapter.param_groups(1e-3) for p in g["params"])
    assert adapter.num_trainable_parameters() == trainable  # the optimizer, built after prepare, trains them all


def test_eva_rules_and_a_batch_too_small_for_its_components(tiny_model_dir) -> None:
    with pytest.raises(ConfigError, match="rho"):
        check_params("eva", {"r_init": 4, "rho": 0.5}, 10)
    with pytest.raises(ConfigError, match="eva_batches=0 must be a whole number >= 1"):
        check_params("eva", {"eva_batches": 0}, 10)
    with pytest.raises(ConfigError, match="unknown eva parameter 'b'"):
        check_params("eva", {"b": 2}, 10)
    adapter = build_adapter(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), "eva",
                            {"r_init": 8, "rho": 3.0, "eva_batches": 1}, 20)
    with pytest.raises(ConfigError, match="EVA needs 24 training rows"):
        adapter.prepare(iter(_batches(tiny_model_dir, 1)))


def test_an_eva_trial_runs_and_its_export_loads_in_stock_peft(tiny_model_dir, tmp_path) -> None:
    built: list[Adapter] = []

    def build_and_keep(*args: Any) -> Adapter:
        built.append(build_adapter(*args))
        return built[-1]

    spec = tiny_spec(tiny_model_dir, write_tiny_sst2(tmp_path), "lora", eval_every=6)
    spec = TrialSpec.from_dict({**spec.to_dict(), "method": "eva", "params": {"r_init": 2, "rho": 2.0}})
    result = run_trial(spec, output_dir=tmp_path / "out", progress=False, adapter_factory=build_and_keep)
    assert result.state.name == "COMPLETE" and result.steps_done == 12
    assert len(set(result.rank_map.values())) > 1 and sum(result.rank_map.values()) == 2 * 13
    assert result.rank_history[0].step == 0 and result.rank_evolution[0].rank_map == result.rank_map
    folder = tmp_path / "out" / "adapter"
    saved = yaml.safe_load((folder / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True and saved["eva_config"] is None
    live = {k: v for k, v in result.rank_map.items() if v}
    assert {k: saved["rank_pattern"].get(k, saved["r"]) for k in live} == live
    x = torch.randint(5, 50, (4, 10), generator=torch.Generator().manual_seed(0))
    (adapter,) = built
    with torch.no_grad():
        expected = adapter.model.eval()(input_ids=x).logits
        base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
        reloaded = PeftModel.from_pretrained(base, folder).eval()
        assert torch.allclose(reloaded(input_ids=x).logits, expected, atol=1e-5)


def test_eva_is_searched_like_the_others(study_file: Path, tmp_path: Path) -> None:  # noqa: F811
    """`search --method eva` with the shipped eva space (ranks and learning rate narrowed for the tiny model)."""
    from elalora_auto.cli import main

    space = yaml.safe_load((Path(elalora_auto.__file__).parent / "resources/search_spaces/eva.yaml").read_text())
    space["method_params"]["r_init"] = {"type": "categorical", "choices": [2, 4], "default": 2}
    space["training_params"]["learning_rate"] = {"type": "log", "low": 1e-3, "high": 1e-2, "default": 5e-3}
    path = tmp_path / "eva.yaml"
    path.write_text(yaml.safe_dump(space))
    assert main(["search", "--config", str(study_file), "--method", "eva", "--space", str(path), "--study", "e",
                 "--trials", "2", "--quiet"]) == 0
    trials = _study(tmp_path, "e").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].params["rho"] == 2.0 and all(t.values[1] > 0 for t in trials)
    # An ElaLoRA study of the same task in the same workdir draws the EVA trials on its Pareto plot.
    assert main(["search", "--config", str(study_file), "--space", str(_space(tmp_path)), "--study", "el",
                 "--trials", "1", "--quiet"]) == 0
    write_study_report(_study(tmp_path, "el"), tmp_path / "report", storage=open_storage(None, tmp_path / "runs"))
    assert "eva (e) (2)" in (tmp_path / "report" / "pareto_front.html").read_text()
