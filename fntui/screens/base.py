"""What every wizard step shares: layout, reading fields, inline errors, back and next.

A step edits the draft recipe. :meth:`StepScreen.changes` reads the step's fields into dotted
recipe changes, noting bad input per field; the changes are then validated by
``Recipe.replace``, whose errors (they name the YAML path) land next to the field with that
``key``. Next only advances when nothing is wrong; the app then saves the draft.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Collapsible, Footer, Input, Label, RadioSet, Select, Static
from textual.worker import Worker, WorkerState

from fnapi.errors import FnapiError, RecipeError
from fnapi.recipe import Recipe
from fntui.widgets.fields import Field
from fntui.widgets.step_bar import StepBar

if TYPE_CHECKING:
    from fntui.app import FntuiApp
    from fntui.drafts import WizardChoices


def describe_error(error: BaseException) -> str:
    """A readable paragraph for an error raised by fnapi (or, if it is a bug, what it was)."""
    if isinstance(error, FnapiError):
        return error.message + (f"\n{error.hint}" if error.hint else "")
    from fnapi.redaction import redact

    return redact(f"internal error: {type(error).__name__}: {error}")


class Form:
    """Reads the screen's controls by id and records a message per field that holds bad input."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self.errors: dict[str, str] = {}

    def fail(self, control_id: str, message: str) -> None:
        self.errors.setdefault(control_id, message)

    def raw(self, control_id: str) -> Any:
        control = self.screen.query_one(f"#{control_id}")
        if isinstance(control, Input):
            return control.value
        if isinstance(control, Select):
            return None if control.value is Select.BLANK else control.value
        if isinstance(control, Checkbox):
            return control.value
        if isinstance(control, RadioSet):
            return control.pressed_button.name if control.pressed_button is not None else None
        raise TypeError(f"#{control_id} is not a form control")

    def text(self, control_id: str, *, required: str | None = None) -> str | None:
        """Stripped text, None when empty; ``required`` is the message shown when it is empty."""
        value = str(self.raw(control_id) or "").strip()
        if not value and required:
            self.fail(control_id, required)
        return value or None

    def integer(self, control_id: str, *, optional: bool = False, minimum: int | None = None) -> int | None:
        value = self.text(control_id, required=None if optional else "enter a whole number")
        if value is None:
            return None
        try:
            number = int(value.replace("_", ""))
        except ValueError:
            self.fail(control_id, f"{value!r} is not a whole number")
            return None
        if minimum is not None and number < minimum:
            self.fail(control_id, f"must be at least {minimum}")
        return number

    def number(self, control_id: str, *, positive: bool = False) -> float | None:
        value = self.text(control_id, required="enter a number")
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            self.fail(control_id, f"{value!r} is not a number (for example 2e-4 or 0.0002)")
            return None
        if positive and not number > 0:
            self.fail(control_id, "must be greater than 0")
        return number


