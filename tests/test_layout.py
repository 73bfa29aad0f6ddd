"""The layers of the README's map, as import-linter checks them (pyproject.toml's [tool.importlinter]): the package
keeps its contracts, and a copy given one upward import breaks them."""

from __future__ import annotations

import ast
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


SCREEN = 60  # a function's statements, after its signature and docstring: about one screen


def long_functions(package: Path) -> list[str]:
    """Every function whose body runs past a screen, unless its docstring gives the reason ("Long because ...").
    A signature is not counted: a command's options, one per line, are declarations, not steps to follow."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node) or ""
            body = node.body[1:] if doc and len(node.body) > 1 else node.body
            length = node.end_lineno - body[0].lineno + 1
            if length > SCREEN and "Long because" not in doc:
                found.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_runs_past_a_screen():
    assert long_functions(ROOT / "synthkit") == []


def test_a_long_function_is_found(tmp_path):
    """Mutation: a function of 61 statements, then the same function with its reason given."""
    (tmp_path / "pkg").mkdir()
    steps = "".join(f"    x{i} = {i}\n" for i in range(SCREEN + 1))
    (tmp_path / "pkg" / "m.py").write_text(f'def f():\n    """Adds."""\n{steps}')
    assert long_functions(tmp_path / "pkg") == [f"pkg/m.py:1 f ({SCREEN + 1} lines)"]
    (tmp_path / "pkg" / "m.py").write_text(f'def f():\n    """Adds. Long because it is a table."""\n{steps}')
    assert long_functions(tmp_path / "pkg") == []
