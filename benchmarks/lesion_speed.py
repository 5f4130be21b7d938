"""Seconds per probe-scoring evaluation on the embedded model, and the default lesion study's projected time. Prints JSON.

One evaluation is one :func:`fnapi.evaluation.choice_logprobs` call over ``--items`` built-in probe
items, timed ``--repeats`` times (the median is reported, since other work on the machine inflates
single timings), once on the plain model and once under a lesion-sized random mask at ``mlp.out``
(what each lesion-study evaluation runs). ``--before REV`` also times ``fnapi/evaluation.py`` as it
was at git revision ``REV`` (loaded from ``git show``) and reports the largest difference between
the two scorers. The projection multiplies the masked median by the default study's evaluation
count, ``1 + components x (1 + draws)``, for the defaults of :func:`fnapi.lesion.lesion_study` and
a template of ``--components`` components (``fnapi template build`` finds 10 by default)::

    python benchmarks/lesion_speed.py [--items 0 (the lesion default)] [--repeats 3] [--before HEAD~1]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_at(revision: str):
    """``fnapi/evaluation.py`` at git ``revision``, imported as a separate module."""
    source = subprocess.run(["git", "show", f"{revision}:fnapi/evaluation.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "evaluation_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("evaluation_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _median_seconds(function, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), [round(t, 2) for t in times], result


def main() -> None:
    from fnapi.lesion import lesion_study

    defaults = {name: p.default for name, p in inspect.signature(lesion_study).parameters.items()}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--items", type=int, default=0, help="probe items per evaluation; 0: the lesion default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the lesion study's batch size")
    parser.add_argument("--components", type=int, default=10, help="components of the projected study's template")
    parser.add_argument("--lesion-percent", type=float, default=1.0, help="share of mlp.out channels per layer masked")
    parser.add_argument("--before", metavar="REV", help="also time fnapi/evaluation.py at this git revision")
    args = parser.parse_args()

    import numpy as np
    import torch

    from fnapi.data.builtin import probe_items
    from fnapi.evaluation import choice_logprobs
    from fnapi.lesion import probe_scores
    from fnapi.masking import NeuronMask, mask
    from fnapi.models.loading import load_model

    batch_size = args.batch_size or inspect.signature(probe_scores).parameters["batch_size"].default
    n_items = args.items or defaults["probe_samples"]
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    items = probe_items(n_items)
    width = loaded.info.hidden_size
    rng = np.random.default_rng(0)
    count = max(1, round(width * args.lesion_percent / 100))
    neurons = {layer: sorted(int(c) for c in rng.choice(width, size=count, replace=False))
               for layer in range(loaded.info.num_layers)}
    lesion = NeuronMask("mlp.out", neurons, ablate="selected", width=width)

    def after():
        return choice_logprobs(model, tokenizer, items, batch_size=batch_size)

    def after_masked():
        with mask(model, lesion):
            return after()

    choice_logprobs(model, tokenizer, items[:batch_size], batch_size=batch_size)  # warm-up
    seconds, runs, scores = _median_seconds(after, args.repeats)
    masked_seconds, masked_runs, _ = _median_seconds(after_masked, args.repeats)
    evaluations = 1 + args.components * (1 + defaults["draws"])
    out = {
        "benchmark": "lesion_speed",
        "model": args.model,
        "threads": torch.get_num_threads(),
        "items": len(items),
        "choices": sum(len(item.choices) for item in items),
        "batch_size": batch_size,
        "after": {"seconds_per_eval": round(seconds, 2), "runs": runs,
                  "masked_seconds_per_eval": round(masked_seconds, 2), "masked_runs": masked_runs},
        "lesion_defaults": {"probe_samples": defaults["probe_samples"], "draws": defaults["draws"],
                            "components": args.components, "evaluations": evaluations},
        "projected_default_lesion_minutes": round(evaluations * masked_seconds / 60, 1)
        if len(items) == defaults["probe_samples"] else None,
    }
    if args.before:
        old = _module_at(args.before)
        before_seconds, before_runs, before_scores = _median_seconds(
            lambda: old.choice_logprobs(model, tokenizer, items, batch_size=batch_size), args.repeats)
        diff = max(abs(a - b) for row, old_row in zip(scores, before_scores) for a, b in zip(row, old_row))
        out["before"] = {"revision": args.before, "seconds_per_eval": round(before_seconds, 2), "runs": before_runs}
        out["speedup"] = round(before_seconds / seconds, 2)
        out["max_abs_difference"] = diff
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
