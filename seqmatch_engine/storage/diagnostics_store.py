"""The run's diagnostics/ folder: the only code that reads or writes it (typed records: diagnostic_records.py).

    runs/<id>/diagnostics/g1.jsonl        one G1 record per logged outer iteration
                          g2.json         matching error by start epoch of held-out experts
                          g3.safetensors  joint feature embedding (coords, epoch, point, label)
                          g3.json         its description (epochs, point kinds, reducer, seed)
                          g4.json         hardness split and easy/hard accuracies
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqmatch_engine.storage.diagnostic_records import G1Record, G2Result, G4Result
from seqmatch_engine.storage.files import (
    StorageError,
    append_jsonl,
    read_json,
    read_jsonl,
    read_tensors,
    write_json,
    write_jsonl,
    write_tensors,
)

DIAGNOSTICS_DIR = "diagnostics"
G1_FILE = "g1.jsonl"
G2_FILE = "g2.json"
G3_TENSORS = "g3.safetensors"
G3_FILE = "g3.json"
G4_FILE = "g4.json"


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / DIAGNOSTICS_DIR


def _damaged(path: Path, error: Exception) -> StorageError:
    return StorageError(f"{path} is not a diagnostics record this version reads ({error!r}). Delete it and compute "
                        f"it again (Diagnostics tab → Compute, or python -m seqmatch_engine diagnose RUN)")


# -- G1 -------------------------------------------------------------------------------------------
def append_g1(run_dir: Path, record: G1Record) -> None:
    append_jsonl(folder(run_dir) / G1_FILE, record.to_dict())


def read_g1(run_dir: Path) -> list[G1Record]:
    """G1 records in recording order (a torn last line from a kill is skipped)."""
    path = folder(run_dir) / G1_FILE
    try:
        return [G1Record.from_dict(line) for line in read_jsonl(path)]
    except (TypeError, KeyError, AttributeError) as error:
        raise _damaged(path, error) from None


def truncate_g1(run_dir: Path, stage: int, iteration: int) -> None:
    """Keep records of earlier stages and of `stage` up to `iteration` (a resumed stage re-records the rest)."""
    path = folder(run_dir) / G1_FILE
    if not path.exists():
        return
    records = read_g1(run_dir)
    kept = [r for r in records if r.stage < stage or (r.stage == stage and r.iteration <= iteration)]
    if len(kept) != len(records):
        write_jsonl(path, [r.to_dict() for r in kept])


# -- G2 and G4: one JSON file each ----------------------------------------------------------------
def write_g2(run_dir: Path, result: G2Result) -> None:
    write_json(folder(run_dir) / G2_FILE, result.to_dict())


def read_g2(run_dir: Path) -> G2Result | None:
    """The run's G2, None when not computed; StorageError (with the way out) when damaged or unreadable."""
    path = folder(run_dir) / G2_FILE
    try:
        return G2Result.from_dict(read_json(path)) if path.exists() else None
    except (TypeError, KeyError, AttributeError) as error:
        raise _damaged(path, error) from None


def write_g4(run_dir: Path, result: G4Result) -> None:
    write_json(folder(run_dir) / G4_FILE, result.to_dict())


def read_g4(run_dir: Path) -> G4Result | None:
    """The run's G4, None when not computed; StorageError (with the way out) when damaged or unreadable."""
    path = folder(run_dir) / G4_FILE
    try:
        return G4Result.from_dict(read_json(path)) if path.exists() else None
    except (TypeError, KeyError, AttributeError) as error:
        raise _damaged(path, error) from None


# -- G3: tensors + description ---------------------------------------------------------------------
G3_TENSOR_NAMES = ("coords", "epoch", "point", "label")


def write_g3(run_dir: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Tensors first, description last: a g3.json on disk always describes a complete tensor file."""
    write_tensors(folder(run_dir) / G3_TENSORS, tensors)
    write_json(folder(run_dir) / G3_FILE, info)


def read_g3(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    path = folder(run_dir) / G3_FILE
    if not path.exists():
        return None
    return read_tensors(folder(run_dir) / G3_TENSORS, G3_TENSOR_NAMES), read_json(path)
