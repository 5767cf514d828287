"""scripts/install.sh: the README's two commands, in either order, any number of times, leave one venv in
which both the app's and the tests' requirements import, and never install anything twice."""
from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from seqmatch_engine.core.paths import REPO_DIR


def make_wheel(folder: Path, name: str) -> None:
    """A minimal pure-Python wheel `name`-1.0 holding a module of that name."""
    files = {f"{name}/__init__.py": f"WHO = {name!r}\n",
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{name}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            "Tag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    files[f"{name}-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for name in ("appdep", "clusterdep", "testdep"):
        make_wheel(folder, name)
    return folder


def scratch_project(root: Path) -> Path:
    """The install script with requirement files of the same shape as ours, naming the tiny wheels."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO_DIR / "scripts" / "install.sh", root / "scripts" / "install.sh")
    (root / "requirements.txt").write_text("appdep\n")
    (root / "requirements-cluster.txt").write_text("clusterdep\n")
    (root / "requirements-dev.txt").write_text("-r requirements.txt\n-r requirements-cluster.txt\ntestdep\n")
    return root


def install(root: Path, wheels: Path, *args: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "PIP_ARGS": f"--no-index --find-links {wheels}", "HOME": str(root)}
    proc = subprocess.run(["bash", "scripts/install.sh", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("order", [("", "--dev"), ("--dev", "")])
def test_the_two_install_commands_in_either_order_keep_both_working(tmp_path, wheels, order):
    root = scratch_project(tmp_path / "project")
    first = install(root, wheels, *filter(None, [order[0]]))
    second = install(root, wheels, *filter(None, [order[1]]))
    assert "creating .venv" in first and "creating .venv" not in second
    if order[0] == "--dev":  # the app's requirements came with the test tools: nothing more to install
        assert "installing" not in second
    for again in ("", "--dev"):
        assert "installing" not in install(root, wheels, *filter(None, [again]))  # nothing twice
    check = subprocess.run([str(root / ".venv" / "bin" / "python"), "-c",
                            "import appdep, clusterdep, testdep; print(appdep.WHO, testdep.WHO)"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == "appdep testdep", check.stderr