class CheckBeforeNext:
    """Slow work a step's input must pass before Next (loading the model, reading the data,
    building a template), keyed by what its answer depends on: ``key(recipe)``.

    It remembers which key is being checked (``running``), which keys failed and beside which
    control, and whether Next is waiting for the answer (then the step advances once it passes).
    ``passed()`` gives the key whose check passed last; ``run(recipe)`` starts the step's worker,
    in worker group ``group``; ``running`` is None again once the step says the work ended.
    """

    def __init__(self, screen: StepScreen, *, group: str, key: Callable[[Recipe], str | None],
                 passed: Callable[[], str | None], run: Callable[..., None]) -> None:
        self.screen = screen
        self.group = group
        self.key = key
        self.passed = passed
        self.run = run
        self.running: str | None = None
        self.advance = False
        self.failures: dict[str, tuple[str, str]] = {}  # key -> (control id, message)

    def start(self, recipe: Recipe, *, advance: bool = False, **options: Any) -> None:
        """Check ``recipe`` (``options`` go to ``run``); with ``advance``, Next goes on once it passes."""
        self.running, self.advance = self.key(recipe), advance
        self.run(recipe, **options)

    def before_next(self, recipe: Recipe, *, advance: bool = True) -> Recipe | None:
        """``recipe`` when its check passed; else start the check and stay on the step."""
        if self.passed() == self.key(recipe):
            return recipe
        self.start(recipe, advance=advance)
        return None

    def current(self, key: str | None) -> Recipe | None:
        """The step's recipe if an answer for ``key`` still applies (None: the fields changed since)."""
        recipe, _ = self.screen.check()
        return recipe if recipe is not None and key == self.key(recipe) else None

    def proceed(self, recipe: Recipe | None) -> None:
        """After a passing answer is shown: advance when Next was waiting for it."""
        if self.advance and recipe is not None:
            self.screen.app.advance(recipe)

    def owns(self, group: str, error: BaseException) -> bool:
        """Whether a failed worker is this check saying what is wrong with the input (not a bug)."""
        return group == self.group and isinstance(error, FnapiError) and self.running is not None

    def failed(self, control_id: str, message: str) -> bool:
        """Keep the running key's failure beside ``control_id`` (``""``: the banner) and show it."""
        if self.running is not None:
            self.failures[self.running] = (control_id, message)
        self.screen.validate(show_all=True)
        return True

    def problems(self, recipe: Recipe) -> dict[str, str]:
        """The failure of exactly this input, by control id."""
        control_id, message = self.failures.get(self.key(recipe) or "", ("", ""))
        return {control_id: message} if message else {}


