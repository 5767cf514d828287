"""The matching maths against finite differences and independently written unrolls."""
from __future__ import annotations

import pytest
import torch
from reference import param_count, plain_sgd_student, reference_convnet, reference_unroll, relative_error

from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.maths.augment import apply_augmentation
from seqmatch_engine.maths.matching import (
    DivergenceError,
    MatchingState,
    check_finite_step,
    draw_minibatches,
    draw_unroll_plan,
    matching_loss,
    normalised_distance,
    outer_step,
    unroll_student,
)
from seqmatch_engine.maths.models import ConvNetSpec, convnet_forward, init_convnet_params

SPEC = ConvNetSpec(channels=2, image_size=(8, 8), num_classes=3, width=4, depth=2)


def forward(params, x):
    return convnet_forward(params, x, SPEC)


def tiny_problem(dtype=torch.float64, ipc=2, steps=3, augment=True, seed=0):
    g = make_generator(seed, "tiny")
    start = init_convnet_params(SPEC, g).to(dtype)
    target = start + 0.05 * torch.randn(start.shape, generator=g, dtype=dtype)
    images = torch.randn((SPEC.num_classes * ipc, SPEC.channels, *SPEC.image_size), generator=g, dtype=dtype)
    labels = torch.arange(SPEC.num_classes).repeat_interleave(ipc)
    plan = draw_unroll_plan(g, len(images), batch_size=4, steps=steps, image_size=SPEC.image_size,
                            operations=("color", "crop", "scale", "rotate", "flip", "cutout") if augment else None)
    return start, target, images, labels, plan


def augmentations_of(plan):
    return [None if s.augmentation is None else (lambda x, d=s.augmentation: apply_augmentation(x, d)) for s in plan]


def test_param_layout_matches_layered_net():
    assert SPEC.num_params == param_count(SPEC)
    flat = init_convnet_params(SPEC, make_generator(1, "x"))
    net = reference_convnet(SPEC)
    with torch.no_grad():
        offset = 0
        for p in net.parameters():
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    x = torch.randn(5, 2, 8, 8)
    torch.testing.assert_close(forward(flat, x), net(x), rtol=1e-5, atol=1e-6)


def test_student_update_equals_plain_sgd_loop():
    start, _, images, labels, plan = tiny_problem(steps=5)
    lr = 0.1
    ours = unroll_student(forward, start, images, labels, torch.tensor(lr, dtype=torch.float64), plan)
    plain = plain_sgd_student(SPEC, start, images, labels, lr, [s.indices for s in plan], augmentations_of(plan))
    assert relative_error(ours.detach(), plain) < 1e-10
    assert relative_error(plain, start) > 1e-3  # the student really moved


def test_loss_and_meta_gradients_equal_functional_call_reference():
    start, target, images, labels, plan = tiny_problem(dtype=torch.float32, steps=4)
    grads = []
    for unroll in ("ours", "reference"):
        x = images.clone().requires_grad_(True)
        lr = torch.tensor(0.05, requires_grad=True)
        if unroll == "ours":
            loss = matching_loss(forward, start, target, x, labels, lr, plan)
        else:
            final = reference_unroll(SPEC, start, x, labels, lr, [s.indices for s in plan], augmentations_of(plan))
            loss = normalised_distance(final, start, target)
        loss.backward()
        grads.append((loss.detach(), x.grad, lr.grad))
    (l1, gx1, glr1), (l2, gx2, glr2) = grads
    assert relative_error(l1, l2) < 1e-5
    assert relative_error(gx1, gx2) < 1e-5
    assert relative_error(glr1, glr2) < 1e-5
    assert gx1.abs().sum() > 0


def test_meta_gradients_match_finite_differences():
    start, target, images, labels, plan = tiny_problem(dtype=torch.float64, steps=3)
    x = images.clone().requires_grad_(True)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    matching_loss(forward, start, target, x, labels, lr, plan).backward()

    def loss_at(pixels, step):
        return float(matching_loss(forward, start, target, pixels, labels, step, plan).detach())

    eps = 1e-6
    g = make_generator(3, "coords")
    for _ in range(6):
        index = tuple(int(torch.randint(n, (1,), generator=g)) for n in images.shape)
        plus, minus = images.clone(), images.clone()
        plus[index] += eps
        minus[index] -= eps
        numeric = (loss_at(plus, lr.detach()) - loss_at(minus, lr.detach())) / (2 * eps)
        assert numeric == pytest.approx(float(x.grad[index]), rel=1e-5, abs=1e-9)
    numeric_lr = (loss_at(images, lr.detach() + eps) - loss_at(images, lr.detach() - eps)) / (2 * eps)
    assert numeric_lr == pytest.approx(float(lr.grad), rel=1e-6)


def test_loss_is_normalised_by_expert_distance():
    start, target, images, labels, plan = tiny_problem()
    zero_lr = torch.tensor(0.0, dtype=torch.float64)
    # A student that does not move is exactly one expert-distance away: L = 1.
    assert float(matching_loss(forward, start, target, images, labels, zero_lr, plan)) == pytest.approx(1.0)


