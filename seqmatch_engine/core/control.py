"""Pause / resume / stop of a run, set by a UI or the CLI and checked by the driver and its jobs; how progress
reads (durations)."""
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


def format_seconds(seconds: float | None) -> str:
    """'42 s', '7 min 05 s', '12 h 51 min' (a study's hours read as hours, not as 771 minutes)."""
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
