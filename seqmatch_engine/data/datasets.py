"""Dataset registry and loaders.

Every loader returns an :class:`ImageDataset` holding raw ``uint8`` pixels in
``(N, C, H, W)`` layout and ``int64`` labels. Normalisation and ZCA whitening
are applied elsewhere; the per-channel ``mean``/``std`` constants are carried
along so that code can use them.

Files are read directly in their published on-disk formats (IDX, CIFAR
pickles, SVHN ``.mat``, Tiny ImageNet folders) using the directory layout that
torchvision's downloaders produce under the data root. torchvision itself is
only imported when ``download=True`` has to fetch missing files.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seqmatch_engine.core.config import DATASET_NAMES
from seqmatch_engine.core.paths import ASSETS_DIR, REPO_DIR

__all__ = [
    "BUNDLED_DATASET_PATH",
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetError",
    "ImageDataset",
    "display_facts",
    "load_dataset",
]

BUNDLED_DATASET_PATH = ASSETS_DIR / "data" / "fashion_mnist_small.npz"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_DEFAULT_ROOT = "~/.cache/seqmatch/data"
_ROOT_ENV_VAR = "SEQMATCH_DATA_ROOT"

_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_DIGIT_CLASSES = tuple(str(digit) for digit in range(10))

# Per-channel (mean, std) of pixels scaled to [0, 1].
_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2861,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tiny-imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_KNOWN_CLASSES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": _FASHION_MNIST_CLASSES, "mnist": _DIGIT_CLASSES, "svhn": _DIGIT_CLASSES,
    "cifar10": _CIFAR10_CLASSES,
}


def display_facts(name: str) -> tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...] | None]:
    """(mean, std, class names or None) of a dataset without reading it: enough to show images offline."""
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    base = name.removesuffix("-small")
    mean, std = _NORMALISATION[base]
    return mean, std, _KNOWN_CLASSES.get(base)


_BUNDLED_REBUILD_HINT = (
    f"It ships with the repository: restore it with `git -C {REPO_DIR} checkout -- "
    f"assets/data/{BUNDLED_DATASET_PATH.name}`, or rebuild it with `python assets/data/make_bundled_dataset.py` "
    "(needs `apt-get install dataset-fashion-mnist`)."
)


class DatasetError(ValueError):
    """A dataset is unknown, missing on disk, or its files are malformed."""


class ImageShape:
    """Shape facts shared by raw and prepared datasets (needs `class_names` and `train_images`)."""

    class_names: tuple[str, ...]
    train_images: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return self.train_images.shape[2], self.train_images.shape[3]


@dataclass(frozen=True, eq=False)
class ImageDataset(ImageShape):
    """An image classification dataset with raw pixels.

    ``train_images``/``test_images``: ``(N, C, H, W)`` / ``(M, C, H, W)`` uint8.
    ``train_labels``/``test_labels``: ``(N,)`` / ``(M,)`` int64 in
    ``[0, num_classes)``. ``mean``/``std``: per-channel constants for pixels
    scaled to ``[0, 1]``.
    """

    name: str
    class_names: tuple[str, ...]
    train_images: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            _check_split(
                split,
                getattr(self, f"{split}_images"),
                getattr(self, f"{split}_labels"),
                len(self.class_names),
            )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DatasetError(
                f"train images {tuple(self.train_images.shape[1:])} and test images "
                f"{tuple(self.test_images.shape[1:])} differ in (C, H, W)"
            )
        if not len(self.mean) == len(self.std) == self.channels:
            raise DatasetError(
                f"mean/std need one value per channel ({self.channels}), "
                f"got {len(self.mean)}/{len(self.std)}"
            )



def _check_split(split: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DatasetError(
            f"{split} images must be a (N, C, H, W) uint8 tensor, "
            f"got {tuple(images.shape)} {images.dtype}"
        )
    if labels.dtype != torch.int64 or labels.dim() != 1:
        raise DatasetError(
            f"{split} labels must be a (N,) int64 tensor, got {tuple(labels.shape)} {labels.dtype}"
        )
    if len(images) != len(labels):
        raise DatasetError(f"{split} split has {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{split} labels span [{labels.min().item()}, {labels.max().item()}], "
            f"outside [0, {num_classes}) for {num_classes} classes"
        )


def load_dataset(name: str, root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load dataset ``name`` (one of :data:`DATASET_NAMES`) from ``root``.

    ``root`` defaults to ``$SEQMATCH_DATA_ROOT``, else ``~/.cache/seqmatch/data``.
    With ``download=True`` missing files are fetched through torchvision's
    downloaders (not available for ``tiny-imagenet``). ``fashion-mnist-small``
    is the file bundled with the repository and ignores ``root``/``download``.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    return loader(_resolve_root(root), download)


def _resolve_root(root: str | Path | None) -> Path:
    if root is None:
        root = os.environ.get(_ROOT_ENV_VAR) or _DEFAULT_ROOT
    return Path(root).expanduser().resolve()


def _make_dataset(
    name: str,
    source: Path,
    class_names: Iterable[str],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> ImageDataset:
    """Wrap numpy ``(images (N, C, H, W), labels (N,))`` pairs; errors name ``source``."""
    mean, std = _NORMALISATION[name.removesuffix("-small")]  # the subset shares its constants
    try:
        return ImageDataset(
            name=name,
            class_names=tuple(class_names),
            train_images=torch.from_numpy(np.ascontiguousarray(train[0], dtype=np.uint8)),
            train_labels=torch.from_numpy(np.asarray(train[1], dtype=np.int64)),
            test_images=torch.from_numpy(np.ascontiguousarray(test[0], dtype=np.uint8)),
            test_labels=torch.from_numpy(np.asarray(test[1], dtype=np.int64)),
            mean=mean,
            std=std,
        )
    except DatasetError as exc:
        raise DatasetError(f"malformed {name} data in {source}: {exc}") from exc


def _download(class_name: str, root: Path, **kwargs: object) -> None:
    """Fetch files with ``torchvision.datasets.<class_name>(root, download=True, ...)``."""
    from torchvision import datasets as tv_datasets  # deferred: slow to import, only for downloads

    try:
        getattr(tv_datasets, class_name)(str(root), download=True, **kwargs)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise DatasetError(
            f"downloading {class_name} into {root} failed: {exc}. "
            f"Check the network connection or place the files there by hand."
        ) from exc


def _missing_error(name: str, where: Path | str, layout: str, how_to_get: str) -> DatasetError:
    return DatasetError(
        f"dataset {name!r} not found at {where}. Expected layout: {layout}. {how_to_get}"
    )


def _download_hint(name: str) -> str:
    return (
        f"To fetch it while online: CLI `--set data.download=true`, Python load_dataset({name!r}, download=True)."
    )


_REPLACE_HINT = (
    "Replace it with an intact copy, e.g. delete it and load again while online with "
    "`--set data.download=true` (Python: download=True)."
)


# --------------------------------------------------------------------------- bundled npz

_BUNDLED_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def _load_bundled(root: Path, download: bool) -> ImageDataset:
    """The Fashion-MNIST subset shipped in ``assets/data`` (``root``/``download`` unused)."""
    path = BUNDLED_DATASET_PATH
    if not path.is_file():
        raise DatasetError(f"bundled dataset file {path} is missing. {_BUNDLED_REBUILD_HINT}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with loaded as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(
            f"cannot read bundled dataset {path}: {exc}. {_BUNDLED_REBUILD_HINT}"
        ) from exc
    if sorted(arrays) != sorted(_BUNDLED_KEYS):
        raise DatasetError(
            f"{path} holds arrays {sorted(arrays)}, expected {list(_BUNDLED_KEYS)}. "
            f"{_BUNDLED_REBUILD_HINT}"
        )
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DatasetError(
                f"{path}: {split}_images must be (N, 28, 28) uint8, got "
                f"{images.shape} {images.dtype}. {_BUNDLED_REBUILD_HINT}"
            )
        if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
            raise DatasetError(
                f"{path}: {split}_labels must be ({len(images)},) int64, got "
                f"{labels.shape} {labels.dtype}. {_BUNDLED_REBUILD_HINT}"
            )
    return _make_dataset(
        "fashion-mnist-small",
        path,
        _FASHION_MNIST_CLASSES,
        (arrays["train_images"][:, None], arrays["train_labels"]),
        (arrays["test_images"][:, None], arrays["test_labels"]),
    )


# --------------------------------------------------------------------------- IDX (MNIST family)

_IDX_FILES = {  # split key -> (file name without .gz, number of dimensions)
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}
_IDX_LAYOUT = ", ".join(f"{stem}[.gz]" for stem, _ in _IDX_FILES.values())


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (plain or ``.gz``) into a uint8 array with ``ndim`` dims."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read IDX file {path}: {exc}. {_REPLACE_HINT}") from exc
    magic = bytes((0, 0, 0x08, ndim))
    header_size = 4 + 4 * ndim
    if len(data) < header_size or data[:4] != magic:
        raise DatasetError(
            f"{path} is not an unsigned-byte IDX file with {ndim} dimension(s): magic number "
            f"is 0x{data[:4].hex()}, expected 0x{magic.hex()}. {_REPLACE_HINT}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected_size = header_size + int(np.prod(shape))
    if len(data) != expected_size:
        raise DatasetError(
            f"{path} has {len(data)} bytes but its header (shape {shape}) implies "
            f"{expected_size}: the file is truncated or corrupt. {_REPLACE_HINT}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    """Paths of the four IDX files in ``directory`` (plain preferred over ``.gz``), or None."""
    found = {}
    for key, (stem, _) in _IDX_FILES.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def _load_idx_dataset(
    name: str,
    root: Path,
    download: bool,
    torchvision_class: str,
    class_names: tuple[str, ...],
    fallback_dirs: tuple[Path, ...] = (),
    extra_hint: str = "",
) -> ImageDataset:
    """Read ROOT/<torchvision_class>/raw/ (torchvision's layout), then ``fallback_dirs``."""
    raw_dir = root / torchvision_class / "raw"
    files = next(filter(None, map(_find_idx_files, (raw_dir, *fallback_dirs))), None)
    if files is None and download:
        _download(torchvision_class, root)
        files = _find_idx_files(raw_dir)
    if files is None:
        where = " or ".join(str(directory) for directory in (raw_dir, *fallback_dirs))
        raise _missing_error(
            name, where, f"{raw_dir}/{{{_IDX_LAYOUT}}}", _download_hint(name) + extra_hint
        )
    arrays = {key: _read_idx(path, _IDX_FILES[key][1]) for key, path in files.items()}
    return _make_dataset(
        name,
        files["train_images"].parent,
        class_names,
        (arrays["train_images"][:, None], arrays["train_labels"]),
        (arrays["test_images"][:, None], arrays["test_labels"]),
    )


def _load_fashion_mnist(root: Path, download: bool) -> ImageDataset:
    """ROOT/FashionMNIST/raw/, else Debian's ``dataset-fashion-mnist`` package."""
    return _load_idx_dataset(
        "fashion-mnist",
        root,
        download,
        "FashionMNIST",
        _FASHION_MNIST_CLASSES,
        fallback_dirs=(DEBIAN_FASHION_MNIST_DIR,),
        extra_hint=(
            " On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` installs it into "
            f"{DEBIAN_FASHION_MNIST_DIR}."
        ),
    )


def _load_mnist(root: Path, download: bool) -> ImageDataset:
    """ROOT/MNIST/raw/."""
    return _load_idx_dataset("mnist", root, download, "MNIST", _DIGIT_CLASSES)


# --------------------------------------------------------------------------- CIFAR pickles


@dataclass(frozen=True)
class _CifarFormat:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    class_names_key: str
    torchvision_class: str


_CIFAR10 = _CifarFormat(
    "cifar10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{index}" for index in range(1, 6)),
    "test_batch",
    "batches.meta",
    "labels",
    "label_names",
    "CIFAR10",
)
_CIFAR100 = _CifarFormat(
    "cifar100", "cifar-100-python", ("train",), "test", "meta",
    "fine_labels", "fine_label_names", "CIFAR100",
)  # fmt: skip


