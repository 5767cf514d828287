"""Training several small nets at once on a CPU: one Python thread per net, each single-threaded.

On a small CPU one thread per small op scales poorly (measured: two 1-thread experts at once
train about 1.2x faster than one after the other on 2 threads), and ops run single-threaded
give the same bits however many nets train beside them.
"""
from __future__ import annotations

import ctypes
import functools
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
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


# -- threads that must not start OpenMP teams ----------------------------------------------------------
# GNU OpenMP keeps a pool of threads for every thread that has run a parallel torch op. Once the
# process holds more pool threads than cores, libgomp stops spin-waiting between parallel regions
# and sleeps instead, and every training step pays futex wake-ups: measured here, a distillation
# step on 2 threads went from 1.35 s to 2.75 s after two other threads had each run one
# parallel op (an app's request handlers rendering images). `keep_this_thread_single_core` makes
# the calling thread run its torch ops inline (no team, no pool) and leaves every other thread alone.
_local = threading.local()


def _openmp_runtime() -> ctypes.CDLL | None:
    """The libgomp torch uses (its own copy when it ships one: other packages, e.g. scikit-learn,
    load theirs beside it), or None."""
    try:
        mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                  if "libgomp" in line.split()[-1]}
    except (OSError, IndexError):
        return None
    torch_dir = str(Path(torch.__file__).resolve().parent)
    ordered = sorted(mapped, key=lambda path: not path.startswith(torch_dir))  # torch's own copy first
    return ctypes.CDLL(ordered[0]) if ordered else None


def keep_this_thread_single_core() -> bool:
    """Torch ops of the calling thread run on that thread alone (its own OpenMP setting only;
    torch.set_num_threads would change the default of every thread). True when applied."""
    if getattr(_local, "single", None) is None:
        _local.single = set_this_thread_cores(1)
    return _local.single


def set_this_thread_cores(count: int) -> bool:
    """Torch ops of the calling thread run on `count` OpenMP threads, other threads' settings untouched (a Dask
    worker thread distilling beside single-threaded jobs of the same process). True when applied."""
    torch.get_num_threads()  # torch sets this thread's OpenMP default on first use: let it, then override
    runtime = _openmp_runtime()
    if runtime is not None:
        runtime.omp_set_num_threads(count)
    return runtime is not None


def single_core(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` with `keep_this_thread_single_core()` applied to whichever thread calls it."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        keep_this_thread_single_core()
        return fn(*args, **kwargs)

    return wrapper
