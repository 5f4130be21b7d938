"""Stop long commands cleanly on SIGINT and SIGTERM.

SLURM, docker and ``timeout`` send SIGTERM; a person presses Ctrl-C. Either one sets a
:class:`StopRequest`, which the run checks at every step boundary: training saves a checkpoint, the
run logs ``run_cancelled`` and the command exits with 130 (SIGINT) or 143 (SIGTERM) after printing
how to resume. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


class StopRequest(threading.Event):
    """A cancel event that remembers which signal set it, and the exit code that goes with it."""

    def __init__(self) -> None:
        super().__init__()
        self.signal_name: str | None = None
        self.exit_code = 130

    def request(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.set()


@contextlib.contextmanager
def stop_on_signals(what: str = "the run") -> Iterator[StopRequest]:
    """Turn SIGINT and SIGTERM into a :class:`StopRequest` inside the block (main thread only)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: object) -> None:
        if request.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        request.request(signum)
        print(f"\n{signal.Signals(signum).name}: stopping {what} at the next step boundary "
              "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
