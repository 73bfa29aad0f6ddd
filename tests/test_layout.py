"""The layers of the README's map, as import-linter checks them (pyproject.toml's [tool.importlinter]): the package
keeps its contracts, and a copy given one upward import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter run on the synthkit package under `root`, with that root's pyproject.toml."""
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": ""},
        capture_output=True,
        text=True,
    )


def test_the_package_keeps_its_layer_contracts():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """Mutation: the ground rules (core) import the command line."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "synthkit", copy / "synthkit", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    errors = copy / "synthkit" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _upward():\n    from ..cli import app\n\n    return app\n")
    result = lint_imports(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "synthkit.core.errors -> synthkit.cli" in result.stdout
    assert "the pipeline's stages import only the stages below them BROKEN" in result.stdout
