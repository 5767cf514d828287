"""What every bench section shares: the machine it measures on, its matmul peak, and fresh child processes run
interleaved (A B A B ...), so that load from other jobs hits every implementation alike."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from seqmatch_engine.core import paths
from seqmatch_engine.maths import native

Out = Callable[[str], None]


def run_child(task: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """`task` measured in a fresh child by the function its "entry" names (module:function, default child_main)."""
    module, function = task.get("entry", "seqmatch_engine.interfaces.bench:child_main").split(":")
    code = (f"import json, sys, torch; from {module} import {function} as entry; "
            f"threads = json.loads(sys.argv[1]).get('threads'); threads and torch.set_num_threads(int(threads)); "
            f"print(json.dumps(entry(json.loads(sys.argv[1]))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(paths.REPO_DIR),
                                                                      os.environ.get("PYTHONPATH")]))}
    env.pop("SEQMATCH_MALLOC_TUNING", None)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(task)], capture_output=True, text=True, env=env,
                         timeout=timeout)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()
        return {"error": tail[-1] if tail else f"exit {out.returncode}", "times": []}
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved_children(tasks: dict[str, dict[str, Any]], rounds: int, progress: Out) -> dict[str, list[dict]]:
    """{name: one result per round}: every task once per round, in the same order, each in a fresh child."""
    results: dict[str, list[dict]] = {name: [] for name in tasks}
    for r in range(rounds):
        for name, task in tasks.items():
            progress(f"  round {r + 1}/{rounds}: {name} ...")
            results[name].append(run_child(task))
    return results


def gib(n: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{n / (1 << 30):.2f} GiB"


def machine_lines() -> list[str]:
    """The machine, the torch build and the norm kernel, as the bench's header prints them."""
    cpu = platform.processor() or platform.machine()
    mem = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = gib(int(line.split()[1]) * 1024)
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    build = f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda + ' build' if torch.version.cuda else 'CPU build'})"
    build += f", oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}"
    build += f", MKL {'yes' if torch.backends.mkl.is_available() else 'no'}"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU: everything on the CPU"
    return [f"machine: {cpu}, {os.cpu_count()} cores, {mem} RAM, load average {load} (1/5/15 min)",
            f"build:   {build}, Python {platform.python_version()}, {torch.get_num_threads()} torch threads; {device}",
            f"norm block: {native.status()}"]


def matmul_peak(threads: int | None, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of a 2048^2 matmul in this process (`threads`: the torch threads it was measured with)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e9)
    return best
