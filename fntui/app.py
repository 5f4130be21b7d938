"""The fntui application: the wizard that writes a recipe step by step, and the template browser.

The app owns the draft (saved after every step), the :class:`~fntui.engine.Engine` that makes the
fnapi calls, and a :class:`Session` with what this session computed (hardware report, model
description, template). Screens read and change them; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from fnapi.recipe import Recipe
from fntui.drafts import Draft, DraftStore
from fntui.engine import Engine, RunFunction
from fntui.steps import STEP_NAMES, STEPS, step_index

if TYPE_CHECKING:
    from fnapi.networks.template import Template
    from fnapi.runner import RunResult
    from fntui.screens.model import ModelCheck


@dataclass
class Session:
    """What this session found out; recomputed after a resume when a screen needs it."""

    model: ModelCheck | None = None  # the loaded model's check (its fnapi ModelInfo is ``model.info``)
    model_key: str | None = None  # the ModelSection (as JSON) it describes
    template: Template | None = None  # chosen on the template step
    template_key: str | None = None  # what it was built or loaded from
    template_warnings: tuple[str, ...] = ()
    run_result: RunResult | None = None


class FntuiApp(App[None]):
    """The wizard (default) or, with ``browse``, the template browser.

    ``run_fn`` replaces ``fnapi.runner.run`` (tests pass a fast fake); ``engine`` replaces the
    whole fnapi doorway; ``draft`` reopens a saved draft at its step.
    """

    CSS_PATH = "fntui.tcss"
    TITLE = "fntui"
    BINDINGS = [
        Binding("ctrl+r", "show_recipe", "Recipe", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, *, run_fn: RunFunction | None = None, engine: Engine | None = None,
                 drafts: DraftStore | None = None, draft: Draft | None = None,
                 browse: Path | None = None, compare: Path | None = None) -> None:
        super().__init__()
        self.engine = engine or Engine(run_fn=run_fn)
        self.drafts = drafts or DraftStore()
        self.draft = draft or self.drafts.new()
        self.session = Session()
        self.browse = browse
        self.compare = compare

    # ---- start-up ---------------------------------------------------------------------------
    def on_mount(self) -> None:
        if self.browse is not None:
            from fntui.screens.browser import BrowserScreen

            self.push_screen(BrowserScreen(self.browse, compare=self.compare, standalone=True))
        else:
            self.push_screen(self.step_screen(self.draft.step))

    def step_screen(self, step: str) -> Screen:
        from fntui.screens import STEP_SCREENS

        return STEP_SCREENS[STEP_NAMES[step_index(step)]]()

    # ---- moving between steps ---------------------------------------------------------------
    def goto(self, step: str) -> None:
        """Show ``step`` and remember it in the draft."""
        self.draft.step = STEP_NAMES[step_index(step)]
        self.save_draft()
        self.switch_screen(self.step_screen(self.draft.step))

    def advance(self, recipe: Recipe) -> None:
        """Keep ``recipe`` as the draft and go to the next step."""
        self.draft.recipe = recipe
        position = step_index(self.draft.step)
        self.goto(STEP_NAMES[min(position + 1, len(STEP_NAMES) - 1)])

    def go_back(self) -> None:
        self.goto(STEP_NAMES[max(step_index(self.draft.step) - 1, 0)])

    def new_run(self) -> None:
        """Start over with a fresh draft (the previous one stays saved)."""
        self.draft = self.drafts.new()
        self.session = Session()
        self.switch_screen(self.step_screen("welcome"))

    def save_draft(self) -> Path:
        return self.drafts.save(self.draft)

    # ---- app-wide actions -------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "show_recipe":
            return self.browse is None
        return True

    def current_recipe(self) -> Recipe:
        from fntui.screens.base import StepScreen

        screen = self.screen
        return screen.current_recipe() if isinstance(screen, StepScreen) else self.draft.recipe

    def action_show_recipe(self) -> None:
        from fntui.screens.recipe_preview import RecipePreviewScreen

        if isinstance(self.screen, RecipePreviewScreen):
            self.screen.dismiss(None)
            return
        self.push_screen(RecipePreviewScreen(self.current_recipe(), self.draft.id))

    def action_browse_template(self) -> None:
        from fntui.screens.browser import BrowserScreen
        from fntui.screens.prompt import PathPrompt

        def open_browser(path: str | None) -> None:
            if path:
                self.push_screen(BrowserScreen(Path(path)))

        self.push_screen(PathPrompt("Template to browse", suffixes=(".json",)), open_browser)

    async def action_quit(self) -> None:
        running = getattr(self.screen, "state", None) in ("running", "cancelling")
        if running and not getattr(self, "_quit_armed", False):
            self._quit_armed = True  # a run is hours of work: the first ctrl+q only asks
            self.notify("A run is in progress. Press ctrl+q again to stop it at the next step "
                        "(a checkpoint is kept) and quit.", severity="warning", timeout=8)
            return
        if running:
            self.screen.cancel.set()
        if self.browse is None and self.draft.step != "welcome":
            path = self.save_draft()
            self.exit(message=f"Draft saved ({path}): `fntui --resume` opens it again.")
            return
        self.exit()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        from fntui.screens.base import StepScreen

        yield from super().get_system_commands(screen)
        yield SystemCommand("Show the recipe", "The draft recipe as YAML (ctrl+r)", self.action_show_recipe)
        yield SystemCommand("Browse a template", "Open a template file in the browser", self.action_browse_template)
        if isinstance(screen, StepScreen):
            yield SystemCommand("Save the draft", "Write the draft now (it is also saved after every step)",
                                self._save_and_notify)
            yield SystemCommand("Next step", "Check this step and go on (ctrl+n)", screen.action_next)
            if screen.STEP != "welcome":
                yield SystemCommand("Previous step", "Go back one step (ctrl+b)", screen.action_back)
            for name, label in STEPS[: step_index(self.draft.step)]:
                yield SystemCommand(f"Go to step: {label}", f"Return to the {label.lower()} step",
                                    lambda name=name: self.goto(name))
        cancel = getattr(screen, "action_cancel", None)
        if cancel is not None:
            yield SystemCommand("Cancel", "Stop the running work at its next step", cancel)

    def _save_and_notify(self) -> None:
        path = self.save_draft()
        self.notify(f"Draft saved as {path.name}")