def test_minibatches_cover_every_image_before_repeating():
    batches = draw_minibatches(make_generator(0, "b"), num_images=10, batch_size=4, steps=5)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4]
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(10))


def test_outer_step_is_sgd_with_momentum_on_pixels_and_lr():
    start, target, images, labels, plan = tiny_problem(dtype=torch.float32)
    state = MatchingState.create(images, lr=0.05, lr_img=10.0, lr_lr=1e-3, momentum=0.5)
    expected_x, expected_lr = images.clone(), torch.tensor(0.05)
    velocity_x, velocity_lr = torch.zeros_like(images), torch.tensor(0.0)  # torch's buffer starts at the first grad
    for _ in range(2):
        x = expected_x.clone().requires_grad_(True)
        lr = expected_lr.clone().requires_grad_(True)
        matching_loss(forward, start, target, x, labels, lr, plan).backward()
        velocity_x = 0.5 * velocity_x + x.grad
        velocity_lr = 0.5 * velocity_lr + lr.grad
        expected_x = expected_x - 10.0 * velocity_x
        expected_lr = expected_lr - 1e-3 * velocity_lr
        outer_step(forward, state, images.new_empty(0), labels, start, target, plan, max_lr=1.0)
    torch.testing.assert_close(state.images.detach(), expected_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.lr.detach(), expected_lr, rtol=1e-5, atol=1e-8)


def test_frozen_images_get_no_update_but_shape_the_student():
    start, target, images, labels, plan = tiny_problem(dtype=torch.float32)
    frozen, learned = images[:3].clone(), images[3:]
    state = MatchingState.create(learned, lr=0.05, lr_img=10.0, lr_lr=1e-3, momentum=0.5)
    loss_with = outer_step(forward, state, frozen, labels, start, target, plan, max_lr=1.0).loss
    torch.testing.assert_close(frozen, images[:3], rtol=0, atol=0)
    other = MatchingState.create(learned, lr=0.05, lr_img=10.0, lr_lr=1e-3, momentum=0.5)
    loss_other = outer_step(forward, other, frozen + 1.0, labels, start, target, plan, max_lr=1.0).loss
    assert loss_with != pytest.approx(loss_other)


@pytest.mark.parametrize("loss, lr, needle", [(float("nan"), 0.01, "loss became nan"),
                                              (float("inf"), 0.01, "loss became inf"),
                                              (0.5, -0.002, "must stay positive"),
                                              (0.5, 5.0, "exploded")])
def test_divergence_messages(loss, lr, needle):
    with pytest.raises(DivergenceError, match=needle) as info:
        check_finite_step(loss, lr, max_lr=1.0)
    assert "lower distill." in str(info.value)


def test_outer_step_raises_when_lr_goes_negative():
    start, target, images, labels, plan = tiny_problem(dtype=torch.float32)
    state = MatchingState.create(images, lr=1e-4, lr_img=1.0, lr_lr=1e6, momentum=0.0)
    with pytest.raises(DivergenceError):
        for _ in range(3):
            outer_step(forward, state, images.new_empty(0), labels, start, target, plan, max_lr=1.0)


def test_recording_gradients_measures_frozen_images_without_changing_the_step():
    start, target, images, labels, plan = tiny_problem(dtype=torch.float32)
    frozen, learned = images[:3], images[3:]
    plain = MatchingState.create(learned, lr=0.05, lr_img=10.0, lr_lr=1e-3, momentum=0.5)
    recorded = MatchingState.create(learned, lr=0.05, lr_img=10.0, lr_lr=1e-3, momentum=0.5)
    a = outer_step(forward, plain, frozen, labels, start, target, plan, max_lr=1.0)
    b = outer_step(forward, recorded, frozen, labels, start, target, plan, max_lr=1.0, record_gradients=True)
    assert a.image_grads is None and b.image_grads.shape == images.shape
    assert torch.equal(plain.images, recorded.images) and a.loss == b.loss
    x = images.clone().requires_grad_(True)
    matching_loss(forward, start, target, x, labels, torch.tensor(0.05), plan).backward()
    torch.testing.assert_close(b.image_grads, x.grad)


def test_pixel_guard_names_lr_img():
    from seqmatch_engine.maths.matching import check_pixels

    sane = torch.ones(3, 1, 2, 2)
    check_pixels(sane, pixel_limit=20.0, lr_img=100.0)
    with pytest.raises(DivergenceError, match=r"NaN/inf: lower distill.lr_img \(now 100\)"):
        check_pixels(torch.full((1, 1, 2, 2), float("nan")), 20.0, 100.0)
    exploded = torch.cat([sane, torch.full((1, 1, 2, 2), 21.0)])
    with pytest.raises(DivergenceError, match=r"RMS reached 21, over 20 times the real images' 1\): lower distill.lr_img"):
        check_pixels(exploded, 20.0, 100.0)
    check_pixels(exploded, None, 100.0)  # no limit: only finiteness
