"""Fused C kernels for the ConvNet's norm block, built on first use with the system C compiler.

The student differentiates through its own gradient, so the block instance norm -> ReLU ->
2x2 average pool runs forward, backward and double backward every step; in torch ops each is a
chain of a dozen passes over the activations. `norm_relu_pool.c` does each in two passes per
(sample, channel) plane, on torch's own OpenMP threads.

The library is compiled once per source, compiler and machine (-march=native) into
$SEQMATCH_KERNEL_CACHE (default ~/.cache/seqmatch-studio/kernels) in about a second. Without a
C compiler, or with SEQMATCH_NATIVE_KERNELS=0, `kernels()` returns None and models.py runs the
same maths in torch ops. Results do not depend on the number of threads.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("norm_relu_pool.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
DISABLE_VARIABLE = "SEQMATCH_NATIVE_KERNELS"
CACHE_VARIABLE = "SEQMATCH_KERNEL_CACHE"


class Shape(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("channels", ctypes.c_int64),
                ("height", ctypes.c_int64), ("width", ctypes.c_int64)]


_P = ctypes.c_void_p
_SIGNATURES = {
    "nrp_forward": [_P, _P, _P, ctypes.c_float, Shape, _P, _P, _P, _P, ctypes.c_int],
    "nrp_backward": [_P, _P, _P, _P, _P, _P, Shape, _P, _P, _P, _P, _P, ctypes.c_int],
    "nrp_double_backward": [_P, _P, _P, _P, _P, _P, _P, _P, _P, Shape, _P, _P, _P, _P, ctypes.c_int],
}


def cache_dir() -> Path:
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "seqmatch-studio" / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _library_name(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = "\n".join([SOURCE.read_text(), compiler, version, " ".join(FLAGS), sys.platform])
    return f"norm_relu_pool-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def build(directory: Path | None = None) -> Path:
    """Compile the kernels (if not already cached) and return the library's path.

    Raises RuntimeError naming the problem (no compiler, a failed build) and the way out.
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    directory = directory or cache_dir()
    target = directory / _library_name(compiler)
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", partial, "-lm"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed to build {SOURCE.name}: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)  # atomic: a concurrent build writes the same bytes
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _load(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        getattr(library, name).argtypes = argtypes
        getattr(library, name).restype = ctypes.c_int
    return library


_lock = threading.Lock()
_state: dict[str, object] = {}


def kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (disabled, or it could not be built: warned once)."""
    if "library" in _state:
        return _state["library"]  # type: ignore[return-value]
    with _lock:
        if "library" not in _state:
            library, reason = None, None
            if os.environ.get(DISABLE_VARIABLE, "1") == "0":
                reason = f"{DISABLE_VARIABLE}=0"
            else:
                try:
                    library = _load(build())
                except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                    reason = str(error)
                    warnings.warn(f"fused C kernels unavailable ({reason}); the norm block runs in torch ops, "
                                  f"about 1.3x slower", RuntimeWarning, stacklevel=2)
            _state["reason"] = reason
            _state["library"] = library
    return _state["library"]  # type: ignore[return-value]


def status() -> str:
    """One line for logs and the benchmark: which norm-block kernels run and why."""
    return "fused C kernels" if kernels() is not None else f"torch ops ({_state['reason']})"


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors (CPU float32) and are available."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and kernels() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _call(name: str, *args) -> None:
    if getattr(kernels(), name)(*args) != 0:
        raise MemoryError(f"{name}: no memory left for a plane's scratch rows")


def _contiguous(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.contiguous() for t in tensors]


def _threads(work: int) -> int:
    """torch's thread count for this thread, or 1 for work too small to share."""
    return torch.get_num_threads() if work >= 1 << 15 else 1


def forward(z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float):
    """z (B, C, H, W) -> (pooled (B, C, H/2, W/2), mean (B, C), rstd (B, C), relu (B, C, H, W))."""
    z, gamma, beta = _contiguous(z, gamma, beta)
    b, c, h, w = z.shape
    mean, rstd = z.new_empty(b, c), z.new_empty(b, c)
    relu, out = torch.empty_like(z), z.new_empty(b, c, h // 2, w // 2)
    _call("nrp_forward", _ptr(z), _ptr(gamma), _ptr(beta), eps, Shape(b, c, h, w), _ptr(mean), _ptr(rstd),
          _ptr(relu), _ptr(out), _threads(z.numel()))
    return out, mean, rstd, relu


def backward(grad, z, gamma, mean, rstd, relu):
    """Pooled gradient (B, C, H/2, W/2) -> (dz (B, C, H, W), dgamma (C,), dbeta (C,)); the other
    arguments are what `forward` took and returned."""
    grad, z, gamma, mean, rstd, relu = _contiguous(grad, z, gamma, mean, rstd, relu)
    b, c, h, w = z.shape
    dz, dgamma, dbeta = torch.empty_like(z), z.new_empty(c), z.new_empty(c)
    parts = torch.empty(2, b * c, dtype=torch.float64)
    _call("nrp_backward", _ptr(grad), _ptr(z), _ptr(gamma), _ptr(mean), _ptr(rstd), _ptr(relu),
          Shape(b, c, h, w), _ptr(dz), _ptr(parts[0]), _ptr(parts[1]), _ptr(dgamma), _ptr(dbeta),
          _threads(z.numel()))
    return dz, dgamma, dbeta


def double_backward(grad, z, gamma, mean, rstd, relu, gdz, gdgamma, gdbeta):
    """Vector-Jacobian product of `backward` with (gdz, gdgamma, gdbeta), each of which may be None
    (zero): (g_grad (B, C, H/2, W/2), g_z (B, C, H, W), g_gamma (C,))."""
    grad, z, gamma, mean, rstd, relu, gdz, gdgamma, gdbeta = _contiguous(
        grad, z, gamma, mean, rstd, relu, gdz, gdgamma, gdbeta)
    b, c, h, w = z.shape
    g_grad, g_z, g_gamma = torch.empty_like(grad), torch.empty_like(z), z.new_empty(c)
    parts = torch.empty(b * c, dtype=torch.float64)
    _call("nrp_double_backward", _ptr(grad), _ptr(z), _ptr(gamma), _ptr(mean), _ptr(rstd), _ptr(relu),
          _ptr(gdz), _ptr(gdgamma), _ptr(gdbeta), Shape(b, c, h, w), _ptr(g_grad), _ptr(g_z), _ptr(parts),
          _ptr(g_gamma), _threads(z.numel()))
    return g_grad, g_z, g_gamma
