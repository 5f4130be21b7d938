"""Wizard drafts: the recipe being written, saved after every step so quitting loses nothing.

A draft is two files in ``cache_dir()/drafts/``: ``<id>.yaml``, a complete and valid recipe (it
can be run as it is), and ``<id>.json``, the wizard's place in it (the step to reopen and a few
choices that are not part of a recipe, such as where the final recipe file goes). Both are
written atomically, the recipe first, so a draft's state never points at a missing recipe.

>>> store = DraftStore(root=tmp)                    # doctest: +SKIP
>>> draft = store.new(); draft.step = "model"; store.save(draft)  # doctest: +SKIP
>>> store.latest().step                             # doctest: +SKIP
'model'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fnapi.errors import FnapiError, RecipeError
from fnapi.paths import atomic_write_text, cache_dir
from fnapi.recipe import Recipe, validation_problems

DRAFT_FORMAT = "fntui.draft/1"


class WizardChoices(BaseModel):
    """What the wizard remembers that is not part of a recipe: the screens read and set these
    fields, checked on every assignment, and the draft file stores them."""

    # Keys an older wizard wrote and this one no longer reads are dropped rather than refused:
    # a draft is a convenience, and refusing it would lose the recipe it holds.
    model_config = ConfigDict(extra="ignore", strict=True, validate_assignment=True)

    apply_hardware: bool = True  # Hardware step: apply the recommended settings
    recipe_path: str | None = None  # where the final recipe file goes
    template_mode: Literal["build", "load", "none"] | None = None
    template_path: str | None = None  # the template built or loaded on the Template step
    mask_none_chosen: bool = False  # "no mask" picked on purpose on the Training step
    train_prefilled: bool = False  # batch and accumulation were prefilled for this machine
    save_steps_set: bool = False  # the checkpoint interval was edited (it follows Steps until then)
    run_dir: str | None = None  # the run started from this draft
    run_recipe: str | None = None  # fingerprint of the recipe that run used
    run_estimate: dict[str, Any] | None = None  # the time estimate shown before Start


class DraftState(BaseModel):
    """``<id>.json``: where the wizard is in a draft."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["fntui.draft/1"]
    id: str
    step: str = "welcome"
    updated: str = ""
    extras: WizardChoices = WizardChoices()


@dataclass
class Draft:
    """One wizard session: its recipe so far, the step to reopen, and wizard-only choices."""

    id: str
    recipe: Recipe = field(default_factory=Recipe)
    step: str = "welcome"
    choices: WizardChoices = field(default_factory=WizardChoices)
    updated: str = ""


class DraftError(FnapiError):
    """A draft that cannot be found or read."""


class DraftStore:
    """Reads and writes drafts under ``root`` (default ``cache_dir()/drafts``).

    ``now`` gives the time used for new ids and the ``updated`` stamp (tests pass a fixed clock).
    """

    def __init__(self, root: Path | None = None, now: Callable[[], datetime] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "drafts"
        self.now = now or datetime.now

    def recipe_path(self, draft_id: str) -> Path:
        return self.root / f"{draft_id}.yaml"

    def state_path(self, draft_id: str) -> Path:
        return self.root / f"{draft_id}.json"

    def new(self, recipe: Recipe | None = None) -> Draft:
        """A fresh draft with an id made from the current time (not saved yet)."""
        base = self.now().strftime("draft-%Y%m%d-%H%M%S")
        draft_id, number = base, 1
        while self.state_path(draft_id).exists():
            number += 1
            draft_id = f"{base}-{number}"
        return Draft(id=draft_id, recipe=recipe if recipe is not None else Recipe())

    def save(self, draft: Draft) -> Path:
        """Write the draft's recipe, then its state; return the recipe file."""
        draft.updated = self.now().isoformat(timespec="seconds")
        path = draft.recipe.to_yaml(self.recipe_path(draft.id))
        state = DraftState(format=DRAFT_FORMAT, id=draft.id, step=draft.step, updated=draft.updated,
                           extras=draft.choices)
        atomic_write_text(self.state_path(draft.id), state.model_dump_json(indent=2) + "\n")
        return path

    def load(self, draft_id: str) -> Draft:
        """Read one draft; :class:`DraftError` naming the file when it is missing or damaged."""
        state_file = self.state_path(draft_id)
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DraftError(f"no draft {draft_id!r} in {self.root}") from None
        except (OSError, ValueError) as exc:
            raise DraftError(f"draft state {state_file} cannot be read: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != DRAFT_FORMAT:
            raise DraftError(f"{state_file} is not an fntui draft (format {DRAFT_FORMAT!r} expected)")
        try:
            parsed = DraftState.model_validate(state)
        except ValidationError as exc:
            raise DraftError.invalid(str(state_file), validation_problems(exc, DraftState), what="draft") from None
        try:
            recipe = Recipe.from_yaml(self.recipe_path(draft_id))
        except RecipeError as exc:
            raise DraftError(f"draft {draft_id}: {exc.message}") from None
        return Draft(id=draft_id, recipe=recipe, step=parsed.step, choices=parsed.extras, updated=parsed.updated)

    def list(self) -> list[Draft]:
        """Readable drafts, most recently saved first (damaged ones are left out)."""
        drafts = []
        for state_file in self.root.glob("*.json") if self.root.is_dir() else ():
            try:
                drafts.append(self.load(state_file.stem))
            except DraftError:
                continue
        return sorted(drafts, key=lambda d: (d.updated, d.id), reverse=True)

    def latest(self) -> Draft | None:
        """The most recently saved draft, or None."""
        drafts = self.list()
        return drafts[0] if drafts else None
