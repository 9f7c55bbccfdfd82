"""Stopping a run cleanly: Ctrl-C, or a caller's Stop, ends training after the current step."""

from __future__ import annotations

import contextlib
import signal
import sys


class StopRequest:
    """Set by Ctrl-C, or by a caller's `threading.Event` (a UI's Stop button)."""

    def __init__(self, event=None):
        self.event, self.ctrl_c = event, False

    @property
    def requested(self) -> bool:
        return self.ctrl_c or (self.event is not None and self.event.is_set())


@contextlib.contextmanager
def stop_on_ctrl_c(event=None):
    """First Ctrl-C (or `event` set): finish the current step, save a checkpoint, stop. Second Ctrl-C: stop at once."""
    stop = StopRequest(event)

    def handler(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.ctrl_c = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
