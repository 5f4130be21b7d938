"""Check the time estimate (fnapi.timing) against a real run. Prints JSON.

Loads the recipe's model, times the estimate itself, then runs the recipe and compares each
stage's predicted seconds with the seconds its StageFinished event reports (``ica`` is compared
with ``ica`` + ``top_tokens``, which the estimate counts as one).

    python benchmarks/time_estimate.py                         # quickstart (attribution template, full rows)
    python benchmarks/time_estimate.py --recipe r.yaml --set train.steps=20
    python benchmarks/time_estimate.py --ica                   # a LoRA run with an ICA template built in it
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "quickstart.yaml"
ICA_RECIPE = {
    "version": 1, "name": "time-estimate-ica", "seed": 0,
    "model": {"name": "smollm2-135m-instruct"},
    "data": {"path": "builtin:skill", "max_length": 64},
    "template": {"method": "ica", "data": ["builtin:text"], "samples": 32, "max_length": 64, "components": 10,
                 "runs": 5},
    "mask": {"preset": "protect", "components": "stable"},
    "train": {"method": "lora", "steps": 20, "batch_size": 8, "save_steps": 50},
    "eval": {"task_samples": 30, "probe_samples": 200, "kl_prompts": 16},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    parser.add_argument("--ica", action="store_true", help="the built-in LoRA recipe with an ICA template")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from fnapi.cli.run import parse_overrides
    from fnapi.events import ListSink, StageFinished
    from fnapi.models.loading import load_model
    from fnapi.recipe import Recipe
    from fnapi.runner import run
    from fnapi.timing import estimate_time

    recipe = Recipe.model_validate(ICA_RECIPE) if args.ica else Recipe.from_yaml(args.recipe)
    if args.set:
        recipe = recipe.replace(**parse_overrides(args.set))
    loaded = load_model(recipe.model)
    started = time.perf_counter()
    # The run below loads the model again in this process (fast, from caches): load time is not compared.
    estimate = estimate_time(recipe, loaded)
    estimating = time.perf_counter() - started
    del loaded
    print(f"estimate ({estimating:.1f} s to make): {estimate.describe()}", file=sys.stderr)

    sink = ListSink()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run(recipe, sink=sink, output=str(Path(folder) / "run"))
        total = time.perf_counter() - started
    actual: dict[str, float] = {}
    for event in sink.events:
        if isinstance(event, StageFinished):
            name = "ica" if event.stage == "top_tokens" else event.stage
            actual[name] = actual.get(name, 0.0) + event.seconds
    stages = []
    for predicted in estimate.stages:
        seen = actual.get(predicted.stage)
        stages.append({"stage": predicted.stage, "estimated_s": round(predicted.seconds, 1),
                       "actual_s": None if seen is None else round(seen, 1),
                       "ratio": None if not seen else round(predicted.seconds / seen, 2)})
    print(json.dumps({"recipe": recipe.name, "estimate_making_s": round(estimating, 1),
                      "estimated_total_s": round(estimate.seconds, 1), "actual_total_s": round(total, 1),
                      "ratio_total": round(estimate.seconds / total, 2), "stages": stages,
                      "unestimated_stages": {k: round(v, 1) for k, v in actual.items()
                                             if k not in {s.stage for s in estimate.stages}}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
