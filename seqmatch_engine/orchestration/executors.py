"""Where jobs run: `local` (threads in this process, the default) or `dask` (a Dask `distributed` cluster).

    executor.map(fn, jobs, on_epoch, control)  ->  (position, result) as jobs finish

`fn` is a jobs.py function (train_expert, train_and_test) and `jobs` its specs. `on_epoch(position,
epoch)` follows progress, and `control` pauses or stops: a stopped map cancels what is pending and
interrupts what runs at its next epoch, then raises StopRequested. A job's result does not depend
on the executor (each job seeds its own generators and runs its torch ops on one thread on a CPU).
Dask is optional: importing this module never imports it.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
import uuid
from typing import Any, Callable, Iterator, Protocol

import torch

from seqmatch_engine.core.control import JobEpochFn, RunControl, StopRequested
from seqmatch_engine.maths.parallel import parallel_workers, run_in_parallel, set_this_thread_cores

CLUSTER_ENV = "SEQMATCH_CLUSTER"


class ClusterError(RuntimeError):
    """A cluster could not be reached or started; the message names the address and the fix."""


class Executor(Protocol):
    def describe(self) -> str: ...

    def map(self, fn: Callable, jobs: list, on_epoch: JobEpochFn | None = None,
            control: RunControl | None = None) -> Iterator[tuple[int, Any]]: ...

    def watch(self, on_lost: Callable[[str], None]) -> contextlib.AbstractContextManager: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Jobs in this process: `workers` at a time, each in its own thread with single-threaded torch ops
    (parallel.run_in_parallel); one at a time on a GPU."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)

    @classmethod
    def for_device(cls, device: torch.device) -> "LocalExecutor":
        return cls(parallel_workers(device))

    def describe(self) -> str:
        return f"local ({self.workers} job{'s' if self.workers > 1 else ''} at a time)"

    def map(self, fn: Callable, jobs: list, on_epoch: JobEpochFn | None = None,
            control: RunControl | None = None) -> Iterator[tuple[int, Any]]:
        def work(position: int) -> Any:
            def epoch_done(epoch: int) -> None:
                if control is not None:
                    control.checkpoint()
                if on_epoch is not None:
                    on_epoch(position, epoch)

            return fn(jobs[position], epoch_done)

        if control is not None:
            control.checkpoint()
        yield from run_in_parallel(work, list(range(len(jobs))), self.workers)

    def watch(self, on_lost: Callable[[str], None]) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # threads of this process are never lost alone

    def close(self) -> None:
        pass


def _import_distributed():
    try:
        import distributed  # optional (requirements-cluster.txt): only a cluster run needs it
    except ImportError:
        raise ClusterError("--cluster needs Dask distributed, which is not installed: pip install -r "
                           "requirements-cluster.txt (or pip install 'distributed>=2024.1')") from None
    return distributed


def _run_remote(fn: Callable, job: Any, position: int, progress_name: str, stop_name: str) -> Any:
    """On a Dask worker: `fn(job, on_epoch)` with progress sent to the driver's queue and its stop event obeyed."""
    from distributed import Event, Queue  # optional: runs on a Dask worker, where it is installed

    if not set_this_thread_cores(1):  # as a local worker thread: the same bits wherever the job runs
        torch.set_num_threads(1)
    progress, stop = Queue(progress_name), Event(stop_name)

    def on_epoch(epoch: int) -> None:
        if stop.is_set():
            raise StopRequested()
        progress.put([position, epoch])

    return fn(job, on_epoch)


def _leave_worker_pool(distributed) -> bool:
    """On a Dask worker (a study's run distilled there), give up this task's thread slot while it waits for the
    jobs it submitted, so that they can run on this worker too; True when it did (rejoin afterwards)."""
    try:
        distributed.get_worker()
    except ValueError:
        return False
    distributed.secede()
    return True


