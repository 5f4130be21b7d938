"""Messages that carry fnapi's work from worker threads to the screens.

Workers are thin: they make one engine call, hand its events to a :class:`MessageSink` and post
one result message. Screens change state only in their handlers. Progress messages for the same
stage coalesce (``can_replace``), so a flood of updates never queues up behind a key press.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.message import Message
from textual.message_pump import MessagePump

from fnapi.events import Event, Progress

if TYPE_CHECKING:
    from fnapi.auth import TokenStatus, ValidationResult
    from fnapi.data.inspect import DataPreview
    from fnapi.exporting import ExportResult
    from fnapi.hardware import HardwareReport
    from fnapi.networks.template import Template
    from fnapi.runner import RunResult
    from fnapi.sizing import Recommendation
    from fntui.screens.model import ModelCheck


class EngineEvent(Message, bubble=False):
    """One fnapi event (progress, metric, log, stage boundaries) from a worker thread, for the
    screen that started the work (it does not bubble up to the app)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event

    def can_replace(self, message: Message) -> bool:
        # A newer progress report of the same stage makes this one redundant.
        return (isinstance(self.event, Progress) and isinstance(message, EngineEvent)
                and isinstance(message.event, Progress) and message.event.stage == self.event.stage)


class MessageSink:
    """An fnapi event sink that posts every event to ``target`` (safe to call from any thread)."""

    def __init__(self, target: MessagePump) -> None:
        self.target = target

    def emit(self, event: Event) -> None:
        self.target.post_message(EngineEvent(event))

    def close(self) -> None:
        return None


class WorkDone(Message, bubble=False):
    """Base of a worker's result message. ``key`` is the input it answered, where a newer input can
    make an older answer stale (the screen compares it with what its fields say now)."""

    def __init__(self, key: Any = None) -> None:
        super().__init__()
        self.key = key


class HardwareFound(WorkDone):
    def __init__(self, report: HardwareReport, recommendation: Recommendation) -> None:
        super().__init__()
        self.report, self.recommendation = report, recommendation


class TokenFound(WorkDone):
    def __init__(self, status: TokenStatus) -> None:
        super().__init__()
        self.status = status


class TokenChecked(WorkDone):
    def __init__(self, result: ValidationResult) -> None:
        super().__init__()
        self.result = result


class HubChecked(WorkDone):
    def __init__(self, problem: str | None) -> None:
        super().__init__()
        self.problem = problem


class ModelChecked(WorkDone):
    def __init__(self, check: ModelCheck, key: str) -> None:
        super().__init__(key)
        self.check = check


class DataInspected(WorkDone):
    def __init__(self, preview: DataPreview, key: str) -> None:
        super().__init__(key)
        self.preview = preview


class TemplateReady(WorkDone):
    def __init__(self, template: Template, path: Path, warnings: list[str], key: str) -> None:
        super().__init__(key)
        self.template, self.path, self.warnings = template, path, warnings


class BatchRecommended(WorkDone):
    def __init__(self, recommendation: Recommendation) -> None:
        super().__init__()
        self.recommendation = recommendation


class RunEnded(WorkDone):
    def __init__(self, result: RunResult) -> None:
        super().__init__()
        self.result = result


class RunExported(WorkDone):
    def __init__(self, result: ExportResult) -> None:
        super().__init__()
        self.result = result
