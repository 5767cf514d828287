"""Memory of the matching step: estimates, the automatic mode choice, and the CPU allocator.

The unrolled student keeps the graph of all N steps, so its memory grows with
N x batch x activation size; the "recompute" mode keeps theta_n per step and rebuilds one
step's graph at a time in the backward pass (matching.py). `choose_memory_mode` picks
"unrolled" while its estimate fits comfortably in the memory available, else "recompute",
which replays recorded convolutions unless even those would not fit.

CPU allocator: glibc returns every freed block above 32 MB to the kernel (munmap), and on
virtual machines the next allocation pays a page fault per 4 KiB page when it is first touched
(measured here: 0.6 s per GB). The unroll allocates gigabytes per outer iteration, so
`tune_cpu_allocator` makes glibc keep freed memory for reuse instead (the process keeps its
peak resident size, as GPU caching allocators do). Opt out with SEQMATCH_MALLOC_TUNING=0.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from seqmatch_engine.core.config import MEMORY_MODES
from seqmatch_engine.maths.models import ConvNetSpec

BUDGET_FRACTION = 0.6   # unrolled is chosen while its estimate is at most this share of free memory

# Bytes kept per activation element (fp32, one conv block, one student step) by the fast
# unrolled path: conv output, ReLU output, their gradients and the pooled gradient (measured
# with bench's child-process RSS deltas and rounded up).
_UNROLLED_ACTIVATION_COPIES = 4.5
_RECOMPUTE_ACTIVATION_COPIES = 9.0   # one step's graph plus its vector-Jacobian product


def activation_elements(spec: ConvNetSpec, batch: int) -> int:
    """Elements of the conv outputs of one forward pass (the dominant saved tensors)."""
    return sum(batch * spec.width * h * w for h, w in spec.map_sizes()[:-1])


def replay_bytes(spec: ConvNetSpec, batch: int, element_size: int = 4) -> int:
    """Memory "recompute" keeps per rebuilt step (conv_replay.py): output and input gradient of
    every convolution after the first, and its weight gradient."""
    first = batch * spec.width * math.prod(spec.map_sizes()[0])
    weights = (spec.depth - 1) * spec.width * spec.width * 9
    return int((2 * (activation_elements(spec, batch) - first) + weights) * element_size)


def estimate_bytes(spec: ConvNetSpec, batch: int, steps: int, mode: str, num_images: int | None = None,
                   element_size: int = 4, replay: bool = True) -> int:
    """Estimated peak extra memory of one outer iteration in `mode` ("unrolled" | "recompute",
    replaying convolutions or not)."""
    act = activation_elements(spec, batch) * element_size
    images = (num_images or batch) * spec.channels * spec.image_size[0] * spec.image_size[1] * element_size
    params = spec.num_params * element_size
    if mode == "unrolled":
        return int(steps * (_UNROLLED_ACTIVATION_COPIES * act + 2 * params) + 4 * images + act)
    if mode == "recompute":
        replayed = steps * replay_bytes(spec, batch, element_size) if replay else 0
        return int(_RECOMPUTE_ACTIVATION_COPIES * act + steps * params + 4 * images + replayed)
    raise ValueError(f"memory mode {mode!r}: choose from unrolled, recompute")


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory free for this job: CUDA's free memory on that device, else MemAvailable of /proc/meminfo."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown platform: assume 8 GiB


@dataclass(frozen=True)
class MemoryChoice:
    mode: str                 # "unrolled" or "recompute"
    requested: str            # the config value: "auto", "unrolled" or "recompute"
    unrolled_bytes: int       # estimates of one outer iteration's peak extra memory
    recompute_bytes: int
    available: int            # free memory seen when choosing
    replay: bool = True       # "recompute": rebuilt steps replay their recorded convolutions (conv_replay.py)

    def describe(self) -> str:
        gib = 1 << 30
        why = "set in the config" if self.requested != "auto" else (
            "fits" if self.mode == "unrolled" else "the unrolled graph would not fit")
        how = ""
        if self.mode == "recompute":
            how = ", replaying convolutions" if self.replay else ", least memory: nothing replayed"
        return (f"memory mode {self.mode} ({why}{how}): unrolled ~{self.unrolled_bytes / gib:.2f} GiB, "
                f"recompute ~{self.recompute_bytes / gib:.2f} GiB, {self.available / gib:.1f} GiB free")


def choose_memory_mode(requested: str, spec: ConvNetSpec, batch: int, steps: int, num_images: int | None = None,
                       device: torch.device | str = "cpu", available: int | None = None) -> MemoryChoice:
    """Resolve distill.memory_mode: "auto" takes "unrolled" while its estimate is at most
    BUDGET_FRACTION of the free memory (`available`, measured when None), else "recompute".
    "recompute" replays recorded convolutions when that fits in the budget, else it keeps the
    least memory."""
    if requested not in MEMORY_MODES:
        raise ValueError(f"distill.memory_mode {requested!r}: choose from {', '.join(MEMORY_MODES)}")
    unrolled = estimate_bytes(spec, batch, steps, "unrolled", num_images)
    recompute = estimate_bytes(spec, batch, steps, "recompute", num_images)
    free = available_bytes(device) if available is None else int(available)
    budget = BUDGET_FRACTION * free
    mode = "unrolled" if requested == "unrolled" or (requested == "auto" and unrolled <= budget) else "recompute"
    replay = recompute <= budget
    if not replay:
        recompute = estimate_bytes(spec, batch, steps, "recompute", num_images, replay=False)
    return MemoryChoice(mode, requested, unrolled, recompute, free, replay)


# -- glibc allocator -----------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# mallopt takes a C int: the largest trim threshold it can express (2 GiB of free heap top).
_NEVER_TRIM = (1 << 31) - 1
_state = {"tuned": False}


def _libc():
    name = ctypes.util.find_library("c")
    if not name or not hasattr(ctypes.CDLL(name), "mallopt"):
        return None
    libc = ctypes.CDLL(name)
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # out-of-range values raise, never wrap
    libc.mallopt.restype = ctypes.c_int
    return libc


def tune_cpu_allocator() -> bool:
    """Keep freed memory inside the process (no munmap, no trimming); True when active. Idempotent."""
    if _state["tuned"]:
        return True
    if os.environ.get("SEQMATCH_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = _libc()
        ok = libc is not None and libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    except (OSError, ctypes.ArgumentError):
        ok = False
    _state["tuned"] = bool(ok)
    return _state["tuned"]
