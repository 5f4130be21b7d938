"""The built-in continual-learning benchmark, and the check of the continual goal; prints JSON.

Runs ``recipes/continual/builtin.yaml`` (four generated skills, every method; by default its 3
seeds) into ``--output``, resuming whatever that folder already holds, then prints each method's AA,
BWT, FWT and probes retained with their 95% intervals, the wall time of this invocation, and the
goal check: is the best masked method's BWT closer to zero than sequential LoRA's beyond the
interval of the paired difference, at an AA no lower than LoRA's, and at least as good as EWC and
LwF (and how it compares with O-LoRA)?

    python benchmarks/continual_builtin.py --output benchmarks/results/continual-builtin
    python benchmarks/continual_builtin.py --seeds 0 --summarize-only   # what has finished so far
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fnapi.continual_learning.runner import continual, elements, summarize_folder
from fnapi.events import console_sink
from fnapi.recipe import ContinualRecipe

REPO = Path(__file__).resolve().parents[1]
MASKED = ("protect", "subspace", "masked")  # the methods that are ours: masks over neurons or activation directions


def _estimate(method: dict, key: str) -> dict:
    return {"mean": method[key], "ci95": method[f"{key}_ci95"]}


def goal(summary: dict, recipe: ContinualRecipe) -> dict:
    """The goal, measured: the best masked method (highest mean BWT) against the others."""
    kinds = {m.label: m.method for m in recipe.methods}
    methods = summary["methods"]
    ours = [name for name in methods if kinds.get(name) in MASKED]
    if not ours or "sequential_lora" not in methods:
        return {"decided": False, "why": "needs sequential_lora and a masked method with finished runs"}
    best = max(ours, key=lambda name: methods[name]["bwt"] if methods[name]["bwt"] is not None else float("-inf"))
    vs = methods[best]["vs_reference"] or {}
    bwt_diff, aa_diff = vs.get("bwt") or {}, vs.get("aa") or {}
    interval = bwt_diff.get("ci95")
    others = {name: {"aa": methods[name]["aa"], "bwt": methods[name]["bwt"]}
              for name in methods if kinds.get(name) in ("ewc", "lwf", "olora")}
    paired = bwt_diff.get("n") or 0
    checks = {
        # one seed gives a zero-width interval, which decides nothing
        "bwt_beyond_lora": bool(paired >= 2 and interval and interval[0] is not None and interval[0] > 0),
        "aa_not_below_lora": (aa_diff.get("diff") or 0) >= 0 if aa_diff else None,
        "bwt_at_least_ewc_lwf": all(methods[best]["bwt"] >= others[n]["bwt"] for n in others
                                    if kinds[n] in ("ewc", "lwf") and others[n]["bwt"] is not None),
    }
    return {"best_masked": best, "bwt": _estimate(methods[best], "bwt"), "aa": _estimate(methods[best], "aa"),
            "vs_sequential_lora": vs, "others": others, "checks": checks,
            "met": all(v is True for v in checks.values()),
            "runs": len(methods[best]["runs"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "continual" / "builtin.yaml"))
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "continual-builtin"))
    parser.add_argument("--seeds", type=int, nargs="*", help="run only these seeds (default: the recipe's)")
    parser.add_argument("--summarize-only", action="store_true", help="summarise what has finished; run nothing")
    args = parser.parse_args()
    recipe = ContinualRecipe.from_yaml(args.recipe)
    started = time.monotonic()
    if not args.summarize_only:
        units = elements(recipe)
        chosen = [k for k, unit in enumerate(units) if args.seeds is None or unit.seed in args.seeds]
        sink = console_sink()
        for k in chosen:  # unit by unit, so a partial run still leaves finished units to summarise
            continual(recipe, output=args.output, sink=sink, element=k)
    summary = summarize_folder(recipe, args.output).to_dict()
    print(json.dumps({
        "recipe": args.recipe, "output": args.output, "seconds_this_invocation": round(time.monotonic() - started, 1),
        "seconds_of_all_sequences": summary["seconds"],
        "methods": {name: {key: _estimate(m, key) for key in ("aa", "bwt", "fwt", "probes_retained")}
                    | {"runs": len(m["runs"]), "seeds": m["seeds"]} for name, m in summary["methods"].items()},
        "goal": goal(summary, recipe),
    }, indent=1))


if __name__ == "__main__":
    main()
