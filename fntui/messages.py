"""Messages that carry fnapi's work from worker threads to the screens.

Workers are thin: they make one engine call, hand its events to a :class:`MessageSink` and post
one result message. Screens change state only in their handlers. Progress messages for the same
stage coalesce (``can_replace``), so a flood of updates never queues up behind a key press.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message
from textual.message_pump import MessagePump

from fnapi.events import Event, Progress


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
    """A worker's result: ``kind`` names the job (``"model"``, ``"data"``, ...), ``key`` the input
    it answered (a newer input makes an older answer stale)."""

    def __init__(self, kind: str, result: Any, key: Any = None) -> None:
        super().__init__()
        self.kind = kind
        self.result = result
        self.key = key
