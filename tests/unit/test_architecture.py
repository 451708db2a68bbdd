"""The shape of src/: layers that only import downwards, short functions, modules of one idea."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import python_tool

ROOT = Path(__file__).resolve().parents[2]


def test_packages_import_only_from_the_layers_below() -> None:
    lint = python_tool("lint-imports")
    if lint is None:
        pytest.fail("import-linter is not installed beside this interpreter (the dev extra)")
    run = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout
