"""Progress on the command line: tqdm bars on stderr for a run's events and for long tasks."""
from __future__ import annotations

import sys

from tqdm import tqdm

from seqmatch_engine.orchestration.driver import Event, EventKind


class ProgressBars:
    """An observer drawing one tqdm bar per phase on stderr.

    A bar starts at the first count it is shown (a resumed run's iteration), so its rate and ETA
    count only the work done since, not the iterations restored from a checkpoint.
    """

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.key: tuple | None = None

    def _bar(self, key: tuple, total: int, description: str, done: int) -> tqdm:
        if self.key != key:
            self.close()
            self.bar = tqdm(total=total, initial=done, desc=description, unit="it", dynamic_ncols=True,
                            file=sys.stderr)
            self.key = key
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.key = None, None

    def __call__(self, event: Event) -> None:
        if event.kind == EventKind.PHASE:
            self.close()
            tqdm.write(f"[{event.data['name']}]" + (f" {event.data['message']}" if "message" in event.data else ""),
                       file=sys.stderr)
        elif event.kind == EventKind.PROGRESS:
            task = event.data["task"]
            bar = self._bar((task, event.stage), event.data["total"],
                            f"experts S{event.stage + 1}" if task == "experts" else task, event.data["done"])
            bar.n = event.data["done"]
            bar.refresh()
        elif event.kind == EventKind.ITERATION:
            bar = self._bar(("distil", event.stage), event.data["total"], f"distilling S{event.stage + 1}",
                            event.iteration)
            bar.n = event.iteration
            bar.set_postfix(loss=f"{event.data['loss']:.4f}", lr=f"{event.data['lr']:.4g}",
                            t=event.data["start_epoch"], refresh=True)
        elif event.kind == EventKind.SELECTION:
            tqdm.write(f"  S{event.stage + 1} it {event.iteration}: val acc {100 * event.data['val_accuracy']:.2f} % "
                       f"(best {100 * event.data['best_accuracy']:.2f} % at it {event.data['best_iteration']})",
                       file=sys.stderr)
        elif event.kind in (EventKind.DONE, EventKind.ERROR):
            self.close()


class TaskBar:
    """A progress callback (done, total) drawing one tqdm bar on stderr, opened on first use."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, dynamic_ncols=True, file=sys.stderr)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def __enter__(self) -> "TaskBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
