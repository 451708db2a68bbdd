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


ADMIN_KEY = "vs-schemathesis-admin-key-000000000000000000000"


def small_config() -> dict[str, object]:
    return {
        "server": {"max_n": 2},
        "models": [
            {
                "name": MODEL,
                "options": {"max_model_len": 128, "max_num_seqs": 4, "max_num_batched_tokens": 64},
            }
        ],
    }


@pytest.fixture(scope="module")
def small_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # A short context keeps every generated request fast; the limits are the service's own.
    svc = start_service(tmp_path_factory.mktemp("schema"), small_config())
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The same with auth on, and an admin key (every route reachable) from the environment."""
    os.environ["SCHEMA_ADMIN_KEY"] = ADMIN_KEY
    static = [{"name": "schema", "role": "admin", "key_env": "SCHEMA_ADMIN_KEY"}]
    config = {**small_config(), "auth": {"enabled": True, "static_keys": static}}
    svc = start_service(tmp_path_factory.mktemp("schema-auth"), config)
    yield svc
    svc.stop()


def test_schemathesis_finds_no_server_error_or_schema_violation(small_service: Service) -> None:
    run_schemathesis(small_service, [])


def test_schemathesis_with_a_key_finds_none_either(keyed_service: Service) -> None:
    run_schemathesis(keyed_service, ["--header", f"Authorization: Bearer {ADMIN_KEY}"])


def run_schemathesis(service: Service, extra: list[str]) -> None:
    small_service = service
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
            *extra,
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