# What CIFAR pickles hold: dicts, lists, bytes, str, numbers and numpy arrays (and, written by Python 3 at
# protocol 2, bytes as _codecs.encode(text, "latin1")). Nothing else may be built while reading one, so a file
# that is not what it claims (a pickle can run any code) is refused.
_CIFAR_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to build {module}.{name}: a CIFAR batch holds only data")
        return super().find_class(module, name)


def _read_pickle(path: Path, keys: tuple[str, ...]) -> dict:
    """Read a CIFAR pickle holding ``keys``, building only plain data and numpy arrays (never running code)."""
    try:
        with path.open("rb") as f:
            content = _DataOnlyUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # unpickling malformed bytes can raise nearly any exception type
        raise DatasetError(f"cannot read {path}: {exc!r}. {_REPLACE_HINT}") from exc
    if not isinstance(content, dict) or not all(key in content for key in keys):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DatasetError(f"{path} should be a dict with keys {list(keys)}, got {found}")
    return content


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch: images ``(N, 3, 32, 32)`` uint8, labels ``(N,)``."""
    batch = _read_pickle(path, ("data", label_key))
    data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' must be (N, 3072) uint8, got {data.shape} {data.dtype}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{path}: {label_key!r} must hold {len(data)} integer labels, "
            f"got {labels.shape} {labels.dtype}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(fmt: _CifarFormat, root: Path, download: bool) -> ImageDataset:
    """ROOT/<fmt.folder>/ with the python-pickle batches of the official archive."""
    base = root / fmt.folder
    needed = (*fmt.train_files, fmt.test_file, fmt.meta_file)
    if download and not all((base / file).is_file() for file in needed):
        _download(fmt.torchvision_class, root)
    missing = [file for file in needed if not (base / file).is_file()]
    if missing:
        raise _missing_error(
            fmt.name,
            base,
            f"{base}/{{{', '.join(needed)}}} (missing: {', '.join(missing)})",
            _download_hint(fmt.name),
        )
    class_names = _read_pickle(base / fmt.meta_file, (fmt.class_names_key,))[fmt.class_names_key]
    train_batches = [_read_cifar_batch(base / file, fmt.label_key) for file in fmt.train_files]
    train = tuple(np.concatenate(parts) for parts in zip(*train_batches, strict=True))
    test = _read_cifar_batch(base / fmt.test_file, fmt.label_key)
    return _make_dataset(fmt.name, base, map(str, class_names), train, test)


# --------------------------------------------------------------------------- SVHN .mat


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` in 0..9 (file uses 10 for digit 0)."""
    from scipy.io import loadmat  # deferred: scipy.io is slow to import, only SVHN needs it

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # scipy raises many exception types on malformed files
        raise DatasetError(f"cannot read MATLAB file {path}: {exc!r}. {_REPLACE_HINT}") from exc
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{path} must contain variables 'X' and 'y'. {_REPLACE_HINT}")
    images, labels = mat["X"], mat["y"].reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DatasetError(
            f"{path}: X must be (32, 32, 3, N) uint8, got {images.shape} {images.dtype}"
        )
    if labels.shape != images.shape[3:]:
        raise DatasetError(f"{path}: y holds {labels.size} labels for {images.shape[3]} images")
    labels = labels.astype(np.int64)
    return images.transpose(3, 2, 0, 1), np.where(labels == 10, 0, labels)


