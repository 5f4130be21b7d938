"""Step 2: what this machine has, and the settings fnapi recommends for it, each with its reason."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.widgets import Checkbox, Static

from fnapi.recipe import Recipe
from fntui.messages import HardwareFound
from fntui.screens.base import Form, StepScreen


def devices_table(report: Any) -> Table:
    """One row per kind of device or resource, with what was found or why it was not."""
    from fnapi.hardware import format_bytes

    table = Table(box=None, show_header=False, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    if report.cuda_devices:
        for device in report.cuda_devices:
            table.add_row(f"cuda:{device.index}", f"{device.name}, {format_bytes(device.total_memory)}, "
                                                  f"compute {device.capability[0]}.{device.capability[1]}")
    else:
        table.add_row("CUDA", Text(f"none: {report.cuda_reason}", style="dim"))
    table.add_row("MPS", "available" if report.mps_available else Text(f"no: {report.mps_reason}", style="dim"))
    if report.cpu is not None:
        cores = f"{report.cpu.physical_cores or '?'} cores / {report.cpu.logical_cores or '?'} threads"
        table.add_row("CPU", f"{report.cpu.model} ({cores})")
    table.add_row("RAM", f"{format_bytes(report.ram_available)} free of {format_bytes(report.ram_total)}"
                  if report.ram_total else Text(str(report.ram_reason), style="dim"))
    table.add_row("disk", f"{format_bytes(report.disk_free)} free for the cache"
                  if report.disk_free is not None else Text(str(report.disk_reason), style="dim"))
    bnb = report.bitsandbytes
    table.add_row("4-bit", "usable" if bnb.usable else Text(f"no: {bnb.reason}", style="dim"))
    table.add_row("torch", report.torch_version or Text(str(report.torch_reason), style="dim"))
    return table


def recommendation_view(rec: Any) -> Group:
    """The recommended settings and the sentence behind each."""
    from fnapi.hardware import format_bytes

    head = Text.assemble(
        ("Recommended: ", "bold"),
        f"{rec.device}, {rec.dtype}, quantization {rec.quantization}, batch {rec.batch_size} x "
        f"{rec.gradient_accumulation} accumulation, about {format_bytes(rec.estimated_memory)} to train "
        "the embedded model (the batch is worked out again for your model and data on the Training step)",
    )
    reasons = [Text(f"• {reason}", style="yellow" if reason.startswith("warning") else "") for reason in rec.reasons]
    return Group(head, *reasons)


class HardwareScreen(StepScreen):
    STEP = "hardware"
    TITLE = "Hardware: what this machine can train with"
    HINT = "Nothing is loaded to find this out. Batch settings are worked out again for your model on the training step."

    def __init__(self) -> None:
        super().__init__()
        self.recommendation: Any = None
        self.advance_after_detection = False

    def compose_body(self) -> ComposeResult:
        yield Static("Looking at this machine…", id="devices")
        yield Static("", id="recommendation")
        yield Checkbox("Use the recommended device, data type and quantization", id="apply", compact=True,
                       value=self.app.draft.choices.apply_hardware)
        yield Static("", id="apply-effect", markup=False)

    def load(self) -> None:
        self.query_one("#apply", Checkbox).focus()
        self.detect()

    @work(thread=True, exclusive=True, exit_on_error=False, group="hardware")
    def detect(self) -> None:
        report = self.app.engine.detect_hardware()
        self.post_message(HardwareFound(report, self.app.engine.recommend()))

    @on(HardwareFound)
    def _detected(self, message: HardwareFound) -> None:
        report, self.recommendation = message.report, message.recommendation
        self.query_one("#devices", Static).update(devices_table(report))
        self.query_one("#recommendation", Static).update(recommendation_view(self.recommendation))
        self._show_effect()
        if self.advance_after_detection:
            recipe = self.validate(show_all=True)
            if recipe is not None:
                self.choices.apply_hardware = True
                self.app.advance(recipe)

    def edited(self, control: Any) -> None:
        if control.id == "apply":
            self._show_effect()

    def _show_effect(self) -> None:
        """What ticking the box does to the recipe, so unticking it visibly changes something."""
        model, rec = self.recipe.model, self.recommendation
        if rec is None:
            return
        if Form(self).raw("apply"):
            text = (f"Next writes device {rec.device}, dtype {rec.dtype}, quantization {rec.quantization} "
                    "into the recipe.")
        else:
            text = (f"The recipe keeps device {model.device}, dtype {model.dtype}, quantization "
                    f"{model.quantization}" + (" (auto: chosen when the run starts)." if "auto" in
                                                (model.device, model.dtype) else "."))
        self.query_one("#apply-effect", Static).update(text)

    def changes(self, form: Form) -> dict[str, Any]:
        if not form.raw("apply") or self.recommendation is None:
            return {}
        return {"model.device": self.recommendation.device, "model.dtype": self.recommendation.dtype,
                "model.quantization": self.recommendation.quantization}

    async def before_next(self, recipe: Recipe) -> Recipe | None:
        apply = bool(Form(self).raw("apply"))
        if apply and self.recommendation is None:
            # Still detecting: go on once the recommendation can be applied.
            self.advance_after_detection = True
            self.set_status("still looking at this machine…")
            return None
        self.choices.apply_hardware = apply
        return recipe
