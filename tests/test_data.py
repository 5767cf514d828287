"""Tests for seqmatch_engine.data.datasets: every loader reads tiny files written in the real format."""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from seqmatch_engine.core import paths
from seqmatch_engine.data import datasets as data
from seqmatch_engine.data.datasets import DATASET_NAMES, DatasetError, ImageDataset, load_dataset

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGITS = tuple(str(digit) for digit in range(10))
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the machine's Debian package or the user's data root."""
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("SEQMATCH_DATA_ROOT", str(tmp_path / "env-root"))


# --------------------------------------------------------------------------- writers


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes((0, 0, 0x08, array.ndim)) + b"".join(
        size.to_bytes(4, "big") for size in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(directory: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Four IDX files (6 train, 4 test images); returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train_labels": np.array([0, 3, 9, 0, 3, 9], dtype=np.uint8),
        "test_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "test_labels": np.array([9, 3, 0, 1], dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        if gz:
            (directory / f"{IDX_NAMES[key]}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (directory / IDX_NAMES[key]).write_bytes(idx_bytes(array))
    return arrays


def write_pickle(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content, protocol=2))


def cifar_batch(rng: np.random.Generator, labels: list[int], label_key: str) -> dict:
    """A batch as in the official archive: flat rows of R, G, B planes (N, 3072) uint8."""
    return {
        "batch_label": "testing batch",
        "data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
        label_key: labels,
        "filenames": [f"img_{index}.png" for index in range(len(labels))],
    }


def write_cifar10(root: Path) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(1)
    base = root / "cifar-10-batches-py"
    train = [cifar_batch(rng, [index, 9 - index], "labels") for index in range(5)]
    for index, batch in enumerate(train, 1):
        write_pickle(base / f"data_batch_{index}", batch)
    test = cifar_batch(rng, [4, 2, 7], "labels")
    write_pickle(base / "test_batch", test)
    names = [
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    write_pickle(base / "batches.meta", {"label_names": names, "num_cases_per_batch": 2})
    return train, test


def write_svhn(base: Path) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    written = {}
    for split, labels in (("train", [10, 1, 5, 9]), ("test", [3, 10])):
        mat = {
            "X": rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8),
            "y": np.array(labels, dtype=np.uint8).reshape(-1, 1),
        }
        base.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(base / f"{split}_32x32.mat", mat)
        written[split] = mat
    return written


# --------------------------------------------------------------------------- IDX family


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize(
    ("name", "folder", "classes"),
    [("fashion-mnist", "FashionMNIST", FASHION_CLASSES), ("mnist", "MNIST", DIGITS)],
)
def test_idx_round_trip(tmp_path, gz, name, folder, classes):
    written = write_idx_dataset(tmp_path / folder / "raw", gz)
    dataset = load_dataset(name, root=tmp_path)
    assert dataset.name == name
    assert dataset.class_names == classes
    assert (dataset.num_classes, dataset.channels, dataset.image_size) == (10, 1, (28, 28))
    assert dataset.train_images.shape == (6, 1, 28, 28)
    assert dataset.test_images.shape == (4, 1, 28, 28)
    assert dataset.train_images.dtype == torch.uint8
    assert dataset.train_labels.dtype == torch.int64
    for key, array in written.items():
        loaded = getattr(dataset, key).numpy()
        assert np.array_equal(loaded.squeeze(1) if "images" in key else loaded, array)
    assert len(dataset.mean) == len(dataset.std) == 1


def test_fashion_mnist_falls_back_to_debian_dir(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    written = write_idx_dataset(debian, gz=True, seed=5)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian)
    dataset = load_dataset("fashion-mnist", root=tmp_path / "empty")
    assert np.array_equal(dataset.test_images.squeeze(1).numpy(), written["test_images"])
    # Files under the root take precedence over the Debian package.
    in_root = write_idx_dataset(tmp_path / "root" / "FashionMNIST" / "raw", gz=False, seed=6)
    dataset = load_dataset("fashion-mnist", root=tmp_path / "root")
    assert np.array_equal(dataset.test_images.squeeze(1).numpy(), in_root["test_images"])


def test_default_root_comes_from_environment(tmp_path):
    written = write_idx_dataset(tmp_path / "env-root" / "MNIST" / "raw", gz=True)
    dataset = load_dataset("mnist")
    assert np.array_equal(dataset.train_labels.numpy(), written["train_labels"])


# --------------------------------------------------------------------------- CIFAR, SVHN


def test_cifar10_round_trip(tmp_path):
    train, test = write_cifar10(tmp_path)
    dataset = load_dataset("cifar10", root=tmp_path)
    assert dataset.class_names[:3] == ("airplane", "automobile", "bird")
    assert dataset.num_classes == 10
    assert dataset.train_images.shape == (10, 3, 32, 32)
    assert dataset.test_images.shape == (3, 3, 32, 32)
    assert dataset.train_images.dtype == torch.uint8
    assert dataset.train_labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    assert dataset.test_labels.tolist() == [4, 2, 7]
    # Row layout is 1024 red, then green, then blue values, each plane row-major.
    first = train[0]["data"][0]
    green = first[1024:2048].reshape(32, 32)
    assert np.array_equal(dataset.train_images[0, 1].numpy(), green)
    last = train[4]["data"][1]
    assert np.array_equal(dataset.train_images[9].numpy(), last.reshape(3, 32, 32))
    assert np.array_equal(dataset.test_images.numpy(), test["data"].reshape(3, 3, 32, 32))
    assert dataset.image_size == (32, 32) and dataset.channels == 3


def test_cifar100_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    base = tmp_path / "cifar-100-python"
    train = cifar_batch(rng, [0, 57, 99], "fine_labels") | {"coarse_labels": [4, 1, 14]}
    test = cifar_batch(rng, [99, 1], "fine_labels") | {"coarse_labels": [14, 1]}
    write_pickle(base / "train", train)
    write_pickle(base / "test", test)
    names = [f"class_{index:02d}" for index in range(100)]
    write_pickle(base / "meta", {"fine_label_names": names, "coarse_label_names": ["x"] * 20})
    dataset = load_dataset("cifar100", root=tmp_path)
    assert dataset.class_names == tuple(names)
    assert dataset.train_labels.tolist() == [0, 57, 99]
    assert dataset.test_labels.tolist() == [99, 1]
    assert dataset.train_labels.dtype == torch.int64
    assert np.array_equal(dataset.train_images.numpy(), train["data"].reshape(3, 3, 32, 32))
    assert dataset.mean == (0.5071, 0.4866, 0.4409)


def test_svhn_round_trip(tmp_path):
    written = write_svhn(tmp_path / "svhn")
    dataset = load_dataset("svhn", root=tmp_path)
    assert dataset.class_names == DIGITS
    assert dataset.train_images.shape == (4, 3, 32, 32)
    assert dataset.train_images.dtype == torch.uint8
    assert dataset.train_labels.tolist() == [0, 1, 5, 9]  # label 10 means digit 0
    assert dataset.test_labels.tolist() == [3, 0]
    for index in range(4):
        expected = written["train"]["X"][:, :, :, index].transpose(2, 0, 1)
        assert np.array_equal(dataset.train_images[index].numpy(), expected)


# --------------------------------------------------------------------------- Tiny ImageNet

TINY_COLOURS = {"n03000000": (250, 10, 10), "n01000000": (10, 250, 10), "n02000000": (10, 10, 250)}


def write_tiny_imagenet(root: Path) -> Path:
    """3 classes (wnids.txt unsorted), 2 train images each, 3 val images, one grayscale."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("n03000000\nn01000000\nn02000000\n")
    (base / "words.txt").write_text(
        "n00000001\tentity\nn01000000\tgoldfish, Carassius auratus\nn03000000\tschool bus\n"
    )
    for wnid, colour in TINY_COLOURS.items():
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (64, 64), colour).save(images / f"{wnid}_{index}.JPEG")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val = base / "val" / "images"
    val.mkdir(parents=True)
    Image.new("RGB", (64, 64), TINY_COLOURS["n02000000"]).save(val / "val_0.JPEG")
    Image.new("RGB", (64, 64), TINY_COLOURS["n03000000"]).save(val / "val_1.JPEG")
    Image.new("L", (64, 64), 128).save(val / "val_2.JPEG")
    (base / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02000000\t0\t1\t60\t61\n"
        "val_1.JPEG\tn03000000\t2\t3\t40\t50\n"
        "val_2.JPEG\tn01000000\t0\t0\t63\t63\n"
    )
    return base


