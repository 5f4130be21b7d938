"""One event protocol for progress, and the sinks that render it.

Long functions take ``sink: EventSink`` and ``cancel: threading.Event | None``. They report through
:func:`stage`, which emits ``StageStarted`` / ``Progress`` / ``StageFinished`` and checks the cancel
event at every step. Console, JSONL and the TUI are just sinks.

>>> sink = ListSink()
>>> with stage(sink, "capture", total=2, unit="batch") as progress:
...     progress.advance()
...     progress.advance()
>>> [e.type for e in sink.events]
['stage_started', 'progress', 'progress', 'stage_finished']
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from fnapi.errors import CancelledError
from fnapi.redaction import redact, redact_obj


@dataclass(frozen=True)
class Event:
    """Base of all events. ``time`` is a UNIX timestamp set at creation."""

    type: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with a ``type`` key; secrets are redacted."""
        data = {"type": self.type, **dataclasses.asdict(self)}
        return redact_obj(data)


@dataclass(frozen=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    name: str
    run_dir: str | None = None


@dataclass(frozen=True)
class StageStarted(Event):
    type: ClassVar[str] = "stage_started"
    stage: str
    total: float | None = None
    unit: str = "step"
    description: str = ""


@dataclass(frozen=True)
class Progress(Event):
    type: ClassVar[str] = "progress"
    stage: str
    completed: float
    total: float | None = None
    unit: str = "step"
    rate: float | None = None  # units per second
    eta_seconds: float | None = None
    message: str = ""


@dataclass(frozen=True)
class Metric(Event):
    type: ClassVar[str] = "metric"
    stage: str
    values: dict[str, float]
    step: int | None = None


@dataclass(frozen=True)
class Log(Event):
    type: ClassVar[str] = "log"
    message: str
    level: str = "info"  # debug | info | warning | error
    stage: str | None = None


@dataclass(frozen=True)
class StageFinished(Event):
    type: ClassVar[str] = "stage_finished"
    stage: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    name: str
    seconds: float
    run_dir: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunFailed(Event):
    type: ClassVar[str] = "run_failed"
    error: str
    stage: str | None = None
    exit_code: int = 1


@dataclass(frozen=True)
class RunCancelled(Event):
    """The run was stopped on purpose (a signal, or the cancel event) and can be resumed."""

    type: ClassVar[str] = "run_cancelled"
    reason: str
    stage: str | None = None
    exit_code: int = 130
    resume: str | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (RunStarted, StageStarted, Progress, Metric, Log, StageFinished, RunFinished, RunFailed,
                RunCancelled)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output (for example a line of ``events.jsonl``)."""
    data = dict(data)
    cls = EVENT_TYPES.get(data.pop("type", ""))
    if cls is None:
        raise ValueError(f"unknown event type in {data!r}")
    return cls(**data)


@runtime_checkable
class EventSink(Protocol):
    """Anything that accepts events."""

    def emit(self, event: Event) -> None: ...


class NullSink:
    """Drops every event."""

    def emit(self, event: Event) -> None:
        return None

    def close(self) -> None:
        return None


class ListSink:
    """Keeps events in memory (tests, and the TUI's replay of a finished stage)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of_type(self, cls: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, cls)]

    def close(self) -> None:
        return None


class JsonlSink:
    """Appends one JSON object per event to a file, flushed per line so a crash loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), default=_json_default, allow_nan=True)
        with self._lock:
            if self._handle.closed:
                return
            self._handle.write(line + "\n")
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.close()


class CompositeSink:
    """Sends each event to several sinks."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close:
                close()


class PlainConsoleSink:
    """Plain lines on a stream: for logs, CI and anything that is not a terminal.

    Progress is printed at most every ``interval`` seconds per stage, plus the last step.
    """

    def __init__(self, stream=None, interval: float = 5.0, show_debug: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.show_debug = show_debug
        self._last: dict[str, float] = {}

    def _print(self, text: str) -> None:
        print(redact(text), file=self.stream, flush=True)

    def emit(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            total = f" ({_fmt_num(event.total)} {event.unit})" if event.total else ""
            self._print(f"[{event.stage}] started{total} {event.description}".rstrip())
        elif isinstance(event, Progress):
            now = time.monotonic()
            last = self._last.get(event.stage, 0.0)
            done = event.total is not None and event.completed >= event.total
            if now - last >= self.interval or done:
                self._last[event.stage] = now
                self._print(f"[{event.stage}] {_progress_text(event)}")
        elif isinstance(event, Metric):
            values = " ".join(f"{k}={_fmt_num(v)}" for k, v in event.values.items())
            step = f" step {event.step}" if event.step is not None else ""
            self._print(f"[{event.stage}]{step} {values}")
        elif isinstance(event, Log):
            if event.level == "debug" and not self.show_debug:
                return
            prefix = "" if event.level == "info" else f"{event.level}: "
            where = f"[{event.stage}] " if event.stage else ""
            self._print(f"{where}{prefix}{event.message}")
        elif isinstance(event, StageFinished):
            self._print(f"[{event.stage}] done in {event.seconds:.1f}s")
        elif isinstance(event, RunFinished):
            self._print(f"run {event.name} finished in {event.seconds:.1f}s")
        elif isinstance(event, RunFailed):
            self._print(f"run failed{f' in {event.stage}' if event.stage else ''}: {event.error}")
        elif isinstance(event, RunCancelled):
            self._print(f"run stopped{f' in {event.stage}' if event.stage else ''}: {event.reason}")

    def close(self) -> None:
        return None


class RichConsoleSink:
    """Progress bars with rate and ETA on a terminal; other events printed above the bars."""

    def __init__(self, console=None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self.console = console or Console(stderr=True)
        self._progress = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[message]}"),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._plain = PlainConsoleSink(stream=None)
        self._plain._print = lambda text: self.console.print(redact(text), markup=False, highlight=False)
        self._started = False

    def emit(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            if not self._started:
                self._progress.start()
                self._started = True
            self._tasks[event.stage] = self._progress.add_task(
                event.stage, total=event.total, message=event.description
            )
        elif isinstance(event, Progress):
            task = self._tasks.get(event.stage)
            if task is None:
                return
            self._progress.update(task, completed=event.completed, total=event.total, message=redact(event.message))
        elif isinstance(event, StageFinished):
            task = self._tasks.pop(event.stage, None)
            if task is not None:
                self._progress.update(task, message=f"done in {event.seconds:.1f}s")
                self._progress.stop_task(task)
            if not self._tasks and self._started:
                self._progress.stop()
                self._started = False
        else:
            self._plain.emit(event)

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False


def console_sink(stream=None) -> EventSink:
    """Rich progress bars when ``stream`` (default stderr) is a terminal, plain lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        return RichConsoleSink()
    return PlainConsoleSink(stream=stream)


class StageProgress:
    """Handle given by :func:`stage`: advance it, emit metrics and logs, check cancellation."""

    def __init__(self, sink: EventSink, name: str, total: float | None, unit: str,
                 cancel: threading.Event | None, min_interval: float) -> None:
        self.sink = sink
        self.name = name
        self.total = total
        self.unit = unit
        self.cancel = cancel
        self.completed = 0.0
        self.summary: dict[str, Any] = {}
        self._start = time.monotonic()
        self._min_interval = min_interval
        self._last_emit = -math.inf

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def check_cancelled(self) -> None:
        """Raise :class:`CancelledError` if the cancel event is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"{self.name} was cancelled after {_fmt_num(self.completed)} {self.unit}")

    def advance(self, amount: float = 1, message: str = "") -> None:
        """Add ``amount`` units of work done; emits a (rate-limited) Progress event."""
        self.update(self.completed + amount, message=message)

    def update(self, completed: float, total: float | None = None, message: str = "") -> None:
        """Set the work done so far (and optionally a new total)."""
        self.completed = completed
        if total is not None:
            self.total = total
        now = time.monotonic()
        finished = self.total is not None and self.completed >= self.total
        if finished or now - self._last_emit >= self._min_interval:
            self._last_emit = now
            elapsed = max(now - self._start, 1e-9)
            rate = self.completed / elapsed if self.completed else None
            eta = None
            if rate and self.total is not None:
                eta = max(self.total - self.completed, 0) / rate
            self.sink.emit(Progress(stage=self.name, completed=self.completed, total=self.total,
                                    unit=self.unit, rate=rate, eta_seconds=eta, message=message))
        self.check_cancelled()

    def metric(self, values: dict[str, float], step: int | None = None) -> None:
        self.sink.emit(Metric(stage=self.name, values=values, step=step))

    def log(self, message: str, level: str = "info") -> None:
        self.sink.emit(Log(message=message, level=level, stage=self.name))


@contextlib.contextmanager
def stage(sink: EventSink | None, name: str, total: float | None = None, unit: str = "step",
          cancel: threading.Event | None = None, description: str = "",
          min_interval: float = 0.1) -> Iterator[StageProgress]:
    """Report one stage of work: started, progress, finished (only if the body succeeds)."""
    sink = sink if sink is not None else NullSink()
    progress = StageProgress(sink, name, total, unit, cancel, min_interval)
    progress.check_cancelled()
    sink.emit(StageStarted(stage=name, total=total, unit=unit, description=description))
    yield progress
    sink.emit(StageFinished(stage=name, seconds=progress.elapsed, summary=progress.summary))


def check_cancelled(cancel: threading.Event | None, what: str = "work") -> None:
    """Raise :class:`CancelledError` when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"{what} was cancelled")


def _progress_text(event: Progress) -> str:
    total = f"/{_fmt_num(event.total)}" if event.total is not None else ""
    parts = [f"{_fmt_num(event.completed)}{total} {event.unit}"]
    if event.total:
        parts.append(f"{100 * event.completed / event.total:.0f}%")
    if event.rate:
        parts.append(f"{event.rate:.2f} {event.unit}/s")
    if event.eta_seconds is not None:
        parts.append(f"eta {_fmt_duration(event.eta_seconds)}")
    if event.message:
        parts.append(event.message)
    return "  ".join(parts)


def _fmt_num(value: float | None) -> str:
    if value is None:
        return "?"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
