"""DSA augmentation, evaluation nets, ZCA and expert trajectories."""
from __future__ import annotations

import pytest
import torch

from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.data.prepare import PixelTransform, fit_zca, split_train_val
from seqmatch_engine.maths.augment import DSA_OPERATIONS, AugmentationDraw, apply_augmentation, draw_augmentation
from seqmatch_engine.maths.experts import train_trajectory
from seqmatch_engine.maths.models import ConvNetSpec, build_eval_net, default_depth, init_convnet_params
from seqmatch_engine.storage.expert_cache import ExpertCache
from seqmatch_engine.storage.files import StorageError


def images(n=4, c=3, side=8, dtype=torch.float64):
    return torch.randn((n, c, side, side), generator=make_generator(0, "img"), dtype=dtype)


@pytest.mark.parametrize("operation", DSA_OPERATIONS)
def test_every_operation_is_differentiable_wrt_pixels(operation):
    draw = draw_augmentation(make_generator(1, operation), 3, (6, 6), (operation,))
    x = images(3, 2, 6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: apply_augmentation(t, draw), (x,), eps=1e-6, atol=1e-5)


def test_same_generator_state_gives_the_same_augmentation():
    x = images()
    a = apply_augmentation(x, draw_augmentation(make_generator(5, "a"), 4, (8, 8)))
    b = apply_augmentation(x, draw_augmentation(make_generator(5, "a"), 4, (8, 8)))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_crop_is_an_exact_integer_shift_with_zero_padding():
    x = images(1, 1, 8)
    out = apply_augmentation(x, AugmentationDraw("crop", {"dx": torch.tensor([2]), "dy": torch.tensor([-1])}))
    expected = torch.zeros_like(x)
    expected[..., 0:7, 2:8] = x[..., 1:8, 0:6]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_flip_and_cutout_do_what_they_say():
    x = images(2, 1, 8)
    flipped = apply_augmentation(x, AugmentationDraw("flip", {"flip": torch.tensor([True, False])}))
    torch.testing.assert_close(flipped[0], x[0].flip(-1))
    torch.testing.assert_close(flipped[1], x[1])
    cut = apply_augmentation(x, AugmentationDraw("cutout", {"cy": torch.tensor([0, 4]), "cx": torch.tensor([0, 4])}))
    assert float(cut[1, 0, 2:7, 2:7].abs().sum()) == 0.0  # a 4-px square (+-2) around (4, 4)
    assert float(cut[1, 0, 0, 0]) == float(x[1, 0, 0, 0])


def test_random_draws_cover_all_operations():
    g = make_generator(0, "ops")
    seen = {draw_augmentation(g, 2, (8, 8)).operation for _ in range(200)}
    assert seen == set(DSA_OPERATIONS)


@pytest.mark.parametrize("arch", ["convnet", "resnet18", "vgg11", "alexnet"])
@pytest.mark.parametrize("channels, side", [(1, 28), (3, 32)])
def test_eval_nets_accept_small_images_and_are_reproducible(arch, channels, side):
    spec = ConvNetSpec(channels, (side, side), 10, width=8, depth=3)
    nets = [build_eval_net(arch, spec, make_generator(0, arch), "cpu") for _ in range(2)]
    x = torch.randn(2, channels, side, side)
    assert nets[0](x).shape == (2, 10)
    torch.testing.assert_close(nets[0](x), nets[1](x))


def test_default_depth_follows_image_size():
    assert [default_depth((s, s)) for s in (28, 32, 64)] == [3, 3, 4]


def test_zca_inverse_is_exact_and_whitens():
    x = torch.randn(500, 12, generator=make_generator(0, "zca")) @ torch.randn(12, 12, generator=make_generator(1, "m"))
    mean, whiten, unwhiten = fit_zca(x, eps=0.0)
    white = (x - mean) @ whiten
    cov = white.T @ white / (len(x) - 1)
    torch.testing.assert_close(cov, torch.eye(12), atol=1e-3, rtol=0)
    transform = PixelTransform(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25]),
                               *fit_zca(torch.randn(100, 12, generator=make_generator(2, "z"))))
    pixels = torch.rand(3, 3, 2, 2, generator=make_generator(3, "p"))
    torch.testing.assert_close(transform.to_pixels(transform.forward(pixels)), pixels, atol=1e-5, rtol=0)


def test_validation_split_is_disjoint_balanced_and_capped():
    labels = torch.arange(3).repeat(20)
    train, val = split_train_val(labels, 3, val_per_class=5, train_per_class=7, generator=make_generator(0, "s"))
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert torch.bincount(labels[val]).tolist() == [5, 5, 5]
    assert torch.bincount(labels[train]).tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="val_per_class"):
        split_train_val(labels, 3, val_per_class=20, train_per_class=None, generator=make_generator(0, "s"))


