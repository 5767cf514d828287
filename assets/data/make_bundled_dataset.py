"""Build fashion_mnist_small.npz: a class-balanced Fashion-MNIST subset shipped with the repo.

Reads Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``),
keeps 2000 train and all 1000 test images per class chosen with ``np.random.default_rng(0)``
(indices sorted, so the original order is kept) and writes ``train_images`` (N, 28, 28)
uint8, ``train_labels`` (N,) int64, ``test_images`` and ``test_labels`` with
``np.savez_compressed``. Needs only numpy. The array contents are reproducible; the zip
container's timestamps are not, so compare files with the printed content digest.

    python assets/data/make_bundled_dataset.py [--source DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np

SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
OUTPUT_FILE = Path(__file__).resolve().parent / "fashion_mnist_small.npz"
TRAIN_PER_CLASS = 2000
TEST_PER_CLASS = 1000
NUM_CLASSES = 10
SEED = 0


def read_idx_gz(path: Path, ndim: int) -> np.ndarray:
    """A gzipped unsigned-byte IDX file as a uint8 array with ``ndim`` dimensions."""
    data = gzip.decompress(path.read_bytes())
    if data[:4] != bytes((0, 0, 0x08, ndim)):
        raise ValueError(f"{path}: bad IDX magic number 0x{data[:4].hex()}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices holding ``per_class`` random examples of every class 0..9."""
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=per_class, replace=False)
        for label in range(NUM_CLASSES)
    ]
    return np.sort(np.concatenate(chosen))


def build_subset(source: Path) -> dict[str, np.ndarray]:
    """The four arrays of the bundled file, selected from the full dataset in ``source``."""
    rng = np.random.default_rng(SEED)
    arrays = {}
    splits = (("train", "train", TRAIN_PER_CLASS), ("test", "t10k", TEST_PER_CLASS))
    for split, prefix, per_class in splits:
        images = read_idx_gz(source / f"{prefix}-images-idx3-ubyte.gz", 3)
        labels = read_idx_gz(source / f"{prefix}-labels-idx1-ubyte.gz", 1).astype(np.int64)
        keep = balanced_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = images[keep]
        arrays[f"{split}_labels"] = labels[keep]
    return arrays


def content_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, shapes, dtypes and bytes (independent of zip metadata)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(f"{key}{arrays[key].shape}{arrays[key].dtype}".encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--source", type=Path, default=SOURCE_DIR, help="folder with the *-ubyte.gz files"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT_FILE, help="the .npz file to write")
    args = parser.parse_args()
    arrays = build_subset(args.source)
    np.savez_compressed(args.output, **arrays)
    sizes = ", ".join(f"{key} {value.shape}" for key, value in arrays.items())
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB): {sizes}")
    print(f"content sha256: {content_digest(arrays)}")


if __name__ == "__main__":
    main()
