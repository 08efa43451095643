"""The house rules of the package, checked: small functions, modules of one subject, no import side effects."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ofm_tiling"
MAX_FUNCTION_CODE_LINES = 60
MAX_MODULE_LINES = 400


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def _code_lines(source: list[str], start: int, end: int, docs: set[int]) -> int:
    """Lines of code from `start` to `end`: not blank, not a comment, not a docstring."""
    return sum(1 for i in range(start, end + 1)
               if i not in docs and source[i - 1].strip() and not source[i - 1].strip().startswith("#"))


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        yield path.relative_to(PACKAGE.parent), text.splitlines(), ast.parse(text)


def test_no_function_is_longer_than_sixty_lines_of_code():
    long = []
    for name, source, tree in _modules():
        docs = _docstring_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(source, node.lineno, node.end_lineno, docs)
                if n > MAX_FUNCTION_CODE_LINES:
                    long.append(f"{name}:{node.lineno} {node.name} ({n} lines of code)")
    assert not long, long


def test_a_module_over_four_hundred_lines_says_why_at_its_top():
    unexplained = [str(name) for name, source, tree in _modules()
                   if len(source) > MAX_MODULE_LINES and "Over 400 lines" not in (ast.get_docstring(tree) or "")]
    assert not unexplained, unexplained


def test_importing_the_package_changes_nothing_outside_it():
    """No side effects at import: Pillow's decompression-bomb guard stays on, no heavy imports for --help."""
    code = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; import ofm_tiling, ofm_tiling.cli, "
            "ofm_tiling.stitch, ofm_tiling.collect, ofm_tiling.imageio, ofm_tiling.pyramid; "
            "assert Image.MAX_IMAGE_PIXELS == before, Image.MAX_IMAGE_PIXELS; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


def test_every_subpackage_ships_in_the_wheel():
    """pyproject.toml lists the packages explicitly: a subpackage missing there works from the source
    tree but not once installed (CI's console-script tests caught exactly that)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
