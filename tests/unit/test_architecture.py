"""The shape of src/: layers that only import downwards, short functions, modules of one idea."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from tests.conftest import python_tool

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "vllm_service"
#: Past this, a module is telling you it holds two ideas (shared/DESIGN.md).
MAX_MODULE_LINES = 400
#: Statements of one function body, from its first statement to its last line.
MAX_FUNCTION_LINES = 60


def test_packages_import_only_from_the_layers_below() -> None:
    lint = python_tool("lint-imports")
    if lint is None:
        pytest.fail("import-linter is not installed beside this interpreter (the dev extra)")
    run = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_module_is_over_the_size_limit() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_body_is_over_the_length_limit() -> None:
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.body[0].lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(SRC)}:{node.lineno} {node.name}"] = length
    assert long == {}
