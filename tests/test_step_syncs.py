"""Training steps read nothing back from the device between logging points (issue 29), and the NaN/Inf check
still fails a trial within one logging interval.

Every host read of a tensor during run_trial (Tensor.item, tolist, cpu, numpy, float(), int(), bool(), index)
is counted per optimizer step, for LoRA, ElaLoRA and AdaLoRA on the tiny BERT. Not counted, because they are
not device reads on a GPU or not ours: the CPU AdamW's step counters (host tensors; the fused AdamW used on
CUDA reads none), the data loader building host batches, transformers' own `padding_mask.all()` in the base
model's SDPA mask (the same for every method) and PEFT AdaLoRA's own code (at its masking steps).
"""

from __future__ import annotations

import math
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

import elalora_auto.trial as trial
from elalora_auto.trial import NonFiniteLossError, checked_losses, run_trial
from test_trial import tiny_spec, write_tiny_sst2

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__", "__complex__")
NOT_OURS = ("transformers/masking_utils.py", "/peft/")  # see the module docstring
ROUND_SITES = ("method/allocator.py", "method/layer.py")  # ElaLoRA's round: its scores, the grown factors
SCHEDULE = {"t_init": 2, "delta_t": 3, "t_final": 3}  # rounds at steps 5 and 8 of 12


def host_reads(monkeypatch: pytest.MonkeyPatch, spec: Any) -> tuple[dict[int, list[str]], Any]:
    """(step -> the call sites of the counted reads made while that step ran or after it, the TrialResult)."""
    now = {"step": 0, "loading": False}
    setups: list[Any] = []
    reads: dict[int, list[str]] = defaultdict(list)

    def host_side(tensor: torch.Tensor) -> bool:
        steps = [state.get("step") for setup in setups for state in setup.optimizer.state.values()]
        return now["loading"] or any(tensor is step for step in steps)

    def counted(name: str) -> Any:
        real = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = traceback.extract_stack(limit=2)[0]
            if not host_side(self) and not any(part in caller.filename for part in NOT_OURS):
                reads[now["step"]].append(f"{caller.filename}:{caller.lineno} {name}")
            return real(self, *args, **kwargs)

        return read

    real_setup, real_step, real_batches = trial.setup_trial, trial._optimizer_step, trial._infinite

    def setup_trial(*args: Any) -> Any:
        setups.append(real_setup(*args))
        return setups[-1]

    def optimizer_step(setup: Any, batches: Any, *args: Any) -> Any:
        now["step"] = args[-1]
        return real_step(setup, batches, *args)

    def infinite(*args: Any, **kwargs: Any) -> Any:
        batches = real_batches(*args, **kwargs)
        while True:
            now["loading"] = True
            batch = next(batches)
            now["loading"] = False
            yield batch

    monkeypatch.setattr(trial, "setup_trial", setup_trial)
    monkeypatch.setattr(trial, "_optimizer_step", optimizer_step)
    monkeypatch.setattr(trial, "_infinite", infinite)
    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    result = run_trial(spec, progress=False)
    monkeypatch.undo()
    return reads, result


@pytest.mark.parametrize("method", ["lora", "elalora", "adalora"])
def test_no_host_read_between_logging_points(tiny_model_dir: Path, tmp_path: Path, monkeypatch, method: str) -> None:
    spec = tiny_spec(tiny_model_dir, write_tiny_sst2(tmp_path), method, max_steps=12, log_every=4, eval_every=0)
    if method != "lora":
        spec.params.update(SCHEDULE)
    reads, result = host_reads(monkeypatch, spec)
    assert result.state.name == "COMPLETE"
    log_points = {4, 8, 12}
    rounds = {record.step for record in result.rank_history}
    between = {step: sites for step, sites in reads.items() if step not in log_points and step > 0}  # 0: setup
    if method == "elalora":
        assert rounds == {5, 8}  # step 8 is also a logging point
        assert all(site.split(":")[0].endswith(ROUND_SITES) for site in between.pop(5)), reads[5]
    assert between == {}, f"host reads between logging points: {between}"
    assert any("elalora_auto/trial.py" in site for site in reads[4]), reads[4]  # a logging point reads the losses


def test_checked_losses_reads_once_and_names_the_first_bad_step() -> None:
    losses = [torch.tensor(0.5), torch.tensor(0.25)]
    assert checked_losses(losses, 8) == 0.25 and losses == []
    losses = [torch.tensor(0.5), torch.tensor(math.nan), torch.tensor(math.inf)]
    with pytest.raises(NonFiniteLossError, match="non-finite training loss nan at optimizer step 7") as caught:
        checked_losses(losses, 8)
    assert caught.value.step == 7 and losses == []


def test_a_diverged_elalora_trial_fails_within_one_logging_interval(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The loss goes NaN at the first steps with a huge learning rate, rounds run inside the interval, and the
    trial fails at the interval's check with the first bad step named."""
    spec = tiny_spec(tiny_model_dir, write_tiny_sst2(tmp_path), "elalora", max_steps=12, log_every=6,
                     eval_every=0, learning_rate=1e30, warmup_ratio=0.0)
    spec.params.update(SCHEDULE)
    with pytest.raises(NonFiniteLossError) as caught:
        run_trial(spec, output_dir=tmp_path / "out", progress=False)
    assert 1 <= caught.value.step <= 6
    written = (tmp_path / "out" / "result.json").read_text()
    assert '"state": "FAIL"' in written and f"at optimizer step {caught.value.step}" in written
    assert '"steps_done": 6' in written  # found at the first check, not later


def test_logging_points_do_not_change_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Reading the losses every step or every 4th gives the same run: the same losses at shared steps."""
    data = write_tiny_sst2(tmp_path)
    runs = []
    for log_every in (1, 4):
        spec = tiny_spec(tiny_model_dir, data, "elalora", max_steps=12, log_every=log_every, eval_every=0)
        spec.params.update(SCHEDULE)
        runs.append(run_trial(spec, progress=False))
    every, fourth = ({e["step"]: e["loss"] for e in run.train_loss_history} for run in runs)
    assert sorted(fourth) == [4, 8, 12] and len(every) == 12
    assert {step: every[step] for step in fourth} == fourth
    assert runs[0].metrics == runs[1].metrics and runs[0].rank_map == runs[1].rank_map
