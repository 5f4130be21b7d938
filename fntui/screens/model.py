"""Step 4: the model, checked by loading it: architecture, layers, widths, parameters, memory.

Enter (or Next) loads the model in a worker; Next only goes on once the model named in the field
has loaded. The loaded model stays in the engine for the data preview and the template build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Input, ProgressBar, Select, Static

from fnapi.models.source import EMBEDDED_MODEL
from fnapi.recipe import ModelSection, Recipe
from fntui.messages import EngineEvent, MessageSink, ModelChecked
from fntui.screens.base import CheckBeforeNext, Form, StepScreen, describe_error
from fntui.widgets.fields import Field, PathSuggester

if TYPE_CHECKING:
    from fnapi.estimate import ModelShape
    from fnapi.models.loading import LoadedModel, ModelInfo
    from fntui.engine import Engine

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class ModelCheck:
    """A loaded model's description and what training it would take here."""

    info: ModelInfo
    weights: int
    training: int
    budget: int | None
    shape: ModelShape | None = None  # what later memory checks (batch size) are worked out from
    linear_names: frozenset[str] = frozenset()  # what LoRA's target_modules can name in this model

    @classmethod
    def of(cls, engine: Engine, loaded: LoadedModel, recipe: Recipe) -> ModelCheck:
        """The check of ``loaded`` under ``recipe``, by the run's memory model."""
        from fnapi.models.registry import linear_module_names

        shape = engine.model_shape(loaded)
        peak = engine.memory_estimate(shape, loaded.info.dtype, recipe)
        weights = next(t.bytes for t in peak.terms if t.name == "weights")
        return cls(loaded.info, weights, peak.total, engine.recommend(shape, recipe).memory_budget, shape,
                   frozenset(linear_module_names(loaded.model)))


def model_table(check: ModelCheck, recipe: Recipe) -> Table:
    from fnapi.hardware import format_bytes

    info = check.info
    table = Table(box=None, show_header=False, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("architecture", f"{info.architecture} (family {info.family})")
    table.add_row("layers", str(info.num_layers))
    table.add_row("widths", f"hidden {info.hidden_size} (mlp.out) · intermediate {info.intermediate_size} (mlp.hidden)")
    table.add_row("parameters", f"{info.num_parameters:,}")
    table.add_row("loaded as", f"{info.dtype} · weights fingerprint {info.fingerprint}")
    training = (f"~{format_bytes(check.training)} to train ({recipe.train.method}, batch {recipe.train.batch_size}, "
                f"{recipe.data.max_length} tokens)")
    table.add_row("memory", f"weights {format_bytes(check.weights)} · {training}")
    if check.budget is not None:
        fits = check.training <= check.budget
        table.add_row("", Text(f"{'fits' if fits else 'does not fit'} the {format_bytes(check.budget)} this machine "
                               "can spare", style="green" if fits else "yellow"))
    return table


class ModelScreen(StepScreen):
    STEP = "model"
    TITLE = "Model"
    HINT = (f"{EMBEDDED_MODEL} is embedded and works offline. Or give a hub id (org/name), a folder saved "
            "with save_pretrained, or a .gguf file.")

    def __init__(self) -> None:
        super().__init__()
        self.model_check = CheckBeforeNext(self, group="model", key=lambda recipe: self.key(recipe.model),
                                       passed=lambda: self.app.session.model_key, run=self.start_check)

    def compose_body(self) -> ComposeResult:
        model = self.app.draft.recipe.model
        yield Field("Model", Input(model.name, id="model-spec", compact=True,
                                   suggester=PathSuggester(extra=(EMBEDDED_MODEL,), suffixes=(".gguf",))),
                    key="model.name", help="enter loads and checks it · → completes file names")
        yield Field("Data type", Select([(d, d) for d in DTYPES], value=model.dtype, allow_blank=False,
                                        id="dtype", compact=True), key="model.dtype",
                    help=f"device {model.device}, quantization {model.quantization} (set on the hardware step)")
        yield Static("", id="model-status", markup=False)
        # Moves while a model loads (a first conversion takes about half a minute): not a frozen line.
        yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="model-wait")
        yield Static("", id="model-info")

    def load(self) -> None:
        self.query_one("#model-spec", Input).focus()
        self.query_one("#model-wait", ProgressBar).display = False
        session = self.app.session
        if session.model is not None and session.model_key == self.key(self.recipe.model):
            self._show(session.model, self.recipe)

    @staticmethod
    def key(section: ModelSection) -> str:
        return section.model_dump_json()

    def changes(self, form: Form) -> dict[str, Any]:
        model_spec = form.text("model-spec", required=f"enter a model: {EMBEDDED_MODEL}, org/name, a folder or a .gguf file")
        dtype = form.raw("dtype")
        if model_spec:
            from fnapi.errors import ModelError
            from fnapi.models.source import ModelSource

            try:
                ModelSource.parse(model_spec)  # the parse every fnapi command uses: no weights, no network
            except ModelError as exc:
                form.fail("model-spec", exc.message)
        return {"model.name": model_spec, "model.dtype": dtype}

    def known_problems(self, recipe: Recipe) -> dict[str, str]:
        return self.model_check.problems(recipe)

    def edited(self, control: Widget) -> None:
        self.query_one("#model-info", Static).update("")
        self.set_status("")

    @on(Input.Submitted, "#model-spec")
    def _submitted(self) -> None:
        recipe = self.validate(show_all=True)
        if recipe is not None:
            self.model_check.start(recipe)

    async def before_next(self, recipe: Recipe) -> Recipe | None:
        return self.model_check.before_next(recipe)

    def start_check(self, recipe: Recipe) -> None:
        self.query_one("#model-status", Static).update(f"Loading {recipe.model.name}…")
        self.query_one("#model-info", Static).update("")
        self.query_one("#model-wait", ProgressBar).display = True
        self.check_model(recipe)

    @work(thread=True, exclusive=True, exit_on_error=False, group="model")
    def check_model(self, recipe: Recipe) -> None:
        engine = self.app.engine
        loaded = engine.load_model(recipe.model, sink=MessageSink(self))
        self.post_message(ModelChecked(ModelCheck.of(engine, loaded, recipe),
                                   key=self.key(recipe.model)))

    @on(EngineEvent)
    def _engine_event(self, message: EngineEvent) -> None:
        from fnapi.events import Log

        if isinstance(message.event, Log):
            self.query_one("#model-status", Static).update(message.event.message)

    @on(ModelChecked)
    def _checked(self, message: ModelChecked) -> None:
        recipe = self.model_check.current(message.key)
        if recipe is None:
            return  # the field changed while loading; this answer is stale
        self.query_one("#model-wait", ProgressBar).display = False
        session = self.app.session
        session.model, session.model_key = message.check, message.key
        self._show(message.check, recipe)
        self.model_check.proceed(recipe)

    def _show(self, result: ModelCheck, recipe: Recipe) -> None:
        self.query_one("#model-status", Static).update(f"✓ {result.info.name} loaded and checked")
        self.query_one("#model-info", Static).update(model_table(result, recipe))

    def work_failed(self, group: str, error: BaseException) -> bool:
        if not self.model_check.owns(group, error):
            return False
        self.query_one("#model-wait", ProgressBar).display = False
        self.query_one("#model-status", Static).update("")
        return self.model_check.failed("model-spec", describe_error(error))
