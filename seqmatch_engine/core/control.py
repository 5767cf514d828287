"""Pause / resume / stop of a run, set by a UI or the CLI and checked by the driver and its jobs."""
from __future__ import annotations

import threading
from typing import Callable

ProgressFn = Callable[[int, int], None]     # (done, total) of a task
JobEpochFn = Callable[[int, int], None]     # (position of a job in an executor's map, epochs it has done)


class StopRequested(Exception):
    """Raised inside the driver (or a job) when RunControl.stop() was called."""


class RunControl:
    """Flags a UI thread sets and the driver checks between iterations (and jobs between epochs)."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def checkpoint(self) -> None:
        """Block while paused; raise StopRequested when stopped."""
        self._running.wait()
        if self._stop.is_set():
            raise StopRequested()