def test_tiny_imagenet_round_trip(tmp_path):
    write_tiny_imagenet(tmp_path)
    dataset = load_dataset("tiny-imagenet", root=tmp_path)
    # Classes in sorted wnid order; names from words.txt, else the wnid.
    assert dataset.class_names == ("goldfish", "n02000000", "school bus")
    assert dataset.train_images.shape == (6, 3, 64, 64)
    assert dataset.test_images.shape == (3, 3, 64, 64)
    assert dataset.train_images.dtype == torch.uint8
    assert dataset.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert dataset.test_labels.tolist() == [1, 2, 0]
    # JPEG is lossy: compare mean colours only.
    mean_colour = dataset.train_images[4].float().mean(dim=(1, 2))
    assert torch.allclose(mean_colour, torch.tensor([250.0, 10.0, 10.0]), atol=4)
    grey = dataset.test_images[2].float().mean(dim=(1, 2))
    assert torch.allclose(grey, torch.full((3,), 128.0), atol=2)


def test_tiny_imagenet_rejects_unknown_val_wnid(tmp_path):
    base = write_tiny_imagenet(tmp_path)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="n09999999"):
        load_dataset("tiny-imagenet", root=tmp_path)


# --------------------------------------------------------------------------- bundled npz


def test_bundled_dataset():
    dataset = load_dataset("fashion-mnist-small")
    assert dataset.class_names == FASHION_CLASSES
    assert dataset.train_images.shape == (20000, 1, 28, 28)
    assert dataset.test_images.shape == (10000, 1, 28, 28)
    assert dataset.train_images.dtype == torch.uint8
    assert dataset.test_labels.dtype == torch.int64
    assert torch.bincount(dataset.train_labels).tolist() == [2000] * 10
    assert torch.bincount(dataset.test_labels).tolist() == [1000] * 10
    assert dataset.mean == (0.2861,) and dataset.std == (0.3530,)
    assert dataset.train_images.float().std() > 50  # real images, not blank


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs `apt-get install dataset-fashion-mnist`",
)
def test_bundled_dataset_matches_build_script():
    script = data.BUNDLED_DATASET_PATH.parent / "make_bundled_dataset.py"
    spec = importlib.util.spec_from_file_location("make_bundled_dataset", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = module.build_subset(module.SOURCE_DIR)
    dataset = load_dataset("fashion-mnist-small")
    assert np.array_equal(dataset.train_images.squeeze(1).numpy(), rebuilt["train_images"])
    assert np.array_equal(dataset.train_labels.numpy(), rebuilt["train_labels"])
    assert np.array_equal(dataset.test_images.squeeze(1).numpy(), rebuilt["test_images"])
    assert np.array_equal(dataset.test_labels.numpy(), rebuilt["test_labels"])


def _foreign_keys(path: Path) -> None:
    np.savez_compressed(path, images=np.zeros((2, 28, 28), np.uint8), labels=np.zeros(2, np.int64))


def _float_images(path: Path) -> None:
    np.savez_compressed(
        path,
        train_images=np.zeros((2, 28, 28), np.float32),
        train_labels=np.zeros(2, np.int64),
        test_images=np.zeros((1, 28, 28), np.uint8),
        test_labels=np.zeros(1, np.int64),
    )


@pytest.mark.parametrize(
    "write",
    [
        _foreign_keys,
        _float_images,
        lambda path: path.write_bytes(b"definitely not a zip archive"),
        lambda path: path.write_bytes(b"PK\x03\x04 truncated zip"),
        lambda path: np.save(path.open("wb"), np.zeros(3)),
        lambda path: None,  # missing file
    ],
    ids=["foreign-keys", "float-images", "garbage", "truncated-zip", "plain-npy", "missing"],
)
def test_bad_bundled_file(tmp_path, monkeypatch, write):
    path = tmp_path / "bundle.npz"
    write(path)
    monkeypatch.setattr(data, "BUNDLED_DATASET_PATH", path)
    with pytest.raises(DatasetError) as error:
        load_dataset("fashion-mnist-small")
    assert str(path) in str(error.value)
    assert "make_bundled_dataset.py" in str(error.value)
    assert f"restore it with `git -C {paths.REPO_DIR} checkout -- " \
           f"assets/data/fashion_mnist_small.npz`" in str(error.value)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", [name for name in DATASET_NAMES if name != "fashion-mnist-small"])
def test_missing_dataset_names_absolute_path_and_remedy(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as error:
        load_dataset(name, root="relative/data")
    message = str(error.value)
    assert str(tmp_path.resolve() / "relative" / "data") in message
    assert "download" in message or "apt-get" in message
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in message
    if name == "tiny-imagenet":
        assert "tiny-imagenet-200.zip" in message


def test_unknown_dataset_lists_choices():
    with pytest.raises(DatasetError) as error:
        load_dataset("imagenet-1k")
    assert isinstance(error.value, ValueError)
    assert all(name in str(error.value) for name in DATASET_NAMES)


def test_idx_bad_magic(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dataset(raw, gz=False)
    labels = np.zeros(6, np.uint8)
    (raw / IDX_NAMES["train_images"]).write_bytes(idx_bytes(labels))  # a 1-d file where 3-d is due
    with pytest.raises(DatasetError, match="magic") as error:
        load_dataset("mnist", root=tmp_path)
    assert str(raw / IDX_NAMES["train_images"]) in str(error.value)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_truncated(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dataset(raw, gz=gz)
    path = raw / (IDX_NAMES["test_images"] + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError) as error:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(error.value)


def test_idx_label_out_of_range_names_source(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dataset(raw, gz=False)
    (raw / IDX_NAMES["test_labels"]).write_bytes(idx_bytes(np.array([0, 1, 2, 10], np.uint8)))
    with pytest.raises(DatasetError, match="outside") as error:
        load_dataset("mnist", root=tmp_path)
    assert str(raw) in str(error.value)


def test_idx_count_mismatch(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_dataset(raw, gz=False)
    (raw / IDX_NAMES["train_labels"]).write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DatasetError, match="6 images but 5 labels"):
        load_dataset("mnist", root=tmp_path)


def test_corrupt_cifar_and_svhn_files(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"\x80\x02 not really a pickle")
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)
    write_svhn(tmp_path / "svhn")
    mat = tmp_path / "svhn" / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"test_32x32\.mat"):
        load_dataset("svhn", root=tmp_path)


def test_a_cifar_file_that_would_run_code_is_refused_unrun(tmp_path):
    """A pickle can call anything while it loads; a CIFAR batch may only build data and numpy arrays."""
    import pickle

    write_cifar10(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({"data": Payload(), "labels": []}))
    with pytest.raises(DatasetError, match=r"data_batch_2.*refused to build pathlib.*\.touch"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_image_dataset_validates_channels():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0, 1])
    with pytest.raises(DatasetError, match="per channel"):
        ImageDataset("toy", ("a", "b"), images, labels, images, labels, (0.5,), (0.5,))


# --------------------------------------------------------------------------- downloads (faked)


def fake_torchvision_class(monkeypatch, class_name: str, write_files) -> list[dict]:
    """Replace torchvision.datasets.<class_name>; check the call fits the real signature."""
    from torchvision import datasets as tv_datasets

    real = getattr(tv_datasets, class_name)
    calls: list[dict] = []

    def fake(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs).arguments
        calls.append(bound)
        write_files(Path(bound["root"]), bound)

    monkeypatch.setattr(tv_datasets, class_name, fake)
    return calls


def test_download_fetches_missing_idx_files_once(tmp_path, monkeypatch):
    calls = fake_torchvision_class(
        monkeypatch, "MNIST", lambda root, _: write_idx_dataset(root / "MNIST" / "raw", gz=False)
    )
    dataset = load_dataset("mnist", root=tmp_path, download=True)
    assert dataset.train_images.shape == (6, 1, 28, 28)
    assert calls == [{"root": str(tmp_path), "download": True}]
    load_dataset("mnist", root=tmp_path, download=True)
    assert len(calls) == 1  # present files are not fetched again


def test_download_cifar10_and_svhn(tmp_path, monkeypatch):
    cifar_calls = fake_torchvision_class(
        monkeypatch, "CIFAR10", lambda root, _: write_cifar10(root)
    )
    svhn_calls = fake_torchvision_class(monkeypatch, "SVHN", lambda root, _: write_svhn(root))
    assert load_dataset("cifar10", root=tmp_path, download=True).train_images.shape[0] == 10
    assert cifar_calls[0]["root"] == str(tmp_path)
    assert load_dataset("svhn", root=tmp_path, download=True).test_images.shape[0] == 2
    assert [(call["root"], call["split"]) for call in svhn_calls] == [
        (str(tmp_path / "svhn"), "train")
    ]  # the fake wrote both splits, so the test split was not fetched


def test_download_failure_is_a_dataset_error(tmp_path, monkeypatch):
    def offline(root, bound):
        raise urllib.error.URLError("no network")

    fake_torchvision_class(monkeypatch, "FashionMNIST", offline)
    with pytest.raises(DatasetError, match="downloading FashionMNIST") as error:
        load_dataset("fashion-mnist", root=tmp_path, download=True)
    assert str(tmp_path) in str(error.value)
