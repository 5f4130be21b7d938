"""Check `fnapi estimate` against measured peak memory. Prints JSON.

Each stage runs in a fresh subprocess (so peaks do not mix) on the recipe's model and data:

* ``capture``: load the model, read and tokenise the template data, capture the activations;
* ``ica``: the whole template build (capture, ICA with its stability runs, top tokens);
* ``train``: load the model and data and take a few optimizer steps under the recipe's method.

The subprocess reports its peak resident set size (``ru_maxrss``: everything the process held at
its worst moment, Python and libraries included), which is what the estimate predicts on CPU.

    python benchmarks/memory_estimate.py                      # the quickstart recipe, embedded model
    python benchmarks/memory_estimate.py --long               # 256-token rows: capture 16k tokens, batch 4 x 256
    python benchmarks/memory_estimate.py --recipe r.yaml --set train.batch_size=2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "quickstart.yaml"
STAGES = ("capture", "ica", "train")


def _recipe(path: str, overrides: list[str]):
    from fnapi.cli.run import parse_overrides
    from fnapi.recipe import Recipe

    recipe = Recipe.from_yaml(path)
    return recipe.replace(**parse_overrides(overrides)) if overrides else recipe


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def long_rows(path: Path, rows: int = 64) -> Path:
    """A JSON Lines file of plain-text rows of ~25 built-in paragraphs each (well over 256 tokens)."""
    from fnapi.data.builtin import text_paragraphs

    paragraphs = text_paragraphs()
    lines = [json.dumps({"text": " ".join(paragraphs[(i * 7 + k) % len(paragraphs)] for k in range(25))})
             for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_stage(stage: str, recipe_path: str, overrides: list[str], steps: int) -> dict:
    """Run one stage in this process and return its peak RSS (called in the subprocess)."""
    import torch

    from fnapi.models.loading import load_model

    recipe = _recipe(recipe_path, overrides)
    torch.manual_seed(recipe.seed)
    started = time.monotonic()
    loaded = load_model(recipe.model)
    after_load = _peak_bytes()
    if stage in ("capture", "ica"):
        from fnapi.networks.build import _autocast_dtype, build_template
        from fnapi.networks.capture import capture_activations, load_sequences
        from fnapi.recipe import parse_layers

        section = recipe.template
        specs = list(section.data) or [recipe.data.path]
        if stage == "capture":
            data = load_sequences(specs, loaded.tokenizer, samples=section.samples, max_length=section.max_length)
            acts = capture_activations(
                loaded.model, data.sequences, site=section.site,
                layers=parse_layers(section.layers, loaded.adapter.num_layers(loaded.model)),
                pad_token_id=loaded.tokenizer.pad_token_id, exclude_token_ids=loaded.tokenizer.all_special_ids,
                max_length=section.max_length, autocast=_autocast_dtype(loaded.model, "auto"), adapter=loaded.adapter)
            detail = {"rows": acts.n_rows, "neurons": int(acts.values.shape[1])}
        else:
            template = build_template(loaded, section, specs, seed=recipe.seed)
            detail = {"rows": template.data["tokens"], "components": len(template.components)}
    else:
        from fnapi.data import load_data, tokenize
        from fnapi.training import train

        data = load_data(recipe.data, seed=recipe.seed)
        tokens = tokenize(data.train, loaded.tokenizer, chat_template=recipe.data.chat_template,
                          max_length=recipe.data.max_length)
        section = recipe.train.model_copy(update={"steps": steps, "save_steps": steps + 1})
        with tempfile.TemporaryDirectory() as out:
            result = train(loaded, None, tokens, None, section, output_dir=out, seed=recipe.seed, save_model=False)
        detail = {"steps": result.steps, "longest": max(len(ids) for ids in tokens.input_ids)}
    return {"peak_rss": _peak_bytes(), "after_load_rss": after_load, "seconds": round(time.monotonic() - started, 1),
            **detail}


def measure(stage: str, recipe_path: str, overrides: list[str], steps: int) -> dict:
    """Run ``stage`` in a fresh interpreter and return what it reported."""
    command = [sys.executable, __file__, "--stage", stage, "--recipe", recipe_path, "--steps", str(steps)]
    for pair in overrides:
        command += ["--set", pair]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override KEY=VALUE")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps in the train stage")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to measure")
    parser.add_argument("--long", action="store_true",
                        help="capture and train on 256-token rows (template 64 x 256 tokens, batch 4 x 256)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage here
    args = parser.parse_args()
    if args.long:
        data = long_rows(Path(tempfile.mkdtemp(prefix="fnapi-bench-")) / "long.jsonl")
        args.overrides = [f"data.path={data}", "data.max_length=256", "train.batch_size=4",
                          f"template.data=[{data}]", "template.max_length=256", *args.overrides]
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.recipe, args.overrides, args.steps)))
        return

    from fnapi.estimate import estimate_recipe

    recipe = _recipe(args.recipe, args.overrides)
    predicted = estimate_recipe(recipe, device="cpu")
    results = []
    for stage in args.stages.split(","):
        measured = measure(stage, args.recipe, args.overrides, args.steps)
        estimate = predicted.stage(stage).total
        results.append({
            "stage": stage,
            "estimate_mib": round(estimate / 2**20, 1),
            "measured_peak_mib": round(measured["peak_rss"] / 2**20, 1),
            "error_percent": round(100 * (estimate - measured["peak_rss"]) / measured["peak_rss"], 1),
            "measured": measured,
        })
    print(json.dumps({"benchmark": "memory_estimate", "recipe": args.recipe, "overrides": args.overrides,
                      "device": "cpu", "target_error_percent": 25, "results": results}, indent=2))


if __name__ == "__main__":
    main()
