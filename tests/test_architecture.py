"""The engine's layers (.importlinter): checked with import-linter, as CI does."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from seqmatch_engine.core import paths

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, str(config), "--no-cache"], cwd=paths.REPO_DIR,
                          capture_output=True, text=True)


def test_the_layer_contracts_hold():
    result = lint(paths.REPO_DIR / ".importlinter")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_layer_importing_one_above_it_breaks_the_contract(tmp_path):
    """The checker sees the real graph: with the layers listed upside down, the contract breaks and names an
    import that goes the wrong way (the driver's import of the run folder)."""
    text = (paths.REPO_DIR / ".importlinter").read_text()
    flipped = text.replace("    seqmatch_engine.orchestration\n    seqmatch_engine.methods | seqmatch_engine.diagnostics"
                           " | seqmatch_engine.storage\n",
                           "    seqmatch_engine.methods | seqmatch_engine.diagnostics | seqmatch_engine.storage\n"
                           "    seqmatch_engine.orchestration\n")
    assert flipped != text
    (tmp_path / "contracts.ini").write_text(flipped)
    result = lint(tmp_path / "contracts.ini")
    assert result.returncode == 1
    said = " ".join(result.stdout.split())  # the report wraps its lines
    assert "seqmatch_engine.orchestration is not allowed to import seqmatch_engine.storage" in said, said[-3000:]
    assert "seqmatch_engine.orchestration.driver -> seqmatch_engine.storage.runs" in said


def test_every_module_sits_in_a_layer():
    """No module left at the package's top besides its entry point: each belongs to a layer's folder."""
    top = sorted(p.name for p in paths.PACKAGE_DIR.glob("*.py"))
    assert top == ["__init__.py", "__main__.py"], top
    layers = {p.name for p in paths.PACKAGE_DIR.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert layers == {"core", "data", "maths", "methods", "diagnostics", "storage", "orchestration", "interfaces"}
    text = (paths.REPO_DIR / ".importlinter").read_text()
    assert all(f"seqmatch_engine.{layer}" in text for layer in layers)
