"""Shared fixtures: a session-wide home for preset runs (so cpu-demo experts are trained once)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A SEQMATCH_HOME shared by the slow end-to-end and browser tests ($SEQMATCH_TEST_HOME to keep one)."""
    kept = os.environ.get("SEQMATCH_TEST_HOME")
    return Path(kept) if kept else tmp_path_factory.mktemp("demo-home")


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    """Where browser tests save screenshots: $SEQMATCH_SCREENSHOTS if set, else a temporary folder."""
    folder = Path(os.environ.get("SEQMATCH_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny tensors gain nothing from a second thread and lose a lot when the machine is busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """Nothing a test does may land in the current folder or the user's data root."""
    monkeypatch.setenv("SEQMATCH_HOME", str(tmp_path / "env-home"))
    monkeypatch.setenv("SEQMATCH_DATA_ROOT", str(tmp_path / "data-root"))
