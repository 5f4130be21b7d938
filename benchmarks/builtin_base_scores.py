"""Score the embedded model on the built-in skill and probes, before any fine-tuning. Prints JSON.

The skill should be near 0 (the model cannot know the made-up language) and the probes mostly
right (they measure what fine-tuning may make it forget). Usage::

    python benchmarks/builtin_base_scores.py [--skill-samples 200] [--probe-samples 0 (all)]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--skill-samples", type=int, default=200)
    parser.add_argument("--probe-samples", type=int, default=0, help="0 means all")
    args = parser.parse_args()

    from fnapi.data import probe_items, skill_conversations
    from fnapi.evaluation import choice_logprobs, score_task
    from fnapi.models.loading import load_model

    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer

    started = time.perf_counter()
    skill = score_task(model, tokenizer, skill_conversations("test")[: args.skill_samples], max_new_tokens=16,
                       batch_size=16)
    skill_seconds = time.perf_counter() - started

    items = probe_items(args.probe_samples or None)
    started = time.perf_counter()
    logprobs = choice_logprobs(model, tokenizer, items)
    probe_seconds = time.perf_counter() - started
    per_category: dict[str, list[bool]] = defaultdict(list)
    for item, scores in zip(items, logprobs):
        per_category[item.category].append(max(range(len(scores)), key=scores.__getitem__) == item.answer)
    right = sum(sum(v) for v in per_category.values())
    print(json.dumps({
        "benchmark": "builtin_base_scores",
        "model": args.model,
        "skill": {"exact_match": skill, "samples": min(args.skill_samples, 200), "seconds": round(skill_seconds, 1)},
        "probes": {
            "accuracy": right / len(items),
            "samples": len(items),
            "seconds": round(probe_seconds, 1),
            "per_category": {k: round(sum(v) / len(v), 3) for k, v in sorted(per_category.items())},
        },
    }, indent=2))


if __name__ == "__main__":
    main()
