"""Atomic file writes and safe tensor files (safetensors + JSON, never pickle)."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save


class StorageError(OSError):
    """A file could not be written or read; the message says which and why."""


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise StorageError(f"disk full while writing {path}: free some space (old runs in "
                               f"{path.parent.parent}, cached experts) and resume the run; "
                               f"the previous version of the file is intact") from error
        raise StorageError(f"could not write {path}: {error.strerror or error}") from error


def write_bytes(path: Path, payload: bytes) -> None:
    _atomic_write_bytes(path, payload)


def write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StorageError(f"{path} is not valid JSON ({error}); it was not written by this tool "
                           f"or is damaged") from None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a torn last line from a kill is skipped by read_jsonl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "a+b") as handle:
            end = handle.seek(0, os.SEEK_END)
            torn = end > 0 and handle.seek(end - 1) >= 0 and handle.read(1) != b"\n"
            handle.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())
    except OSError as error:
        raise StorageError(f"could not append to {path}: {error.strerror or error}") from error


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Atomically replace a JSONL file with `records`, one per line (to cut it back; appending is append_jsonl)."""
    _atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file in order ([] when absent); a line that is not JSON (a torn last line from a
    kill) is skipped."""
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically save CPU-contiguous copies of `tensors` as safetensors."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write_bytes(path, save(cpu, metadata=metadata))


def check_tensor_file(path: Path) -> None:
    """Raise StorageError when an existing safetensors file's header cannot be read (truncated or foreign);
    reads the header only. A missing file is fine (not written yet)."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        with safe_open(str(path), "pt") as handle:
            handle.keys()
        if path.stat().st_size < 8:
            raise ValueError("too short")
    except (SafetensorError, OSError, ValueError) as error:
        raise StorageError(f"{path} is damaged ({error})") from None


def tensor_shape(path: Path, key: str) -> tuple[int, ...]:
    """The shape of tensor `key` in a safetensors file, read from its header only."""
    try:
        with safe_open(str(path), "pt") as handle:
            if key not in handle.keys():
                raise StorageError(f"{path} lacks {key}: it is not a file of this kind")
            return tuple(handle.get_slice(key).get_shape())
    except (SafetensorError, OSError, ValueError) as error:
        if isinstance(error, StorageError):
            raise
        raise StorageError(f"{path} is not a readable safetensors file ({error}); "
                           f"it is damaged or was not written by this tool") from None


def read_tensors(path: Path, required: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Load a safetensors file, checking that `required` keys are present."""
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"{path} does not exist")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise StorageError(f"{path} is not a readable safetensors file ({error}); "
                           f"it is damaged or was not written by this tool") from None
    missing = [k for k in required if k not in tensors]
    if missing:
        raise StorageError(f"{path} lacks {', '.join(missing)}: it is not a file of this kind")
    return tensors
