"""Training several small nets at once on a CPU: one Python thread per net, each single-threaded.

On a small CPU one thread per small op scales poorly (measured: two 1-thread experts at once
train about 1.2x faster than one after the other on 2 threads), and ops run single-threaded
give the same bits however many nets train beside them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")


def parallel_workers(device: torch.device | str) -> int:
    """Nets trained at once: one per torch thread on the CPU (each single-threaded), one on a GPU."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


@contextmanager
def single_threaded_ops():
    """torch ops on one thread inside the block (threads started inside it inherit the setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_in_parallel(work: Callable[[int], T], indices: list[int], workers: int) -> Iterator[tuple[int, T]]:
    """(i, work(i)) for every index, in order of completion, `workers` at a time.

    With workers > 1 every item (an expert, an evaluation net) runs in its own Python thread with
    single-threaded torch ops, even when fewer items than workers are left, so an item's ops run
    the same way whatever runs beside it and its result is bit-identical. The first error stops
    the rest (pending items are cancelled) and is raised.
    """
    if not indices:
        return
    if workers <= 1:
        for i in indices:
            yield i, work(i)
        return
    with single_threaded_ops(), ThreadPoolExecutor(min(workers, len(indices)), "seqmatch-net") as pool:
        futures = {pool.submit(work, i): i for i in indices}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()
