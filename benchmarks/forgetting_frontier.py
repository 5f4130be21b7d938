"""Search for the fine-tuning method that forgets least at equal task score. Prints JSON.

On the embedded model and ``builtin:skill``, every configuration trains until its validation task
score reaches ``--task-target`` (default 0.95, checked every 10 steps) or ``--cap`` steps, and is
scored on the built-in probes asked open-ended (the primary measure: what a user sees), on replies
to general prompts (chat drift, the format-leak flag), by choice ranking and on held-out text. The
axes covered:

- site: ``mlp.out`` or ``mlp.hidden`` (ICA templates);
- budget: how many ICA components are protected, or the row quota;
- selection: most stable ICA networks; rows of lowest or highest absolute attribution (fnapi's
  ``attribution`` rule); LoKI's own rows (``loki-*``: its KVA attribution over multiple-choice items
  and its layer-balanced rule); random neurons (the control rows, added for every masked
  configuration with ``--controls``);
- what trains: LoRA on all linear layers, LoRA on the MLP only, only the selected down-projection
  rows (full rank), or full fine-tuning;
- what keeps the model answering: self-distillation replay of the base model's own replies to
  general prompts (``*-replay``), a KL-to-base penalty on them (``*-kl``);
- learning rate, where a method needs its own.

Every configuration runs through :func:`fnapi.comparison.compare_recipes` into ``--out``, so a
killed search resumes, and the result is the comparison's table (mean and 95% interval across
``--seeds``) plus the frontier: configurations ordered by probe retention among those whose mean
task score reaches the target. Usage::

    python benchmarks/forgetting_frontier.py --out runs/frontier --list
    python benchmarks/forgetting_frontier.py --out runs/frontier --configs lora,attr-least-20 --seeds 3

(``loki-least-*`` and ``loki-most-*``, the names these configurations had before fnapi had LoKI's own
rule, still run the ``attr-*`` configurations.)
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
    "eval": {"task_samples": 50, "kl_prompts": 32, "generative": {"samples": 200}},
}
ICA = {"method": "ica", "data": ["builtin:text"], "samples": 64, "max_length": 128, "components": 10}
ATTRIBUTION = {"method": "attribution", "data": ["builtin:text"], "samples": 32, "max_length": 64}
# LoKI attributes over multiple-choice items that no probe set scores (MMLU-style questions)
LOKI = {"method": "loki", "data": ["recipes/data/mmlu-style-items.json"], "samples": 16}
REPLAY = {"ratio": 0.25, "samples": 64, "max_new_tokens": 32}
KL_TO_BASE = {"samples": 64, "max_new_tokens": 32, "strength": 1.0, "batch_size": 4}
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


def _attribution(select: str, quota: float, preset: str, method: str, lr: float,
                 **train: Any) -> Callable[[str], dict]:
    return lambda name: _recipe(name, template={**ATTRIBUTION, "quota": quota, "select": [select]},
                                mask={"preset": preset, "components": "all"},
                                train={"method": method, "learning_rate": lr, **train})


def _loki(quota: float, **train: Any) -> Callable[[str], dict]:
    return lambda name: _recipe(name, template={**LOKI, "quota": quota}, mask={"preset": "target", "components": "all"},
                                train={"method": "full", "learning_rate": 1e-3, **train})


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
    # only the rows of lowest (or highest) absolute attribution train, full rank (fnapi's rule)
    "attr-least-10": _attribution("least", 10, "target", "full", 1e-3),
    "attr-least-20": _attribution("least", 20, "target", "full", 1e-3),
    "attr-least-30": _attribution("least", 30, "target", "full", 1e-3),
    "attr-least-50": _attribution("least", 50, "target", "full", 1e-3),
    "attr-most-20": _attribution("most", 20, "target", "full", 1e-3),
    "attr-most-50": _attribution("most", 50, "target", "full", 1e-3),
    # LoRA everywhere, with the most important rows frozen
    "attr-protect-most-20": _attribution("most", 20, "protect", "lora", 1e-3),
    # LoKI's own rows (its attribution and rule), full rank
    "loki-10": _loki(10),
    "loki-20": _loki(20),
    "loki-30": _loki(30),
    # keeping the model answering: the base model's own replies to general prompts
    "lora-replay": lambda name: _recipe(name, train={"replay": REPLAY}),
    "lora-kl": lambda name: _recipe(name, train={"kl_to_base": KL_TO_BASE}),
    "attr-least-20-replay": _attribution("least", 20, "target", "full", 1e-3, replay=REPLAY),
    "attr-least-20-kl": _attribution("least", 20, "target", "full", 1e-3, kl_to_base=KL_TO_BASE),
    "loki-20-replay": _loki(20, replay=REPLAY),
}
#: the names the attr-* configurations had before fnapi had LoKI's own rule
ALIASES = {f"loki-{kind}-{quota}": f"attr-{kind}-{quota}" for kind, quota in
           (("least", 10), ("least", 20), ("least", 30), ("least", 50), ("most", 20), ("most", 50))}


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

    names = [ALIASES.get(n.strip(), n.strip()) for n in args.configs.split(",") if n.strip()]
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
    frontier = sorted(reached, key=lambda n: -((methods[n].get("generative_retained") or {}).get("mean") or 0))
    print(json.dumps({
        "benchmark": "forgetting_frontier",
        "task_target": args.task_target, "seeds": comparison.seeds, "cap": args.cap,
        "seconds": round(time.monotonic() - started, 1),
        "methods": {n: {"task": m["task"], "generative_retained": m.get("generative_retained"),
                        "chat_kl": m.get("chat_kl"), "probes_retained": m["probes_retained"],
                        "kl_to_base": m["kl_to_base"],
                        "text_nll_change": m["text_nll_change"], "steps": m["steps"], "vs_lora": m["vs_lora"],
                        "vs_control": m["vs_control"], "control": m["control"]} for n, m in methods.items()},
        "frontier": [{"config": n, "generative_retained": (methods[n].get("generative_retained") or {}).get("mean"),
                      "chat_kl": (methods[n].get("chat_kl") or {}).get("mean"),
                      "probes_retained": methods[n]["probes_retained"]["mean"],
                      "task": methods[n]["task"]["mean"]} for n in frontier],
        "not_reaching_target": sorted(set(methods) - set(reached)),
    }, indent=2))


if __name__ == "__main__":
    main()
