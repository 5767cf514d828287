"""Per-purpose random generators and device choice; nothing here touches global RNG state."""
from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed determined by `seed` and the tags, e.g. derive_seed(0, "expert", 3)."""
    text = "/".join([str(seed), *map(str, tags)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def make_generator(seed: int, *tags: object) -> torch.Generator:
    """A CPU generator for one purpose of one run (draws are moved to the device afterwards)."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, *tags))
    return generator


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else the CPU; other names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use device 'auto' or 'cpu'")
    return device


def machine_signature() -> dict[str, str]:
    """What the bits of a CPU computation depend on besides the code and the seed: the CPU model, the instruction
    set torch dispatches to, and the torch build (same signature, same bits; another one may round differently)."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
