"""Search for the fine-tuning method that forgets least at equal task score. Prints JSON.

On the embedded model and ``builtin:skill``, every configuration trains until its validation task
score reaches ``--task-target`` (default 0.95, checked every 10 steps) or ``--cap`` steps, and is
scored on the built-in probes and held-out text. The axes covered:

- site: ``mlp.out`` or ``mlp.hidden`` (ICA templates);
- budget: how many ICA components are protected, or the attribution quota;
- selection: most stable ICA networks, attribution least or most important (LoKI's rule),
  random neurons (the control rows, added for every masked configuration with ``--controls``);
- what trains: LoRA on all linear layers, LoRA on the MLP only, only the selected down-projection
  rows (full-rank, LoKI), or full fine-tuning;
- learning rate, where a method needs its own.

Every configuration runs through :func:`fnapi.comparison.compare_recipes` into ``--out``, so a
killed search resumes, and the result is the comparison's table (mean and 95% interval across
``--seeds``) plus the frontier: configurations ordered by probe retention among those whose mean
task score reaches the target. Usage::

    python benchmarks/forgetting_frontier.py --out runs/frontier --list
    python benchmarks/forgetting_frontier.py --out runs/frontier --configs lora,loki-least-20 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BASE = {
    "version": 1, "seed": 0,
    "model": {"name": "smollm2-135m-instruct"},
    "data": {"path": "builtin:skill", "max_length": 64},
    "train": {"method": "lora", "steps": 200, "batch_size": 8, "learning_rate": 1e-3, "save_steps": 50,
              "task_check_every": 10, "task_check_samples": 40},
    "eval": {"task_samples": 50, "kl_prompts": 32},
}
ICA = {"method": "ica", "data": ["builtin:text"], "samples": 64, "max_length": 128, "components": 10}
ATTRIBUTION = {"method": "attribution", "data": ["builtin:text"], "samples": 32, "max_length": 64}
MLP_ONLY = ["gate_proj", "up_proj", "down_proj"]


def _recipe(name: str, **sections: Any) -> dict[str, Any]:
    recipe = json.loads(json.dumps(BASE))
    recipe["name"] = name
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(recipe.get(section), dict):
            recipe[section] = {**recipe[section], **values}
        else:
            recipe[section] = values
    return recipe


def _ica_protect(site: str, top: int, lora_targets: Any = "auto") -> Callable[[str], dict]:
    return lambda name: _recipe(name, template={**ICA, "site": site},
                                mask={"preset": "protect", "components": "stable", "top_stable": top},
                                train={"lora": {"target_modules": lora_targets}})


def _attribution(select: str, quota: float, preset: str, method: str, lr: float) -> Callable[[str], dict]:
    component = 0 if select == "most" else 1  # attribution templates: 0 = most, 1 = least important
    return lambda name: _recipe(name, template={**ATTRIBUTION, "selection": {"rule": "percentile",
                                                                           "value": 100.0 - quota}},
                                mask={"preset": preset, "components": [component]},
                                train={"method": method, "learning_rate": lr})


CONFIGS: dict[str, Callable[[str], dict]] = {
    "lora": lambda name: _recipe(name),
    "lora-lr5e-4": lambda name: _recipe(name, train={"learning_rate": 5e-4}),
    "lora-mlp": lambda name: _recipe(name, train={"lora": {"target_modules": MLP_ONLY}}),
    "full": lambda name: _recipe(name, train={"method": "full", "learning_rate": 1e-4}),
    "ica-protect-out-3": _ica_protect("mlp.out", 3),
    "ica-protect-out-10": _ica_protect("mlp.out", 10),
    "ica-protect-hidden-3": _ica_protect("mlp.hidden", 3),
    "ica-protect-hidden-10": _ica_protect("mlp.hidden", 10),
    "ica-protect-hidden-10-mlp": _ica_protect("mlp.hidden", 10, MLP_ONLY),
    # LoKI: only the least important down-projection rows train, full rank
    "loki-least-10": _attribution("least", 10, "target", "full", 1e-3),
    "loki-least-20": _attribution("least", 20, "target", "full", 1e-3),
    "loki-least-30": _attribution("least", 30, "target", "full", 1e-3),
    "loki-least-50": _attribution("least", 50, "target", "full", 1e-3),
    "loki-most-20": _attribution("most", 20, "target", "full", 1e-3),
    "loki-most-50": _attribution("most", 50, "target", "full", 1e-3),
    # LoRA everywhere, with the most important rows frozen
    "attr-protect-most-20": _attribution("most", 20, "protect", "lora", 1e-3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/frontier"))
    parser.add_argument("--configs", default="lora,ica-protect-out-3,ica-protect-hidden-10,loki-least-20")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--task-target", type=float, default=0.95)
    parser.add_argument("--cap", type=int, default=200, help="step cap of every run")
    parser.add_argument("--probe-samples", type=int, default=None, help="probe items (default: all)")
    parser.add_argument("--controls", action="store_true", help="add the random-neuron control of every masked config")
    parser.add_argument("--list", action="store_true", help="print the configuration names and exit")
    parser.add_argument("--set", action="append", default=[], help="override in every recipe, e.g. train.lora.r=16")
    args = parser.parse_args()
    if args.list:
        print(json.dumps({"configs": list(CONFIGS)}))
        return

    from fnapi.cli.run import parse_overrides
    from fnapi.comparison import compare_recipes, write_comparison
    from fnapi.errors import FnapiError
    from fnapi.events import console_sink
    from fnapi.recipe import Recipe

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configs: {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    started = time.monotonic()
    sink = console_sink()
    try:  # a bad --set value or --out folder: the message and exit 2, before any weights load
        changes = {"train.steps": args.cap, "eval.probe_samples": args.probe_samples, **parse_overrides(args.set)}
        recipes = [Recipe.from_dict(CONFIGS[n](n), source=n).replace(**changes) for n in names]
        comparison = compare_recipes(recipes, args.out, seeds=args.seeds, task_target=args.task_target,
                                     controls=args.controls, sink=sink)
    except FnapiError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    finally:
        getattr(sink, "close", lambda: None)()
    write_comparison(comparison, args.out)
    methods = comparison.to_dict()["methods"]
    reached = {n: m for n, m in methods.items() if (m["task"]["mean"] or 0) >= args.task_target}
    frontier = sorted(reached, key=lambda n: -(methods[n]["probes_retained"]["mean"] or 0))
    print(json.dumps({
        "benchmark": "forgetting_frontier",
        "task_target": args.task_target, "seeds": comparison.seeds, "cap": args.cap,
        "seconds": round(time.monotonic() - started, 1),
        "methods": {n: {"task": m["task"], "probes_retained": m["probes_retained"], "kl_to_base": m["kl_to_base"],
                        "text_nll_change": m["text_nll_change"], "steps": m["steps"], "vs_lora": m["vs_lora"],
                        "vs_control": m["vs_control"], "control": m["control"]} for n, m in methods.items()},
        "frontier": [{"config": n, "probes_retained": methods[n]["probes_retained"]["mean"],
                      "task": methods[n]["task"]["mean"]} for n in frontier],
        "not_reaching_target": sorted(set(methods) - set(reached)),
    }, indent=2))


if __name__ == "__main__":
    main()
