"""The fused C kernels of the norm block (seqmatch_engine/native): the same numbers as the torch
ops they replace, independent of the thread count, cached builds, and a clean fallback."""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from seqmatch_engine.core.seeding import make_generator
from seqmatch_engine.maths import native
from seqmatch_engine.maths.models import NormReLUPool

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="no C compiler: the norm block runs in torch ops")


def block_derivatives(shape, which, seed=0):
    """Output, first derivatives and the double backward of NormReLUPool (fp32), seeded.

    `which` names the first derivatives (of "z", "gamma", "beta") the double backward flows
    through, so missing ones reach the kernel as None."""
    g = make_generator(seed, "native")
    b, c, h, w = shape
    z = torch.randn(shape, generator=g).requires_grad_(True)
    gamma = (1 + 0.3 * torch.randn(c, generator=g)).requires_grad_(True)
    beta = (0.2 * torch.randn(c, generator=g)).requires_grad_(True)
    grad = torch.randn(b, c, h // 2, w // 2, generator=g).requires_grad_(True)
    out = NormReLUPool.apply(z, gamma, beta)
    first = dict(zip(("z", "gamma", "beta"), torch.autograd.grad(out, (z, gamma, beta), grad, create_graph=True)))
    outer = {"z": torch.randn(shape, generator=g), "gamma": torch.randn(c, generator=g),
             "beta": torch.randn(c, generator=g)}
    second = torch.autograd.grad([first[k] for k in which], (grad, z, gamma), [outer[k] for k in which])
    return [out, *first.values(), *second]


@needs_compiler
@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 7), (2, 5, 9, 6), (4, 32, 28, 28)])
@pytest.mark.parametrize("which", [("z", "gamma", "beta"), ("z",), ("gamma",), ("gamma", "beta")])
def test_fused_kernels_equal_the_torch_ops(shape, which, monkeypatch):
    assert native.kernels() is not None, native.status()
    fused = block_derivatives(shape, which)
    monkeypatch.setattr(native, "usable", lambda *tensors: False)
    plain = block_derivatives(shape, which)
    for name, a, b in zip(["out", "dz", "dgamma", "dbeta", "g_grad", "g_z", "g_gamma"], fused, plain):
        assert (a - b).abs().max() <= 2e-6 * b.abs().max() + 1e-7, name


@needs_compiler
def test_fused_kernels_give_the_same_bits_on_any_number_of_threads():
    shape = (8, 16, 28, 28)  # above the size from which the kernels use all threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = block_derivatives(shape, ("z", "gamma", "beta"))
        torch.set_num_threads(max(2, threads))
        shared = block_derivatives(shape, ("z", "gamma", "beta"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(alone, shared))


@needs_compiler
def test_the_build_is_cached_per_source_and_compiler(tmp_path):
    first = native.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert first.name.startswith("norm_relu_pool-") and list(tmp_path.iterdir()) == [first]  # no partial files


def test_without_a_compiler_the_block_runs_in_torch_ops(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv(native.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_state", {})
    with pytest.warns(RuntimeWarning, match="torch ops"):
        assert native.kernels() is None
    assert "no-such-cc" in native.status()
    z = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = NormReLUPool.apply(z, torch.ones(3), torch.zeros(3))
    expected = torch.nn.functional.avg_pool2d(torch.relu(torch.nn.functional.group_norm(z, 3)), 2)
    torch.testing.assert_close(out, expected)


def test_missing_compiler_and_failed_build_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(RuntimeError, match="no C compiler found .*install gcc"):
        native.build(tmp_path)
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: out of disk space' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with pytest.raises(RuntimeError, match="failed to build norm_relu_pool.c: cc: out of disk space"):
        native.build(tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # the partial output is removed


def test_the_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    monkeypatch.setattr(native, "_state", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.kernels() is None
    assert native.status() == f"torch ops ({native.DISABLE_VARIABLE}=0)"