def _load_svhn(root: Path, download: bool) -> ImageDataset:
    """ROOT/svhn/{train,test}_32x32.mat; ROOT/svhn is the root handed to torchvision's SVHN."""
    base = root / "svhn"
    files = {split: base / f"{split}_32x32.mat" for split in ("train", "test")}
    for split, path in files.items():
        if download and not path.is_file():
            _download("SVHN", base, split=split)
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        raise _missing_error(
            "svhn",
            base,
            f"{base}/{{train_32x32.mat, test_32x32.mat}} (missing: {', '.join(missing)})",
            _download_hint("svhn"),
        )
    return _make_dataset(
        "svhn", base, _DIGIT_CLASSES, _read_svhn_mat(files["train"]), _read_svhn_mat(files["test"])
    )


# --------------------------------------------------------------------------- Tiny ImageNet

_TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_NO_EFFECT = " (download=True has no effect)"
_TINY_IMAGENET_LAYOUT = (
    "tiny-imagenet-200/ with wnids.txt, words.txt (optional), train/<wnid>/images/*.JPEG, "
    "val/images/*.JPEG and val/val_annotations.txt"
)


def _read_rgb64(path: Path) -> np.ndarray:
    """A 64x64 image as ``(64, 64, 3)`` uint8 RGB."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise DatasetError(f"cannot read image {path}: {exc}") from exc
    if pixels.shape != (64, 64, 3):
        raise DatasetError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, expected 64x64")
    return pixels


def _read_images(paths: list[Path]) -> np.ndarray:
    """Decode images in parallel threads into ``(N, 3, 64, 64)`` uint8."""
    with ThreadPoolExecutor() as pool:
        return np.stack(list(pool.map(_read_rgb64, paths))).transpose(0, 3, 1, 2)


def _tiny_imagenet_class_names(words_file: Path, wnids: list[str]) -> tuple[str, ...]:
    """First comma-separated name per wnid from words.txt, else the wnid itself."""
    names: dict[str, str] = {}
    if words_file.is_file():
        for line in words_file.read_text(encoding="utf-8").splitlines():
            wnid, _, words = line.partition("\t")
            names[wnid] = words.split(",")[0].strip()
    return tuple(names.get(wnid) or wnid for wnid in wnids)


def _tiny_imagenet_train(base: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        image_dir = base / "train" / wnid / "images"
        class_paths = sorted(image_dir.glob("*.JPEG"))
        if not class_paths:
            raise DatasetError(f"no training images (*.JPEG) in {image_dir}")
        paths += class_paths
        labels += [label] * len(class_paths)
    return paths, labels


def _tiny_imagenet_val(base: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """The labelled val split from val/val_annotations.txt (filename<TAB>wnid<TAB>box...)."""
    annotations = base / "val" / "val_annotations.txt"
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise DatasetError(
                f"{annotations}, line {number}: expected '<file>\\t<wnid>...' with a wnid "
                f"listed in wnids.txt, got {line!r}"
            )
        paths.append(base / "val" / "images" / fields[0])
        labels.append(label_of[fields[1]])
    if not paths:
        raise DatasetError(f"{annotations} lists no validation images")
    return paths, labels


def _load_tiny_imagenet(root: Path, download: bool) -> ImageDataset:
    """ROOT/tiny-imagenet-200/ (official zip, unpacked); classes in sorted wnid order.

    The labelled ``val`` split serves as the test split. There is no downloader.
    """
    base = root / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file() or not (base / "val" / "val_annotations.txt").is_file():
        raise _missing_error(
            "tiny-imagenet",
            base,
            f"{root}/{_TINY_IMAGENET_LAYOUT}",
            f"It cannot be downloaded automatically{_NO_EFFECT if download else ''}: get the "
            f"official archive {_TINY_IMAGENET_URL} (Stanford CS231n) and unzip it in {root}.",
        )
    wnids = sorted(set(wnids_file.read_text(encoding="utf-8").split()))
    train_paths, train_labels = _tiny_imagenet_train(base, wnids)
    test_paths, test_labels = _tiny_imagenet_val(base, wnids)
    return _make_dataset(
        "tiny-imagenet",
        base,
        _tiny_imagenet_class_names(base / "words.txt", wnids),
        (_read_images(train_paths), np.asarray(train_labels)),
        (_read_images(test_paths), np.asarray(test_labels)),
    )


_LOADERS: dict[str, Callable[[Path, bool], ImageDataset]] = {
    "fashion-mnist-small": _load_bundled,
    "fashion-mnist": _load_fashion_mnist,
    "mnist": _load_mnist,
    "cifar10": lambda root, download: _load_cifar(_CIFAR10, root, download),
    "cifar100": lambda root, download: _load_cifar(_CIFAR100, root, download),
    "svhn": _load_svhn,
    "tiny-imagenet": _load_tiny_imagenet,
}
