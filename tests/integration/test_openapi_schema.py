"""Schemathesis over the service's own OpenAPI schema, positive and negative, non-streaming."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL, Service, python_tool, start_service

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # A short context keeps every generated request fast; the limits are the service's own.
    config = {
        "server": {"max_n": 2},
        "models": [
            {
                "name": MODEL,
                "options": {"max_model_len": 128, "max_num_seqs": 4, "max_num_batched_tokens": 64},
            }
        ],
    }
    svc = start_service(tmp_path_factory.mktemp("schema"), config)
    yield svc
    svc.stop()


def test_schemathesis_finds_no_server_error_or_schema_violation(small_service: Service) -> None:
    exe = python_tool("schemathesis") or python_tool("st")
    assert exe is not None, "schemathesis is installed by the dev extra"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
        "SCHEMA_TEST_MODEL": MODEL,
    }
    result = subprocess.run(
        [
            exe,
            "run",
            f"{small_service.base_url}/openapi.json",
            "--mode",
            "all",
            "--phases",
            "coverage,fuzzing",
            "--max-examples",
            "60",
            "--request-timeout",
            "60",
            "--generation-deterministic",
            # The schema cannot say which model names exist or how long a prompt may be in
            # tokens, so valid-looking requests may be refused with a 4xx; every other check
            # runs: no 5xx, status codes, content types and bodies conform to the schema.
            "--exclude-checks",
            "positive_data_acceptance",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1200,
        check=False,
    )
    sys.stdout.write(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
    log = small_service.log()
    assert " 500 " not in log
    assert "Traceback" not in log
