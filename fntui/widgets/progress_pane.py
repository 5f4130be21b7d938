"""Progress of the current stage: its name, a bar, and rate and ETA as fnapi reports them."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ProgressBar

from fnapi.events import Event, Progress, StageFinished, StageStarted


def format_duration(seconds: float | None) -> str:
    """``0:07``, ``12:30`` or ``1:02:03``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


class ProgressPane(Vertical):
    """Shows the stage fnapi is working on. The ETA comes from the events, not a local clock, so
    what is shown depends only on what fnapi reported. The bar is hidden until work starts."""

    def __init__(self, idle: str = "not started", **kwargs) -> None:
        super().__init__(**kwargs)
        self.idle = idle
        self.stage: str | None = None

    def compose(self) -> ComposeResult:
        yield Label(self.idle, classes="progress-stage")
        yield ProgressBar(total=None, show_eta=False, show_percentage=True)
        yield Label("", classes="progress-detail")

    def show(self, event: Event) -> None:
        """Update from a StageStarted, Progress or StageFinished event (others are ignored)."""
        stage_label = self.query_one(".progress-stage", Label)
        detail = self.query_one(".progress-detail", Label)
        bar = self.query_one(ProgressBar)
        bar.display = True
        if isinstance(event, StageStarted):
            self.stage = event.stage
            stage_label.update(f"{event.stage}: {event.description}".rstrip(": "))
            bar.update(total=event.total, progress=0)
            detail.update("")
        elif isinstance(event, Progress):
            if event.stage != self.stage:
                self.stage = event.stage
                stage_label.update(event.stage)
            bar.update(total=event.total, progress=event.completed)
            parts = [f"{_number(event.completed)}/{_number(event.total)} {event.unit}"]
            if event.rate:
                parts.append(f"{event.rate:.2f} {event.unit}/s")
            if event.eta_seconds is not None:
                parts.append(f"ETA {format_duration(event.eta_seconds)}")
            if event.message:
                parts.append(event.message)
            detail.update(" · ".join(parts))
        elif isinstance(event, StageFinished) and event.stage == self.stage:
            if bar.total is None:
                bar.update(total=1, progress=1)
            else:
                bar.update(progress=bar.total)
            detail.update(f"{event.stage} done in {event.seconds:.1f} s")

    def note(self, text: str) -> None:
        """Replace the stage line (the bar and its numbers stay as they are)."""
        self.query_one(".progress-stage", Label).update(text)

    def on_mount(self) -> None:
        self.query_one(ProgressBar).display = False

    def reset(self, text: str) -> None:
        """Back to the idle state (no bar) with ``text`` as the stage line."""
        self.stage = None
        self.query_one(".progress-stage", Label).update(text)
        bar = self.query_one(ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = False
        self.query_one(".progress-detail", Label).update("")