class StepScreen(Screen):
    """Base of the wizard's steps. Subclasses set ``STEP``, ``TITLE`` and ``HINT`` and implement
    :meth:`compose_body`, :meth:`changes` and, when Next needs work first, :meth:`before_next`."""

    STEP: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    HINT: ClassVar[str] = ""

    BINDINGS = [
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("ctrl+b", "back", "Back", priority=True),
    ]

    app: FntuiApp

    def __init__(self) -> None:
        super().__init__()
        self._live = False
        self._touched: set[str] = set()  # controls the user changed: their problems show at once
        self._attempted = False  # after a Next, every problem shows

    # ---- layout ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP, id="step-bar")
        yield Static(self.TITLE, id="step-title", markup=False)
        if self.HINT:
            yield Static(self.HINT, id="step-hint", markup=False)
        with VerticalScroll(id="body"):
            yield from self.compose_body()
        yield Static("", id="banner", markup=False)
        with Horizontal(id="nav"):
            yield Button("◀ Back", id="back", compact=True)
            yield Label("", id="nav-status")
            yield Button("Next ▶", id="next", variant="primary", compact=True)
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.query_one("#back", Button).display = self.STEP != "welcome"
        self.load()
        # Changes made while filling the fields are not the user's typing: validate after them.
        self.call_after_refresh(self._go_live)

    def _go_live(self) -> None:
        self._live = True

    def load(self) -> None:
        """Fill the fields from the draft (called once on mount)."""

    @property
    def recipe(self) -> Recipe:
        return self.app.draft.recipe

    @property
    def choices(self) -> WizardChoices:
        return self.app.draft.choices

    # ---- validation -----------------------------------------------------------------------
    def changes(self, form: Form) -> dict[str, Any]:
        """Dotted recipe changes from the fields (bad input goes to ``form.fail``)."""
        return {}

    def check(self) -> tuple[Recipe | None, dict[str, str]]:
        """The draft with this step's changes (None if anything is wrong) and the problems found."""
        form = Form(self)
        changes = self.changes(form)
        recipe = None
        if not form.errors:
            try:
                recipe = self.recipe.replace(**changes) if changes else self.recipe
            except RecipeError as exc:
                form.errors.update(self._recipe_errors(exc))
        if recipe is not None and not form.errors:
            form.errors.update(self.known_problems(recipe))
        return (None if form.errors else recipe), form.errors

    def known_problems(self, recipe: Recipe) -> dict[str, str]:
        """Problems already found with this exact recipe (a model that failed to load, say), by field."""
        return {}

    def validate(self, show_all: bool = False) -> Recipe | None:
        """Like :meth:`check`, showing each problem next to its field: problems of fields not
        touched yet wait until Next (or ``show_all``), so an empty form does not start in red."""
        recipe, errors = self.check()
        self._attempted = self._attempted or show_all
        if not self._attempted:
            errors = {key: message for key, message in errors.items() if key in self._touched or key == ""}
        self.show_errors(errors)
        return recipe

    def current_recipe(self) -> Recipe:
        """The recipe as this screen would leave it, or the saved draft while input is invalid."""
        recipe, _ = self.check()
        return recipe or self.recipe

    def _recipe_errors(self, exc: RecipeError) -> dict[str, str]:
        """Each of the error's problems under the field editing its path (the rest in the banner)."""
        fields = list(self.query(Field))
        errors: dict[str, str] = {}
        if not exc.problems:
            return {"": exc.message}
        for problem in exc.problems:
            path = problem.path.split("[", 1)[0]  # eval.probes[0] is edited by the eval.probes field
            target = next((f for f in fields if f.key and (f.key == path or f.key.startswith(path + "."))), None)
            if target is not None and target.control.id:
                errors.setdefault(target.control.id, problem.message)
            else:
                errors.setdefault("", str(problem))
        return errors

    def show_errors(self, errors: dict[str, str]) -> None:
        """Put each message under its field (``""`` goes to the banner) and block Next if any."""
        for field in self.query(Field):
            message = errors.get(field.control.id or "")
            field.set_error(message)
            if message:  # a problem inside a closed fold opens it
                for fold in field.ancestors:
                    if isinstance(fold, Collapsible):
                        fold.collapsed = False
        self.show_banner(errors.get(""))
        self.query_one("#next", Button).disabled = bool(errors)

    def show_banner(self, message: str | None) -> None:
        banner = self.query_one("#banner", Static)
        banner.update(message or "")
        banner.display = bool(message)

    def set_status(self, text: str) -> None:
        self.query_one("#nav-status", Label).update(text)

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    @on(RadioSet.Changed)
    def _revalidate(self, event: Any) -> None:
        if self._live:
            # The field's own control id keys its errors (a control may sit inside a container).
            field = next((node for node in event.control.ancestors_with_self if isinstance(node, Field)), None)
            self._touched.add(field.control.id if field is not None else event.control.id)
            self.edited(event.control)
            self.validate()

    def edited(self, control: Widget) -> None:
        """Called before live validation when the user changes ``control``."""

    # ---- navigation -----------------------------------------------------------------------
    @on(Button.Pressed, "#next")
    async def _next_pressed(self) -> None:
        await self.action_next()

    @on(Button.Pressed, "#back")
    def _back_pressed(self) -> None:
        self.action_back()

    async def action_next(self) -> None:
        recipe = self.validate(show_all=True)
        if recipe is None:
            self._focus_first_error()
            return
        recipe = await self.before_next(recipe)
        if recipe is not None:
            self.app.advance(recipe)

    async def before_next(self, recipe: Recipe) -> Recipe | None:
        """The recipe to advance with, or None to stay (for example while a check runs that
        advances when it is done)."""
        return recipe

    def action_back(self) -> None:
        if self.STEP != "welcome":
            self.app.go_back()

    def _focus_first_error(self) -> None:
        bad = [field for field in self.query(Field) if field.error]
        if not bad:
            return
        bad[0].control.focus()
        if not self.query_one("#banner", Static).display:
            # The field may sit below the fold: say in the banner what stops Next.
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            self.show_banner(f"Next needs a fix: {bad[0].label}: {bad[0].error}{more}")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return self.STEP != "welcome"
        return True

    # ---- workers --------------------------------------------------------------------------
    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and not self.work_failed(event.worker.group, event.worker.error):
            self.show_banner(describe_error(event.worker.error))

    def work_failed(self, group: str, error: BaseException) -> bool:
        """A worker of this screen failed; return True when the error is shown (else: on the banner)."""
        return False
