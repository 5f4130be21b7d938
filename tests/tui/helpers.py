"""Helpers for the TUI tests: a fixed machine, fixed templates, a fast fake run, opening the app."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fnapi.errors import CancelledError
from fnapi.events import Metric, Progress, RunFinished, RunStarted, StageFinished, StageStarted
from fnapi.hardware import BitsAndBytesStatus, CpuInfo, HardwareReport
from fnapi.networks.template import Component, Template
from fnapi.report import ForgettingReport, Score
from fnapi.timing import StageTime, TimeEstimate
from fntui.app import FntuiApp
from fntui.drafts import Draft, DraftStore, WizardChoices
from fntui.engine import Engine

GIB = 1024 ** 3
FIXED_NOW = datetime(2025, 1, 2, 3, 4, 5)
TERMINAL = (100, 30)
TINY_MODEL = "tiny-llama"  # a symlink in each working folder to the session's tiny model


def fixed_hardware() -> HardwareReport:
    """A CPU-only machine that never changes, so recommendations and snapshots are stable."""
    return HardwareReport(
        cuda_reason="no CUDA device is visible", mps_reason="not an Apple machine",
        cpu=CpuInfo(model="Test CPU", physical_cores=2, logical_cores=4),
        ram_total=16 * GIB, ram_available=8 * GIB, disk_path="/cache", disk_free=100 * GIB,
        bitsandbytes=BitsAndBytesStatus(installed=False, importable=False, reason="bitsandbytes is not installed"),
        torch_version="2.4.0",
    )


class FakeRun:
    """Stands in for ``fnapi.runner.run``: four training steps of events, a run folder with a report.

    ``gate`` (when given) is waited on before each step, so a test can hold the run mid-way;
    ``flood`` extra Progress events per step exercise coalescing; ``busy`` seconds of pure-Python
    work per step hold the GIL the way a busy training thread would at worst.
    """

    def __init__(self, steps: int = 4, gate: threading.Event | None = None, flood: int = 0,
                 error: Exception | None = None, busy: float = 0.0) -> None:
        self.steps, self.gate, self.flood, self.error, self.busy = steps, gate, flood, error, busy
        self.calls: list[Any] = []
        self.progress_sent = 0

    def __call__(self, recipe, *, sink=None, cancel=None, output=None, source=None):  # fnapi.runner.run's signature
        self.calls.append(recipe)
        run_dir = Path(output or recipe.output.dir.replace("{name}", recipe.name))
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe.to_yaml(run_dir / "recipe.yaml")
        sink.emit(RunStarted(name=recipe.name, run_dir=str(run_dir), time=0.0))
        if self.error is not None:
            raise self.error
        sink.emit(StageStarted(stage="train", total=self.steps, unit="step", description="lora fine-tuning", time=0.0))
        losses = []
        for step in range(1, self.steps + 1):
            if self.gate is not None:
                self.gate.wait(10)
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"train was cancelled after {step - 1} step")
            deadline = time.perf_counter() + self.busy
            while time.perf_counter() < deadline:
                sum(range(1000))
            for i in range(self.flood):
                sink.emit(Progress(stage="train", completed=step - 1 + i / max(self.flood, 1), total=self.steps,
                                   time=0.0))
            self.progress_sent += self.flood + 1
            loss = round(3.0 / step, 4)
            losses.append((step, loss))
            sink.emit(Progress(stage="train", completed=step, total=self.steps, unit="step", rate=2.0,
                               eta_seconds=(self.steps - step) / 2.0, time=0.0))
            sink.emit(Metric(stage="train", values={"loss": loss, "learning_rate": 1e-4}, step=step, time=0.0))
        sink.emit(StageFinished(stage="train", seconds=2.0, time=0.0))
        report = ForgettingReport(
            name=recipe.name, task=Score(0.1, 0.8, 10, "exact match"), probes=Score(0.6, 0.58, 20, "accuracy"),
            kl_to_base=0.0123, trainable_parameters=1_000, total_parameters=140_096, train_seconds=2.0,
            total_seconds=75.0,
            final_loss=losses[-1][1], steps=self.steps, losses=losses, method=recipe.train.method,
            mask={"preset": recipe.mask.preset, "components": recipe.mask.components},
        )
        (run_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
        sink.emit(RunFinished(name=recipe.name, seconds=2.0, run_dir=str(run_dir), time=0.0))
        return SimpleNamespace(run_dir=run_dir, report=report)


def demo_template(seed: int = 0) -> Template:
    """A small fixed template (2 layers x 64 channels, like the tiny models) with top tokens."""
    def component(cid: int, neurons: dict[int, list[int]], stability: float, tokens: list[str]) -> Component:
        top = [{"token": t, "context": f"the word {t}", "activation": round(3.0 - 0.1 * i, 2)}
               for i, t in enumerate(tokens)]
        return Component(cid, neurons, stability, {"runs_found": 5, "cluster_size": 5, "top_tokens": top})

    shift = seed  # a second template overlaps the first partly
    return Template(
        site="mlp.out", width=64, num_layers=2, layers=[0, 1],
        components=[
            component(0, {0: [1, 2, 3], 1: [4, 5]}, 0.95, [" Paris", " Rome"]),
            component(1, {0: [10 + shift, 11], 1: [12, 13, 14, 15]}, 0.81, [" Monday", " Tuesday"]),
            component(2, {1: [20, 21 + shift]}, 0.42, [" blue", " green"]),
        ],
        model={"name": TINY_MODEL, "architecture": "LlamaForCausalLM", "num_layers": 2, "hidden_size": 64,
               "intermediate_size": 160, "fingerprint": None},
        method={"name": "ica", "components": 3, "runs": 5, "mode": "global", "seed": seed},
        data={"sources": ["builtin:text"], "rows": 64, "tokens": 2048},
        created="2025-01-01T00:00:00+00:00",
    )


def fixed_timer(*args: Any) -> TimeEstimate:
    """Fixed time estimates: a run (called with its recipe) or a template build (recipe, "template")."""
    if len(args) == 2:
        return TimeEstimate((StageTime("capture", 12.0), StageTime("ica", 40.0)))
    return TimeEstimate((StageTime("baseline", 20.0), StageTime("train", 50.0), StageTime("evaluate", 20.0)))


def make_app(drafts: DraftStore, *, step: str = "welcome", run_fn=None, draft: Draft | None = None,
             extras: dict[str, Any] | None = None, **changes: Any) -> FntuiApp:
    """The wizard opened at ``step`` with a draft holding ``changes`` (dotted recipe paths).

    The draft uses the tiny model and, unless ``extras`` say otherwise, skips the training step's
    batch prefill (which loads the model).
    """
    if draft is None:
        draft = drafts.new()
        draft.step = step
        draft.recipe = draft.recipe.replace(**{"model.name": TINY_MODEL, **changes})
        draft.choices = WizardChoices(**({"train_prefilled": True} if extras is None else extras))
    engine = Engine(run_fn=run_fn or FakeRun(), hardware=fixed_hardware(), timer=fixed_timer)
    return FntuiApp(engine=engine, drafts=drafts, draft=draft)


async def settle(pilot) -> None:
    """Let workers finish and their messages land; stop cursors blinking (stable screenshots)."""
    from textual.widgets import Input
    from textual.worker import WorkerFailed

    for _ in range(3):
        try:
            await pilot.app.workers.wait_for_complete()
        except WorkerFailed:
            pass  # the screen shows the error; tests look at the screen
        await pilot.pause()
    for widget in pilot.app.screen.query(Input):
        widget.cursor_blink = False
    await pilot.pause()


def text_of(widget) -> str:
    """The plain text a Static shows (its content printed without styles)."""
    import io

    from rich.console import Console

    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(widget.content)
    return console.file.getvalue()


def add_random_adapter(run_dir: Path, model_name: str = TINY_MODEL) -> Path:
    """Give a run folder an ``adapter/`` as a LoRA run leaves it, with random (not zero) weights,
    so the fine-tuned model answers differently from its base."""
    import torch
    from peft import LoraConfig, get_peft_model

    from fnapi.models.loading import load_model
    from fnapi.recipe import ModelSection

    torch.manual_seed(0)
    loaded = load_model(ModelSection(name=model_name))
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(loaded.model, config)
    peft_model.save_pretrained(str(run_dir / "adapter"))
    return run_dir / "adapter"
