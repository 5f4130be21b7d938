"""``fnapi validate``: check recipes without running them."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def validate(
    recipes: list[Path] = typer.Argument(..., help="recipe YAML files to check"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only problems"),
) -> None:
    """Validate recipe files: exit 0 when all are valid, 2 otherwise (each problem names its YAML path)."""
    from fnapi.errors import FnapiError
    from fnapi.recipe import Recipe

    failed = 0
    for path in recipes:
        try:
            recipe = Recipe.from_yaml(path)
        except FnapiError as exc:
            failed += 1
            print(f"error: {exc.message}", file=sys.stderr)
            continue
        missing = [f"{where}: file not found: {value}" for where, value in recipe.evaluation_files()
                   if not Path(value).exists()]
        if missing:
            failed += 1
            print(f"error: {path}: invalid recipe\n  " + "\n  ".join(missing), file=sys.stderr)
            continue
        if not quiet:
            print(f"ok: {path} (name {recipe.name}, recipe {recipe.fingerprint()})")
    if failed:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