def tiny_trajectory(epochs=3, seed=0):
    spec = ConvNetSpec(1, (8, 8), 2, width=4, depth=2)
    g = make_generator(seed, "traj")
    x = torch.randn(20, 1, 8, 8, generator=g)
    y = torch.arange(2).repeat(10)
    start = init_convnet_params(spec, g)
    return start, train_trajectory(spec, x, y, start, epochs, lr=0.1, batch_size=8, use_augmentation=True, generator=g)


def test_expert_epochs_are_distinct_copies():
    start, trajectory = tiny_trajectory()
    assert trajectory.shape == (4, start.numel())
    torch.testing.assert_close(trajectory[0], start)
    for e in range(1, 4):
        assert not torch.equal(trajectory[e], trajectory[e - 1])


def test_expert_training_is_reproducible():
    torch.testing.assert_close(tiny_trajectory(seed=4)[1], tiny_trajectory(seed=4)[1], rtol=0, atol=0)


def test_expert_cache_lists_missing_loads_saved_and_rejects_stale_files(tmp_path):
    cache = ExpertCache(tmp_path)
    recipe = {"name": "tiny"}
    assert cache.missing(recipe, 2, (3, 5)) == [0, 1]
    for i in (0, 1):
        cache.save(recipe, i, torch.full((3, 5), float(i)))
    assert cache.missing(recipe, 3, (3, 5)) == [2]
    with pytest.raises(StorageError, match="expert 2 of .* is not cached yet"):
        cache.load(recipe, 3, (3, 5))
    torch.testing.assert_close(cache.load(recipe, 2, (3, 5))[1], torch.full((3, 5), 1.0))
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(StorageError, match="expected"):
        cache.missing(recipe, 1, (4, 5))
    with pytest.raises(StorageError, match="different recipe"):
        (cache.folder(recipe) / "recipe.json").write_text('{"name": "other"}')
        cache.missing(recipe, 1, (3, 5))
    (cache.folder(recipe) / "recipe.json").write_text('{"name": "tiny"}')
    cache.expert_path(recipe, 0).write_bytes(b"half-written")
    with pytest.raises(StorageError, match="not a readable safetensors"):
        cache.missing(recipe, 1, (3, 5))


def test_zca_is_fitted_on_raw_pixels_as_mtt():
    """With ZCA on, model inputs are W (x - mean) for x the raw [0,1] pixels, W from the training split's
    unbiased covariance C = U diag(s) U^T as U diag(1/sqrt(s + 0.1)) U^T: no standardisation first."""
    from seqmatch_engine.core.config import DataConfig
    from seqmatch_engine.data.datasets import ImageDataset
    from seqmatch_engine.data.prepare import prepare_data

    g = make_generator(0, "raw")
    raw = (torch.rand(60, 3, 4, 4, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(3).repeat(20)
    dataset = ImageDataset("toy", ("a", "b", "c"), raw, labels, raw[:9], labels[:9], (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    data = prepare_data(DataConfig(zca=True, val_per_class=2), 0, torch.device("cpu"), dataset)
    train_rows, _ = split_train_val(labels, 3, 2, None, make_generator(0, "val-split"))
    x = (raw[train_rows].double() / 255).flatten(1)
    centred = x - x.mean(0)
    cov = centred.T @ centred / (len(x) - 1)
    s, u = torch.linalg.eigh(cov)
    expected = (centred @ u @ torch.diag((s.clamp_min(0) + 0.1).rsqrt()) @ u.T).view(-1, 3, 4, 4)
    torch.testing.assert_close(data.train_images.double(), expected, atol=2e-5, rtol=0)
    # the display inverse gives back the raw pixels exactly (up to float32 rounding)
    torch.testing.assert_close(data.transform.to_pixels(data.test_images), raw[:9].float() / 255, atol=2e-5, rtol=0)
    # without ZCA: per-channel standardisation with the dataset's constants
    plain = prepare_data(DataConfig(zca=False, val_per_class=2), 0, torch.device("cpu"), dataset)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(plain.test_images, (raw[:9].float() / 255 - mean) / std)


def test_one_channel_first_conv_pads_by_three_as_mtt():
    """28x28x1 -> 32x32 maps after the first conv -> 4x4 features after three pools; 3 channels pad 1."""
    mnist = ConvNetSpec(1, (28, 28), 10, width=8, depth=3)
    assert mnist.map_sizes() == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert mnist.feature_size() == (4, 4) and mnist.feature_dim == 8 * 16
    cifar = ConvNetSpec(3, (32, 32), 10, width=8, depth=3)
    assert cifar.map_sizes() == [(32, 32), (16, 16), (8, 8), (4, 4)]
    from seqmatch_engine.maths.models import ConvNet, convnet_features, convnet_forward

    params = init_convnet_params(mnist, make_generator(0, "pad"))
    x = torch.randn(2, 1, 28, 28, generator=make_generator(1, "pad"))
    assert convnet_features(params, x, mnist).shape == (2, 8 * 16)
    torch.testing.assert_close(ConvNet(mnist, params)(x), convnet_forward(params, x, mnist), atol=1e-5, rtol=1e-4)
