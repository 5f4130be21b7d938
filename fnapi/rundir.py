"""Run directories: where a run keeps its recipe, events, checkpoints and outputs.

A run directory is claimed by writing ``recipe.yaml`` into it. Running the same recipe again
into an unfinished run resumes it; a finished run is never overwritten (a new numbered directory
is used instead); an unfinished run with a different recipe is an error, so no earlier output is
ever destroyed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fnapi.errors import RecipeError
from fnapi.recipe import Recipe

RECIPE_FILE = "recipe.yaml"
FINISHED_MARKER = "report.json"


@dataclass(frozen=True)
class RunDir:
    """A claimed run directory and whether it resumes earlier work."""

    path: Path
    resumed: bool

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def template(self) -> Path:
        return self.path / "template.json"


def _is_finished(path: Path) -> bool:
    return (path / FINISHED_MARKER).exists()


def _recorded_recipe(path: Path) -> Recipe | None:
    file = path / RECIPE_FILE
    if not file.exists():
        return None
    try:
        return Recipe.from_yaml(file)
    except RecipeError:
        return None


def claim_run_dir(recipe: Recipe, output: str | Path | None = None) -> RunDir:
    """Choose and prepare the run directory for ``recipe``.

    ``output`` overrides ``recipe.output.dir`` (where ``{name}`` stands for the recipe name).
    """
    base = Path(str(output) if output is not None else recipe.output.dir.replace("{name}", recipe.name))
    candidate = base
    number = 1
    while True:
        if not candidate.exists() or not any(candidate.iterdir()):
            break
        previous = _recorded_recipe(candidate)
        if previous is None:
            raise RecipeError(
                f"run directory {candidate} exists and is not an fnapi run (no readable {RECIPE_FILE})",
                "choose another --output directory",
            )
        if _is_finished(candidate):
            number += 1
            candidate = base.with_name(f"{base.name}-{number}")
            continue
        if previous.fingerprint() != recipe.fingerprint():
            raise RecipeError(
                f"run directory {candidate} holds an interrupted run of a different recipe "
                f"(recorded {previous.fingerprint()}, given {recipe.fingerprint()})",
                f"resume it with `fnapi run {candidate / RECIPE_FILE}`, or choose another --output directory; "
                "nothing was changed",
            )
        return RunDir(path=candidate, resumed=True)
    candidate.mkdir(parents=True, exist_ok=True)
    recipe.to_yaml(candidate / RECIPE_FILE)
    return RunDir(path=candidate, resumed=False)
