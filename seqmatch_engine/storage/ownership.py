"""One owner at a time: an advisory OS lock (fcntl.flock) on a file inside a run or study folder.

    with OwnerLock(run.path / paths.LOCK_FILE, f"run {run.id}", advice).hold(wait=False):
        ...train the run...

Whoever trains a run or runs a study holds its lock (the CLI, the app's queue, a study); a second
process refuses with an `Owned` error that names the owner (pid, host, since when) and what to do,
or waits when asked. The OS releases the lock when its process dies, so a killed owner never blocks
a resume. The lock file holds the owner's description; it is only believed while the lock is held.
Within one process the lock is reentrant for the thread that holds it (the CLI takes a run's lock
before it builds an executor, and the driver takes it again).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

GRACE_SECONDS = 0.3   # a lock taken for less than this is someone looking (`owner`), not an owner
POLL_SECONDS = 0.5    # how often a waiting process tries again


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    since: float
    command: str

    def describe(self) -> str:
        if not self.pid:
            return "another process (starting)"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"process {self.pid} on {self.host} (since {when}: {self.command})"


class Owned(RuntimeError):
    """Another process owns the folder; the message names it and what to do."""

    def __init__(self, what: str, owner: Owner | None, advice: str):
        self.owner = owner
        who = owner.describe() if owner else "another process"
        super().__init__(f"{what} is in use by {who}. {advice}")


PROCESS = {"label": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"}


def name_this_process(label: str) -> None:
    """What owner messages call this process: "python -m seqmatch_engine distill", "app.py on port 7860"."""
    PROCESS["label"] = label[:120]


_held: dict[str, tuple[int, int, int]] = {}   # resolved path -> (thread id, depth, fd) in this process
_held_lock = threading.Lock()


class OwnerLock:
    """The lock of one folder: `hold()` it while owning the folder; `owner()` says who holds it now."""

    def __init__(self, path: Path, what: str, advice: str):
        self.path, self.what, self.advice = Path(path), what, advice
        self.key = str(self.path.resolve())

    def owner(self) -> Owner | None:
        """Who holds the lock now (None: nobody). Looks without owning: takes a shared lock for an instant."""
        with _held_lock:
            if self.key in _held:
                return self._read()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:  # held; its record may be an instant from written
            return self._read() or Owner(0, socket.gethostname(), time.time(), "starting")
        finally:
            os.close(fd)

    def _read(self) -> Owner | None:
        try:
            return Owner(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @contextlib.contextmanager
    def hold(self, wait: bool = False, on_wait: Callable[[Owner | None], None] | None = None,
             stopping: Callable[[], bool] | None = None) -> Iterator[None]:
        """Own the folder for the `with` block. Another owner: raise `Owned`, or with `wait` try again every
        POLL_SECONDS (calling `on_wait(owner)` each time, and giving up with `Owned` when `stopping()`)."""
        me = threading.get_ident()
        with _held_lock:
            held = _held.get(self.key)
            if held and held[0] == me:
                _held[self.key] = (me, held[1] + 1, held[2])
                reentered = True
            else:
                reentered = False
        if reentered:
            try:
                yield
            finally:
                self._leave()
            return
        fd = self._take(wait, on_wait, stopping)
        with _held_lock:
            _held[self.key] = (me, 1, fd)
        try:
            yield
        finally:
            self._leave()

    def _take(self, wait: bool, on_wait, stopping) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + GRACE_SECONDS
        while True:
            try:  # a new descriptor: another thread of this process that owns the folder blocks it too
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            owner = self._read()
            if not wait or (stopping and stopping()):
                os.close(fd)
                raise Owned(self.what, owner, self.advice)
            if on_wait:
                on_wait(owner)
            time.sleep(POLL_SECONDS)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                             "command": PROCESS["label"]})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        return fd

    def _leave(self) -> None:
        with _held_lock:
            me, depth, fd = _held[self.key]
            if depth > 1:
                _held[self.key] = (me, depth - 1, fd)
                return
            del _held[self.key]
        os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock
