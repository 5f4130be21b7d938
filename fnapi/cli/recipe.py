"""``fnapi validate``: check recipes without running them."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def validate(
    recipes: list[Path] = typer.Argument(..., help="recipe YAML files to check"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only problems"),
) -> None:
    """Validate recipe files (single runs and continual ones) without loading weights: the schema, that data, evaluation and template files
    exist and can be read, and (from the model's config) that layer filters and the template fit the model.
    Exit 0 when all are valid, 2 otherwise; each problem names its YAML path."""
    from fnapi.errors import FnapiError
    from fnapi.preflight import check_continual, check_recipe
    from fnapi.recipe import ContinualRecipe, load_recipe

    failed = 0
    for path in recipes:
        try:
            recipe = load_recipe(path)
            # what `fnapi run` or `fnapi continual` would refuse before loading weights
            (check_continual if isinstance(recipe, ContinualRecipe) else check_recipe)(recipe, str(path))
        except FnapiError as exc:
            failed += 1
            print(f"error: {exc.message}", file=sys.stderr)
            continue
        if not quiet:
            print(f"ok: {path} (name {recipe.name}, recipe {recipe.fingerprint()})")
    if failed:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
