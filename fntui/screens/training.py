"""Step 8: how to train: method, hyperparameters (batch prefilled for this machine), mask preset.

Next writes the finished recipe to the file named here; the run step runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Checkbox, Collapsible, Input, RadioButton, RadioSet, Select, Static

from fnapi.errors import FnapiError
from fnapi.recipe import Recipe
from fntui.messages import BatchRecommended
from fntui.screens.base import Form, StepScreen
from fntui.widgets.fields import Field

#: What each mask preset does, one sentence each.
PRESET_SENTENCES = {
    "none": "No mask: the whole model trains as usual (the baseline to compare against).",
    "protect": "The picked networks' weights stay frozen, so what they hold survives; everything else trains.",
    "target": "Only the picked networks' weights train; the rest of the model stays as it was.",
    "lesion": "The picked networks are switched off in the forward pass while the whole model trains.",
    "preserve": "Only the picked networks stay on in the forward pass, and only they train.",
}
METHODS = (("LoRA adapters (lora)", "lora"), ("full fine-tuning (full)", "full"), ("4-bit LoRA (qlora, CUDA only)", "qlora"))


SCHEDULERS = (("linear decay", "linear"), ("cosine", "cosine"), ("constant", "constant"),
              ("constant after warmup", "constant_with_warmup"))


def checkpoint_interval(steps: int | None, configured: int) -> int:
    """A checkpoint interval that leaves at least two checkpoints when the run is short."""
    if steps is None or steps >= 2 * configured:
        return configured
    return max(1, steps // 2)


def presets_view(current: str | None) -> Table:
    """Every preset with its sentence; the chosen one stands out."""
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column()
    for name, sentence in PRESET_SENTENCES.items():
        style = "bold" if name == current else "dim"
        table.add_row(Text(("▸ " if name == current else "  ") + name, style=style), Text(sentence, style=style))
    return table


class TrainingScreen(StepScreen):
    STEP = "training"
    TITLE = "Training"
    HINT = "Batch settings are prefilled for this machine and model. Next writes the recipe file."

    def compose_body(self) -> ComposeResult:
        recipe = self.app.draft.recipe
        train = recipe.train
        yield Field("Method", Select(METHODS, value=train.method, allow_blank=False, id="method", compact=True),
                    key="train.method")
        yield Field("Steps", Input(str(train.steps or ""), placeholder="by epochs", id="steps", compact=True),
                    key="train.steps", help="optimizer steps (empty: train for the epochs under Advanced)")
        yield Field("Batch size", Input(str(train.batch_size), id="batch-size", compact=True), key="train.batch_size")
        yield Field("Accumulation", Input(str(train.gradient_accumulation), id="grad-accum", compact=True),
                    key="train.gradient_accumulation", help="batches per optimizer step")
        yield Field("Learning rate", Input(f"{train.learning_rate:g}", id="learning-rate", compact=True),
                    key="train.learning_rate")
        yield Static("", id="prefill-note", markup=False)
        yield Field("Task examples", Input(str(recipe.eval.task_samples), id="task-samples", compact=True),
                    key="eval.task_samples", help="held-out examples scored before and after training")
        probes = recipe.eval.probe_samples
        yield Field("Probe questions", Input("" if probes is None else str(probes), placeholder="all",
                                             id="probe-samples", compact=True),
                    key="eval.probe_samples", help="general-knowledge questions that measure forgetting (empty: all)")
        presets = RadioSet(*(RadioButton(name, name=name, value=name == recipe.mask.preset) for name in PRESET_SENTENCES),
                           id="preset")
        yield Field("Mask preset", Horizontal(presets, Static(presets_view(recipe.mask.preset), id="preset-help"),
                                              id="preset-row"), key="mask.preset")
        yield Static(self.mask_words(recipe.mask.preset), id="mask-words", markup=False)
        yield Field("Run name", Input(recipe.name, id="run-name", compact=True), key="name",
                    help="names the run folder (letters, digits, . _ -)")
        default_path = self.app.draft.choices.recipe_path or f"{recipe.name}.yaml"
        yield Field("Recipe file", Input(default_path, id="recipe-path", compact=True),
                    help="written when you press Next; replay it with fntui replay or fnapi run")
        with Collapsible(title="Advanced: schedule, LoRA, checkpoints, seed", id="advanced"):
            yield from self.compose_advanced()

    def compose_advanced(self) -> ComposeResult:
        recipe = self.app.draft.recipe
        train, lora = recipe.train, recipe.train.lora
        yield Field("Epochs", Input(f"{train.epochs:g}", id="epochs", compact=True), key="train.epochs",
                    help="passes over the data, used when Steps is empty")
        yield Field("Warmup", Input(f"{train.warmup_ratio:g}", id="warmup", compact=True), key="train.warmup_ratio",
                    help="share of the steps the learning rate ramps up over (0 to below 1)")
        yield Field("Scheduler", Select(SCHEDULERS, value=train.scheduler, allow_blank=False, id="scheduler",
                                        compact=True), key="train.scheduler")
        yield Field("Weight decay", Input(f"{train.weight_decay:g}", id="weight-decay", compact=True),
                    key="train.weight_decay")
        yield Field("LoRA rank", Input(str(lora.r), id="lora-r", compact=True), key="train.lora.r")
        yield Field("LoRA alpha", Input(f"{lora.alpha:g}", id="lora-alpha", compact=True), key="train.lora.alpha",
                    help="the adapter's scale is alpha / rank")
        yield Field("LoRA dropout", Input(f"{lora.dropout:g}", id="lora-dropout", compact=True),
                    key="train.lora.dropout")
        targets = lora.target_modules if lora.target_modules == "auto" else ", ".join(lora.target_modules)
        yield Field("LoRA targets", Input(targets, id="lora-targets", compact=True), key="train.lora.target_modules",
                    help="auto (attention and MLP projections) or module names, comma-separated")
        yield Field("Checkpointing", Checkbox("gradient checkpointing (less memory, slower)",
                                              train.gradient_checkpointing, id="gradient-checkpointing", compact=True),
                    key="train.gradient_checkpointing")
        yield Field("Save every", Input(str(train.save_steps), id="save-steps", compact=True), key="train.save_steps",
                    help="steps between checkpoints (a cancelled or crashed run resumes from the last)")
        yield Field("Log every", Input(str(train.logging_steps), id="logging-steps", compact=True),
                    key="train.logging_steps", help="steps between points of the live loss curve")
        validation = train.validation_samples
        yield Field("Validation rows", Input("" if validation is None else str(validation), placeholder="all",
                                             id="validation-samples", compact=True),
                    key="train.validation_samples", help="held-out rows whose loss is measured after training (empty: all)")
        yield Field("Seed", Input(str(recipe.seed), id="seed", compact=True), key="seed",
                    help="the same seed and recipe give the same run")

    def load(self) -> None:
        self.query_one("#method", Select).focus()
        if not self.choices.save_steps_set:
            self._follow_steps()
        if not self.choices.train_prefilled:
            self.query_one("#prefill-note", Static).update(
                "Working out the batch size for this machine and model (the model loads first if it is not "
                "loaded)…")
            self.recommend(self.recipe)

    @work(thread=True, exclusive=True, exit_on_error=False, group="prefill")
    def recommend(self, recipe: Recipe) -> None:
        """Batch and accumulation for this machine and the chosen model (loaded if need be)."""
        engine = self.app.engine
        check = self.app.session.model
        shape = check.shape if check is not None and check.shape is not None else \
            engine.model_shape(engine.load_model(recipe.model))
        self.post_message(BatchRecommended(engine.recommend(shape, recipe)))

    @on(BatchRecommended)
    def _prefill(self, message: BatchRecommended) -> None:
        rec = message.recommendation
        batch, accumulation = self.query_one("#batch-size", Input), self.query_one("#grad-accum", Input)
        train = self.recipe.train
        if (batch.value, accumulation.value) != (str(train.batch_size), str(train.gradient_accumulation)):
            return  # typed over already: the user's numbers win
        batch.value, accumulation.value = str(rec.batch_size), str(rec.gradient_accumulation)
        batch = next((r for r in rec.reasons if r.startswith("batch size")), "")
        self.query_one("#prefill-note", Static).update(f"Prefilled: {batch}" if batch else "")
        self.choices.train_prefilled = True

    def work_failed(self, group: str, error: BaseException) -> bool:
        if group != "prefill":
            return False
        from fntui.screens.base import describe_error

        self.query_one("#prefill-note", Static).update(
            f"The batch size was not worked out ({describe_error(error)}); the one shown is the recipe's.")
        return True

    def mask_words(self, preset: str | None) -> str:
        """What the chosen preset does to the picked networks, in words (or why there is no mask)."""
        mask = self.recipe.mask
        picked = mask.components == "stable" or bool(mask.components)
        template = self.app.session.template
        if not preset or preset == "none":
            return ("Mask: none. Networks are picked, but this trains the whole model without a mask."
                    if picked else "Mask: none; the whole model trains.")
        if not picked:
            return "Mask: no networks are picked yet (Networks step)."
        if template is None:
            return f"Mask: {preset} on {'the most stable networks' if mask.components == 'stable' else 'the picked networks'}."
        from fnapi.masking import from_section

        try:
            neuron_mask = from_section(template, mask.model_copy(update={"preset": preset, "ablate": None, "train": None}),
                                seed=self.recipe.seed)
        except FnapiError as exc:
            return f"Mask: {exc.message}"
        return f"Mask ({preset}): {neuron_mask.in_words()}."

    def edited(self, control: Widget) -> None:
        if control.id == "preset":
            preset = Form(self).raw("preset")
            self.query_one("#preset-help", Static).update(presets_view(preset))
            self.query_one("#mask-words", Static).update(self.mask_words(preset))
        elif control.id == "steps" and "save-steps" not in self._touched and not self.choices.save_steps_set:
            self._follow_steps()
        elif control.id == "run-name" and "recipe-path" not in self._touched:
            # The recipe file follows the run name until it is edited itself.
            path = self.query_one("#recipe-path", Input)
            with path.prevent(Input.Changed):  # not the user's edit: keep following the name
                path.value = f"{control.value.strip() or 'run'}.yaml"

    def _follow_steps(self) -> None:
        """The checkpoint interval follows Steps until it is edited, so a short run keeps two checkpoints."""
        steps = self.query_one("#steps", Input).value.strip()
        save = self.query_one("#save-steps", Input)
        with save.prevent(Input.Changed):  # not the user's edit
            save.value = str(checkpoint_interval(int(steps) if steps.isdigit() and int(steps) > 0 else None,
                                                 self.recipe.train.save_steps))

    def changes(self, form: Form) -> dict[str, Any]:
        preset = form.raw("preset") or "none"
        mask = self.recipe.mask
        if preset != "none" and (self.recipe.template is None or mask.components == []):
            form.fail("preset-row", f"{preset} needs networks: pick some on the Networks step, or use none")
        # none with networks picked is a choice the Networks step must not undo when visited again.
        self.choices.mask_none_chosen = preset == "none" and mask.components != []
        method = form.raw("method")
        if method == "qlora":  # found here, not minutes later when the run starts
            from fnapi.hardware import check_method_supported

            try:
                check_method_supported(method, self.app.engine.detect_hardware())
            except FnapiError as exc:
                form.fail("method", f"{exc.message} {exc.hint or ''}".strip())
        self._check_memory(form, method)
        path = form.text("recipe-path", required="enter where to write the recipe, for example my-run.yaml")
        if path and Path(path).suffix.lower() not in (".yaml", ".yml"):
            form.fail("recipe-path", "a recipe file ends in .yaml or .yml")
        elif path and Path(path).expanduser().is_dir():
            form.fail("recipe-path", f"{path} is a folder; give a file name")
        weight_decay = form.number("weight-decay")
        if weight_decay is not None and weight_decay < 0:
            form.fail("weight-decay", "must be 0 or more")
        warmup = form.number("warmup")
        if warmup is not None and not 0 <= warmup < 1:
            form.fail("warmup", "a share of the steps: at least 0 and below 1 (for example 0.1)")
        dropout = form.number("lora-dropout")
        if dropout is not None and not 0 <= dropout < 1:
            form.fail("lora-dropout", "at least 0 and below 1 (for example 0.05)")
        if "save-steps" in self._touched:
            self.choices.save_steps_set = True
        return {
            "train.method": method,
            "train.steps": form.integer("steps", optional=True, minimum=1),
            "train.epochs": form.number("epochs", positive=True),
            "train.warmup_ratio": warmup,
            "train.scheduler": form.raw("scheduler"),
            "train.weight_decay": weight_decay,
            "train.lora.alpha": form.number("lora-alpha", positive=True),
            "train.lora.dropout": dropout,
            "train.lora.target_modules": self._targets(form),
            "train.gradient_checkpointing": bool(form.raw("gradient-checkpointing")),
            "train.save_steps": form.integer("save-steps", minimum=1),
            "seed": form.integer("seed", minimum=0),
            "train.batch_size": form.integer("batch-size", minimum=1),
            "train.gradient_accumulation": form.integer("grad-accum", minimum=1),
            "train.learning_rate": form.number("learning-rate", positive=True),
            "train.lora.r": form.integer("lora-r", minimum=1),
            "train.logging_steps": form.integer("logging-steps", minimum=1),
            "train.validation_samples": form.integer("validation-samples", optional=True, minimum=1),
            "eval.task_samples": form.integer("task-samples", minimum=1),
            "eval.probe_samples": form.integer("probe-samples", optional=True, minimum=1),
            "mask.preset": preset,
            "name": form.text("run-name", required="enter a run name"),
        }

    def _targets(self, form: Form) -> list[str] | str | None:
        """``auto`` or the module names typed, each checked against the loaded model's modules."""
        text = form.text("lora-targets", required="enter auto or module names such as q_proj, v_proj")
        if text is None:
            return None
        if text.lower() == "auto":
            return "auto"
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            form.fail("lora-targets", "enter auto or module names such as q_proj, v_proj")
            return None
        check = self.app.session.model
        if check is not None and check.linear_names:
            linear = check.linear_names
            unknown = [name for name in names if name not in linear]
            if unknown:
                form.fail("lora-targets", f"{', '.join(unknown)} is not a linear layer of this model; it has "
                                          f"{', '.join(sorted(linear))}")
        return names

    def _check_memory(self, form: Form, method: Any) -> None:
        """Refuse at the field a batch that cannot fit in this machine's memory (what `fnapi run` would refuse)."""
        loaded = self.app.session.model
        batch = form.raw("batch-size")
        if loaded is None or loaded.shape is None or not str(batch).strip().isdigit() or int(batch) < 1:
            return
        from fnapi.estimate import added_by_training
        from fnapi.hardware import format_bytes

        try:
            candidate = self.recipe.replace(**{"train.batch_size": int(batch), "train.method": method or "lora"})
        except FnapiError:
            return
        engine = self.app.engine
        peak = engine.memory_estimate(loaded.shape, loaded.info.dtype, candidate)
        available = engine.detect_hardware().ram_available
        if available and added_by_training(peak) > available:
            form.fail("batch-size", f"batch {batch} of {candidate.data.max_length}-token rows needs about "
                                    f"{format_bytes(peak.total)} and {format_bytes(available)} is available; "
                                    "lower it and raise Accumulation to keep the effective batch")

    async def before_next(self, recipe: Recipe) -> Recipe | None:
        path = self.query_one("#recipe-path", Input).value.strip()
        try:
            recipe.to_yaml(self.app.engine.resolve(path))
        except (OSError, FnapiError) as exc:
            self.show_errors({"recipe-path": f"cannot write {path}: {exc}"})
            return None
        self.choices.recipe_path = path
        self.choices.train_prefilled = True
        return recipe
