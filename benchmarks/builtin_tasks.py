"""How fast the embedded model learns each trainable built-in task. Prints JSON.

For every task: the base model's exact match on the test rows, then a LoRA run (r=8, batch 8,
lr 1e-3, the default linear schedule over ``--steps``, max_length 64) that scores the same test
rows every ``--every`` steps and stops early once all of them are right. The numbers go into the
docstrings of :mod:`fnapi.data.tasks`. Usage::

    nice -n 10 python benchmarks/builtin_tasks.py [--tasks skill cipher order units vennish]
        [--steps 60] [--every 10] [--samples 100]

One LoRA step of 8 examples takes about 2.5 s on a 2-core CPU; all five tasks take about 15 minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    from fnapi.data.builtin import BUILTIN_TASKS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tasks", nargs="+", default=list(BUILTIN_TASKS), choices=BUILTIN_TASKS)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="score the test rows every this many steps")
    parser.add_argument("--samples", type=int, default=100, help="test rows scored (the first ones)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data always uses its own)")
    args = parser.parse_args()

    from fnapi.data import load_data, tokenize
    from fnapi.measures import measure_task
    from fnapi.models.loading import load_model
    from fnapi.recipe import DataSection, LoraSection, ModelSection, TrainSection
    from fnapi.training import train

    results = {}
    for name in args.tasks:
        started = time.perf_counter()
        loaded = load_model(ModelSection(name=args.model))
        tokenizer = loaded.tokenizer
        data = load_data(DataSection(path=f"builtin:{name}", max_length=64), seed=args.seed)
        test = data.test[: args.samples]
        answer_tokens = max(len(tokenizer(c.messages[-1]["content"], add_special_tokens=False)["input_ids"])
                            for c in data.test)

        def score(model, rows=test, tokenizer=tokenizer) -> float:
            values = measure_task(model, tokenizer, rows, max_new_tokens=16, batch_size=16)
            return round(sum(values) / len(values), 3)

        base = score(loaded.model)
        train_tokens = tokenize(data.train, tokenizer, max_length=64, cache=False)
        section = TrainSection(method="lora", steps=args.steps, batch_size=8, learning_rate=1e-3,
                               lora=LoraSection(r=8), task_target=1.0, task_check_every=args.every,
                               save_steps=10 * args.steps, logging_steps=args.every)
        with tempfile.TemporaryDirectory() as folder:
            result = train(loaded, None, train_tokens, None, section, output_dir=folder, seed=args.seed,
                           resume=False, save_model=False, task_check=score)
        results[name] = {
            "base_exact_match": base,
            "exact_match_at_step": {str(step): value for step, value in result.task_checks},
            "stopped_all_right_at": result.task_checks[-1][0] if result.stopped_at_task_target else None,
            "losses": {str(step): round(loss, 4) for step, loss in result.losses if step % 10 == 0},
            "rows": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test),
                     "scored": len(test)},
            "longest_answer_tokens": answer_tokens,
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps({name: results[name]}), flush=True)  # progress, one line per task
    print(json.dumps({
        "benchmark": "builtin_tasks", "model": args.model,
        "train": {"method": "lora", "r": 8, "batch_size": 8, "learning_rate": 1e-3, "scheduler": "linear",
                  "steps": args.steps, "max_length": 64, "seed": args.seed},
        "tasks": results,
    }, indent=2))


if __name__ == "__main__":
    main()
