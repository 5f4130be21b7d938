"""``fnapi run``: replay a recipe headless, with console progress and a run directory."""

from __future__ import annotations

from pathlib import Path

import typer


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["train.steps=10", "mask.preset=protect"]`` -> dotted-path changes (values read as YAML)."""
    import yaml

    from fnapi.errors import RecipeError
    from fnapi.recipe import _RecipeLoader

    changes: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {pair!r}: use KEY=VALUE with a dotted key, for example train.steps=10")
        changes[key.strip()] = yaml.load(raw, Loader=_RecipeLoader) if raw.strip() else None
    return changes


def run(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe YAML file"),
    output: Path | None = typer.Option(None, "--output", "-o", help="run directory (default: recipe output.dir)"),
    overrides: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. --set train.steps=10"),
) -> None:
    """Run a recipe end to end (template, masked training, report); prints the run directory last.

    Running the same recipe again after an interruption resumes from the last checkpoint.
    """
    from fnapi.events import console_sink
    from fnapi.recipe import Recipe
    from fnapi.runner import run as run_recipe
    from fnapi.stopping import stop_on_signals

    recipe = Recipe.from_yaml(recipe_path)
    source = str(recipe_path)
    if overrides:
        source = f"{recipe_path} with --set"
        recipe = recipe.replace(source, **parse_overrides(overrides))
    sink = console_sink()
    try:
        with stop_on_signals("the run") as stop:
            result = run_recipe(recipe, sink=sink, output=output, cancel=stop, source=source)
    finally:
        getattr(sink, "close", lambda: None)()
    from fnapi.distributed import is_main_process

    if not is_main_process():  # under a launcher, the main process speaks for the run
        return
    report = result.report
    print(f"report: {result.run_dir / 'report.md'}")
    if report.probes.before is not None:
        print(f"task {_fmt(report.task.before)} -> {_fmt(report.task.after)}, probes {_fmt(report.probes.before)} -> "
              f"{_fmt(report.probes.after)}, KL to base {_fmt(report.kl_to_base, 4)}, final loss {_fmt(report.final_loss, 4)}")
    print(result.run_dir)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def register(app: typer.Typer) -> None:
    app.command("run")(run)
