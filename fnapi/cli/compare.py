"""``fnapi compare``: run fine-tuning methods side by side, over seeds, with random-neuron controls.

Progress goes to stderr; the table (or with ``--json`` one JSON object) goes to stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def compare(
    recipes: list[Path] = typer.Argument(..., metavar="RECIPE...", help="recipe YAML files, one per method"),
    output: Path = typer.Option(Path("runs/compare"), "--output", "-o",
                                help="folder for the runs (one sub-folder per method) and the comparison"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="run every method with this many seeds (recipe seed, +1, ...)"),
    task_target: float | None = typer.Option(
        None, "--task-target", min=0.0, max=1.0,
        help="train each run until its validation task score reaches this (train.steps is the cap)"),
    controls: bool = typer.Option(True, "--controls/--no-controls",
                                  help="add a random-neuron control row for every masked method"),
    baseline: str | None = typer.Option(None, "--baseline",
                                           help="method the others are compared with [default: the unmasked LoRA]"),
    overrides: list[str] = typer.Option([], "--set", help="override a value in every recipe, e.g. --set train.steps=10"),
    as_json: bool = typer.Option(False, "--json", help="print the comparison as one JSON object"),
) -> None:
    """Run recipes (one per method) and compare them: mean and 95% interval across seeds.

    Columns: task score, probe score retained, its paired difference from the baseline and from the
    method's random-neuron control, KL to the base model, change in held-out text NLL, steps,
    trainable parameters. Writes comparison.md, comparison.json and pareto.png into the output
    folder. Running the same command again resumes: finished runs are read, unfinished ones resume.
    """
    from fnapi.cli.run import parse_overrides
    from fnapi.comparison import compare_recipes, write_comparison
    from fnapi.events import console_sink
    from fnapi.recipe import Recipe

    loaded = [Recipe.from_yaml(path) for path in recipes]
    if overrides:
        changes = parse_overrides(overrides)
        loaded = [recipe.replace(f"{path} with --set", **changes) for path, recipe in zip(recipes, loaded)]
    sink = console_sink()
    try:
        result = compare_recipes(loaded, output, seeds=seeds, task_target=task_target, controls=controls,
                                 baseline=baseline, sink=sink)
    finally:
        getattr(sink, "close", lambda: None)()
    markdown, data, picture = write_comparison(result, output)
    if as_json:
        print(json.dumps({**result.to_dict(), "files": [str(markdown), str(data), str(picture)]}, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    from fnapi.cli.study import _print_table

    console = Console(highlight=False)
    header, cells = result.table()
    table = Table(show_edge=False, title=f"{len(result.seeds)} seed(s); mean [95% interval]")
    for name in header:
        table.add_column(name, justify="left" if name == "method" else "right")
    for row in cells:
        table.add_row(*row)
    _print_table(console, table)
    for warning in result.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    print(f"written: {markdown} {data} {picture}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