class DaskExecutor:
    """Jobs on a Dask cluster: `local:N` starts N single-threaded worker processes bound to 127.0.0.1 (no
    dashboard); any other address (tcp://HOST:8786) joins a running scheduler, after `probe_scheduler` saw it
    answer in time. On CUDA each job asks for `gpu_share` of a worker's `GPU` resource (workers started with
    --resources GPU=1), so 1/gpu_share jobs share one GPU. `source` names where the address came from."""

    POLL_SECONDS = 0.3
    CONNECT_SECONDS = 10.0  # deadline of each step of reaching a remote scheduler (connect, its handshake, identity)
    WORKER_CHECK_SECONDS = 1.0

    def __init__(self, address: str, gpu_share: float | None = None, connect_timeout: float | None = None,
                 source: str = "--cluster"):
        distributed = _import_distributed()
        self.address, self.gpu_share, self.cluster = address, gpu_share, None
        self._listeners: list[Callable[[str], None]] = []
        self._workers: set[str] | None = None
        self._checked = 0.0
        deadline = connect_timeout or self.CONNECT_SECONDS
        if address.startswith("local:"):
            count = address.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise ClusterError(f"{source} {address!r}: local:N needs N >= 1 worker processes, e.g. local:2; or "
                                   f"{_way_out(source)} to run on this machine")
            self.cluster = distributed.LocalCluster(
                n_workers=int(count), threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=40)
            self.client = distributed.Client(self.cluster)
            return
        probe_scheduler(address, deadline, source)
        try:
            self.client = distributed.Client(address, timeout=deadline)
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} (from {source}): {type(error).__name__}: "
                               f"{error}. {_check(address, source)}") from None

    @classmethod
    def from_client(cls, client, gpu_share: float | None = None) -> "DaskExecutor":
        """An executor on an existing `distributed.Client` (tests, notebooks)."""
        executor = cls.__new__(cls)
        executor.address, executor.gpu_share, executor.cluster, executor.client = (
            str(client.scheduler.address), gpu_share, None, client)
        executor._listeners, executor._workers, executor._checked = [], None, 0.0
        return executor

    @contextlib.contextmanager
    def watch(self, on_lost: Callable[[str], None]) -> Iterator[None]:
        """Within the block, `on_lost(address)` for each worker that leaves the cluster while jobs run."""
        self._listeners.append(on_lost)
        try:
            yield
        finally:
            self._listeners.remove(on_lost)

    def lost_workers(self, force: bool = False) -> list[str]:
        """Workers gone since the last call (at most one scheduler query per WORKER_CHECK_SECONDS unless `force`);
        each is also told to the watchers. The first call only learns who is there."""
        if not force and time.monotonic() - self._checked < self.WORKER_CHECK_SECONDS:
            return []
        self._checked = time.monotonic()
        now = set(self.client.scheduler_info().get("workers", {}))
        lost = sorted((self._workers or set()) - now)
        self._workers = now
        for address in lost:
            for listener in list(self._listeners):
                listener(address)
        return lost

    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def describe(self) -> str:
        where = self.address if not self.cluster else f"local cluster {self.client.scheduler.address}"
        return f"dask {where} ({self.workers()} workers)"

    def map(self, fn: Callable, jobs: list, on_epoch: JobEpochFn | None = None,
            control: RunControl | None = None) -> Iterator[tuple[int, Any]]:
        distributed = _import_distributed()
        if control is not None:
            control.checkpoint()
        if not jobs:
            return
        tag = uuid.uuid4().hex[:12]
        progress = distributed.Queue(f"seqmatch-progress-{tag}", client=self.client)
        stop = distributed.Event(f"seqmatch-stop-{tag}", client=self.client)
        resources = {"GPU": self.gpu_share} if self.gpu_share else None
        futures = {self.client.submit(_run_remote, fn, job, position, progress.name, stop.name, pure=False,
                                      key=f"{fn.__name__}-{tag}-{position}", resources=resources): position
                   for position, job in enumerate(jobs)}
        pending = set(futures)
        waiting = _leave_worker_pool(distributed)  # a run distilled on a worker waits for its own jobs
        if not waiting:
            self.lost_workers(force=True)  # who is there as the jobs start
        try:
            while pending:
                try:
                    done, pending = distributed.wait(pending, timeout=self.POLL_SECONDS, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished in this poll
                    done = set()
                self._drain(progress, on_epoch)
                if not waiting:
                    self.lost_workers()
                if control is not None and control.stopping:
                    raise StopRequested()
                for future in done:
                    yield futures[future], future.result()  # a job's exception is raised here
            self._drain(progress, on_epoch)
        except BaseException:
            stop.set()  # running jobs stop at their next epoch; pending ones never start
            self.client.cancel(list(pending))
            raise
        finally:
            if waiting:
                distributed.rejoin()

    @staticmethod
    def _drain(progress, on_epoch: JobEpochFn | None) -> None:
        count = progress.qsize()
        if count:
            for position, epoch in progress.get(batch=count):
                if on_epoch is not None:
                    on_epoch(position, epoch)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def make_executor(cluster: str | None, device: torch.device) -> Executor:
    """`cluster` (or $SEQMATCH_CLUSTER) as a DaskExecutor, else the LocalExecutor for `device`."""
    source = "--cluster" if cluster else f"${CLUSTER_ENV}"
    address = cluster or os.environ.get(CLUSTER_ENV)
    if not address:
        return LocalExecutor.for_device(device)
    return DaskExecutor(address, gpu_share=1.0 if device.type == "cuda" else None, source=source)


def _way_out(source: str) -> str:
    return f"drop {source}" if source.startswith("--") else f"unset {source.lstrip('$')}"


def _check(address: str, source: str) -> str:
    """How to check a scheduler address, and the way out."""
    where = address.removeprefix("tcp://").rsplit(":", 1)
    port_test = f"`nc -vz {where[0].strip('[]')} {where[1]}`" if len(where) == 2 else "`nc -vz HOST PORT`"
    return (f"Check the address ({source}), that a scheduler runs there (`dask scheduler`, then `dask worker {address}` "
            f"on each machine) and that its port is open from here ({port_test}); or {_way_out(source)} to run on "
            f"this machine")


def probe_scheduler(address: str, deadline: float, source: str = "--cluster") -> None:
    """Check, each step within `deadline` seconds, that a Dask scheduler answers at tcp://HOST:PORT: the TCP
    connection, the handshake a scheduler sends as soon as it accepts one, its identity. ClusterError naming the step,
    the address, where it came from and how to check it. (Dask's own client waits without end on a server that
    accepts and never answers.)"""
    match = re.fullmatch(r"tcp://(\[[0-9a-fA-F:.]+\]|[^/:\s\[\]]+):(\d{1,5})", address)  # tcp://HOST:PORT
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ClusterError(f"{source} {address!r}: use local:N (N worker processes on this machine) or "
                           f"tcp://HOST:PORT of a running Dask scheduler (e.g. tcp://10.0.0.5:8786); or "
                           f"{_way_out(source)} to run on this machine")
    host, port = match.group(1).strip("[]"), int(match.group(2))
    check = _check(address, source)
    try:
        connection = socket.create_connection((host, port), timeout=deadline)
    except socket.timeout:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} (from {source}): connecting timed out after "
                           f"{deadline:g} s. {check}") from None
    except OSError as error:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} (from {source}): connecting failed "
                           f"({error.strerror or error}). {check}") from None
    with connection:
        connection.settimeout(deadline)
        try:
            first = connection.recv(256)
        except (socket.timeout, OSError):
            first = None
    if not first:
        raise ClusterError(f"the server at {address} (from {source}) accepted the connection but sent no Dask handshake "
                           f"within {deadline:g} s (or closed it): it is not a Dask scheduler (a dashboard or web "
                           f"server waits silently), or it is stuck. {check}")
    if b"compression" not in first and b"pickle-protocol" not in first:
        raise ClusterError(f"the server at {address} (from {source}) answered, but not as a Dask scheduler (it sent "
                           f"{first[:40]!r}). {check}")
    try:
        identity = asyncio.run(_identity(address, deadline))
    except (asyncio.TimeoutError, OSError) as error:
        raise ClusterError(f"the Dask scheduler at {address} (from {source}) shook hands but did not tell its identity "
                           f"within {deadline:g} s ({type(error).__name__}): it is overloaded or stuck. {check}") from None
    kind = identity.get("type") if isinstance(identity, dict) else None
    if kind != "Scheduler":
        raise ClusterError(f"{address} (from {source}) is a Dask {kind or 'server'}, not a scheduler (a worker's "
                           f"address?). {check}")


async def _identity(address: str, deadline: float) -> Any:
    """The scheduler's answer to Dask's `identity` request, each step within `deadline` seconds."""
    from distributed.comm import connect  # optional: only a cluster run needs it

    comm = await asyncio.wait_for(connect(address, timeout=deadline), deadline)
    try:
        await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), deadline)
        return await asyncio.wait_for(comm.read(), deadline)
    finally:
        comm.abort()
