"""Every fnapi call the wizard makes, in one place.

Screens call an :class:`Engine` from worker threads and never import fnapi's heavy modules
themselves, so the app starts without torch and there is exactly one place to adapt when an
fnapi signature changes. Tests give the engine a fixed hardware report and a fake run function.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fnapi.auth import TokenStatus, ValidationResult
    from fnapi.data.inspect import DataPreview
    from fnapi.estimate import ModelShape, StageEstimate
    from fnapi.events import EventSink
    from fnapi.hardware import HardwareReport
    from fnapi.models.loading import LoadedModel, ModelInfo
    from fnapi.networks.template import Template, TemplateOverlap
    from fnapi.recipe import DataSection, ModelSection, Recipe, TemplateSection
    from fnapi.sizing import Recommendation
    from fnapi.timing import TimeEstimate

#: ``run(recipe, *, sink=None, cancel=None, output=None) -> RunResult`` (see fnapi.runner).
RunFunction = Callable[..., Any]
#: ``timer(recipe)`` (a run) or ``timer(recipe, "template")`` (its template build) -> TimeEstimate.
TimerFunction = Callable[..., Any]

#: Examples shown in the data preview.
PREVIEW_EXAMPLES = 3


def default_run_function() -> RunFunction:
    """``fnapi.runner.run``, imported when a run starts (it pulls in torch)."""
    from fnapi.runner import run

    return run


class Engine:
    """The wizard's doorway to fnapi.

    ``run_fn`` replaces :func:`fnapi.runner.run`; ``hardware`` replaces detection with a fixed
    report; ``workdir`` is where relative paths (``.env``, templates) are resolved; ``timer``
    replaces the time estimates measured on this machine (tests want fixed numbers).
    """

    def __init__(self, *, run_fn: RunFunction | None = None, hardware: HardwareReport | None = None,
                 workdir: Path | None = None, timer: TimerFunction | None = None) -> None:
        self._run_fn = run_fn
        self._timer = timer
        self._rates: dict = {}  # rates measured by the time estimates, kept for the session
        self._hardware = hardware
        self.workdir = Path(workdir) if workdir is not None else Path.cwd()
        self._model_lock = threading.Lock()
        self._model_key: str | None = None
        self._model: LoadedModel | None = None
        self._embedded_shape: ModelShape | None = None

    # ---- hardware ---------------------------------------------------------------------------
    def detect_hardware(self) -> HardwareReport:
        """The machine's devices and memory (detected once, then remembered)."""
        if self._hardware is None:
            from fnapi.hardware import detect_hardware

            self._hardware = detect_hardware()
        return self._hardware

    def model_shape(self, loaded: LoadedModel) -> ModelShape:
        """What the memory model needs to know of ``loaded`` (kept by the Model step's check)."""
        from fnapi.estimate import shape_of

        return shape_of(loaded.model, loaded.info.name)

    def recommend(self, shape: ModelShape | None = None, recipe: Recipe | None = None) -> Recommendation:
        """Settings for this machine, with the batch sized for a model of ``shape`` (default: the
        embedded model, read from its config) under ``recipe``'s method, LoRA and row length."""
        from fnapi.sizing import recommend

        if shape is None:
            if self._embedded_shape is None:
                from fnapi.estimate import model_shape
                from fnapi.models.source import EMBEDDED_MODEL

                self._embedded_shape = model_shape(EMBEDDED_MODEL)
            shape = self._embedded_shape
        if recipe is None:
            return recommend(self.detect_hardware(), shape)
        train = recipe.train
        method = train.method if train.method in ("lora", "qlora", "full") else "lora"
        return recommend(self.detect_hardware(), shape, method=method, seq_len=recipe.data.max_length,
                         lora_rank=train.lora.r, lora_targets=train.lora.target_modules,
                         gradient_checkpointing=train.gradient_checkpointing)

    def memory_estimate(self, shape: ModelShape, dtype: str, recipe: Recipe) -> StageEstimate:
        """The training peak of ``recipe`` for a model of ``shape`` loaded in ``dtype``, with rows of
        ``data.max_length`` tokens: the memory model ``fnapi run`` refuses a batch by."""
        from fnapi.estimate import recipe_training_memory

        device = "cuda" if recipe.model.device == "cuda" or (
            recipe.model.device == "auto" and self.detect_hardware().has_cuda) else "cpu"
        dtype = dtype.removeprefix("torch.")
        dtype = dtype if dtype in ("float32", "float16", "bfloat16") else "bfloat16"
        return recipe_training_memory(recipe, shape, device=device, dtype=dtype, seq_len=recipe.data.max_length)

    # ---- Hugging Face token -----------------------------------------------------------------
    @property
    def env_file(self) -> Path:
        return self.workdir / ".env"

    def token_status(self) -> TokenStatus:
        from fnapi.auth import resolve_token

        return resolve_token(env_file=self.env_file)

    def check_token(self, status: TokenStatus) -> ValidationResult:
        """Ask the hub about the token; answers "offline" within seconds when it cannot."""
        from fnapi.auth import validate_token

        return validate_token(status, timeout=3.0)

    def hub_problem(self) -> str | None:
        """Why the hub cannot be used right now, or None when it answers (a quick TCP check)."""
        from fnapi.auth import hub_reachable

        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            return "HF_HUB_OFFLINE is set, so the hub is not contacted"
        return hub_reachable()

    def save_token(self, token: str) -> Path:
        """Write ``HF_TOKEN`` into ``.env`` with owner-only permissions and use it now."""
        from fnapi.auth import login

        path = login(token, save_to="dotenv", path=self.env_file)
        self.use_token(token)
        return path

    def use_token(self, token: str) -> None:
        """Use ``token`` for this session only (hub downloads started from the wizard)."""
        from fnapi.redaction import register_secret

        register_secret(token)
        os.environ["HF_TOKEN"] = token

    # ---- model ------------------------------------------------------------------------------
    def load_model(self, section: ModelSection, sink: EventSink | None = None,
                   cancel: threading.Event | None = None) -> LoadedModel:
        """Load the model a recipe names; the last one stays loaded for the next steps."""
        from fnapi.models.loading import load_model

        key = section.model_dump_json()
        with self._model_lock:
            if self._model_key != key:
                self._model, self._model_key = None, None
                self._model = load_model(section, sink=sink, cancel=cancel)
                self._model_key = key
            return self._model

    def release_model(self) -> None:
        """Forget the loaded model (before a run loads its own copy)."""
        with self._model_lock:
            self._model, self._model_key = None, None

    # ---- data -------------------------------------------------------------------------------
    def inspect_data(self, section: DataSection, tokenizer: Any, examples: int = PREVIEW_EXAMPLES) -> DataPreview:
        """Detect the format of ``section.path`` and render the first examples as the model sees them."""
        from fnapi.data.inspect import inspect_data

        return inspect_data(section.path, tokenizer, format=section.format, fields=dict(section.fields) or None,
                            chat_template=section.chat_template, max_length=section.max_length, examples=examples)

    # ---- templates --------------------------------------------------------------------------
    def build_template(self, loaded: LoadedModel, section: TemplateSection, data_specs: Sequence[str], *,
                       seed: int, sink: EventSink | None = None,
                       cancel: threading.Event | None = None) -> tuple[Template, Path]:
        """Build a template and save it under ``workdir/ica_templates``; returns it and its path."""
        from fnapi.networks.build import build_template

        template = build_template(loaded, section, list(data_specs), seed=seed, sink=sink, cancel=cancel)
        path = self.template_path(loaded.info.name, data_specs, section, seed)
        template.save(self.workdir / path)
        return template, path

    def template_path(self, model_name: str, data_specs: Sequence[str], section: TemplateSection, seed: int) -> Path:
        """Where a built template goes, relative to ``workdir`` (``section.out`` if set)."""
        from fnapi.networks.build import default_template_path

        if section.out:
            return Path(section.out)
        return default_template_path(model_name, list(data_specs), section, seed)

    def load_template(self, path: str | Path, info: ModelInfo | None = None) -> tuple[Template, list[str]]:
        """Read a template; with ``info``, also check that it fits that model (warnings returned)."""
        from fnapi.networks.template import Template

        template = Template.load(self.resolve(path), model_info=info)
        warnings = list(template.warnings)
        if info is not None:
            warnings += template.check_compatible(info)
        return template, warnings

    def compare_templates(self, a: Template, b: Template) -> TemplateOverlap:
        from fnapi.networks.template import compare

        return compare(a, b)

    # ---- time -----------------------------------------------------------------------------
    def time_estimate(self, recipe: Recipe, cancel: threading.Event | None = None) -> TimeEstimate:
        """How long ``recipe`` will run here, every stage timed on the loaded model (fnapi.timing)."""
        if self._timer is not None:
            return self._timer(recipe)
        from fnapi.timing import estimate_time

        loaded = self.load_model(recipe.model)
        with self._model_lock:
            return estimate_time(recipe, loaded, cancel=cancel, cache=self._rates)

    def template_time(self, recipe: Recipe, cancel: threading.Event | None = None) -> TimeEstimate:
        """How long building the template ``recipe.template`` describes will take here."""
        if self._timer is not None:
            return self._timer(recipe, "template")
        from fnapi.timing import estimate_template_time

        section = recipe.template
        loaded = self.load_model(recipe.model)
        with self._model_lock:
            return estimate_template_time(section, list(section.data) or [recipe.data.path], loaded,
                                          cache=self._rates, cancel=cancel)

    # ---- running ----------------------------------------------------------------------------
    def run(self, recipe: Recipe, *, sink: EventSink | None = None, cancel: threading.Event | None = None,
            output: str | None = None) -> Any:
        """Run every stage of ``recipe`` (``fnapi.runner.run`` unless another function was given)."""
        run_fn = self._run_fn or default_run_function()
        return run_fn(recipe, sink=sink, cancel=cancel, output=output)

    def ask_run(self, run_dir: str | Path, prompt: str, max_new_tokens: int = 64) -> Any:
        """The run's and its base model's greedy answers to ``prompt`` (``fnapi.eval_target.ask_run``)."""
        from fnapi.eval_target import ask_run
        from fnapi.recipe import Recipe
        from fnapi.rundir import RECIPE_FILE

        folder = self.resolve(run_dir)
        loaded = self.load_model(Recipe.from_yaml(folder / RECIPE_FILE).model)
        with self._model_lock:  # the run's adapter goes into the shared model while it answers
            return ask_run(folder, prompt, loaded=loaded, max_new_tokens=max_new_tokens)

    def export(self, run_dir: str | Path, to: str, *, sink: EventSink | None = None,
               cancel: threading.Event | None = None) -> Any:
        """Export the run into its own folder (``fnapi.exporting.export``): ``to`` ``"hf"`` writes
        ``export/hf/``, ``"gguf"`` writes ``export/<run>.f16.gguf``; an earlier export there is replaced."""
        from fnapi.exporting import export

        folder = self.resolve(run_dir)
        dest = folder / "export" / ("hf" if to == "hf" else f"{folder.name}.f16.gguf")
        return export(folder, to, dest, overwrite=True, sink=sink, cancel=cancel)

    # ---- paths ------------------------------------------------------------------------------
    def resolve(self, path: str | Path) -> Path:
        """``path`` with ``~`` expanded, relative paths taken from ``workdir``."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.workdir / path
