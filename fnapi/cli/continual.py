"""``fnapi continual``: methods learn tasks one after another; the accuracy matrix, AA, BWT, FWT."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def continual(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="continual recipe YAML file (kind: continual)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="output folder (default: the recipe's output.dir)"),
    element: int | None = typer.Option(None, "--element", min=0,
                                       help="run only this unit of work (a SLURM array element; see --list)"),
    list_units: bool = typer.Option(False, "--list", help="list the units of work (sequences and single-task "
                                                         "baselines) with their element numbers, and exit"),
    summarize: bool = typer.Option(False, "--summarize", help="only summarise the finished units into continual.json, "
                                                              "continual.md and matrix.png"),
    overrides: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. --set train.steps=10"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
) -> None:
    """Run a continual-learning recipe: every method learns the tasks in every order, once per seed.

    After each task every task is scored (one row of the accuracy matrix) and the general probes
    too. Writes continual.json, continual.md and matrix.png into the output folder. Running the
    same command again resumes: finished sequences are read, an interrupted one continues after its
    last finished task, from its training checkpoint.
    """
    from fnapi.cli.run import parse_overrides
    from fnapi.continual_learning.runner import continual as run_continual
    from fnapi.continual_learning.runner import elements, summarize_folder
    from fnapi.events import console_sink
    from fnapi.recipe import ContinualRecipe
    from fnapi.stopping import stop_on_signals

    recipe = ContinualRecipe.from_yaml(recipe_path)
    source = str(recipe_path)
    if overrides:
        source = f"{recipe_path} with --set"
        recipe = recipe.replace(source, **parse_overrides(overrides))
    folder = output if output is not None else recipe.output_dir()
    if list_units:
        for number, unit in enumerate(elements(recipe)):
            print(f"{number}\t{unit.describe()}")
        return
    if summarize:
        summary = summarize_folder(recipe, folder)
    else:
        sink = console_sink()
        try:
            with stop_on_signals("the continual run") as stop:
                summary = run_continual(recipe, output=folder, sink=sink, cancel=stop, element=element, source=source)
        finally:
            getattr(sink, "close", lambda: None)()
        if summary is None:  # one element of an array: the summary comes once all are done
            print(f"element {element} finished; summarise with `fnapi continual {recipe_path} --output {folder} "
                  "--summarize`")
            return
    if as_json:
        print(json.dumps(json.loads((folder / "continual.json").read_text()), indent=2))
        return
    print((folder / "continual.md").read_text())
    print(f"written: {folder / 'continual.json'} {folder / 'continual.md'} {folder / 'matrix.png'}")


def register(app: typer.Typer) -> None:
    app.command("continual")(continual)
