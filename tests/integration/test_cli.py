"""The command a user runs, exactly as README says."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx2
import pytest

from tests.conftest import service_command, start_service

pytestmark = pytest.mark.integration


def test_serve_with_no_options_answers_ready(tmp_path: Path) -> None:
    svc = start_service(tmp_path)  # `vllm-service serve --port N`: the bundled model
    try:
        ready = httpx2.get(f"{svc.base_url}/ready", timeout=10)
        assert ready.status_code == 200
        assert ready.json()["models"] == ["smollm2-135m-instruct"]
        health = httpx2.get(f"{svc.base_url}/health", timeout=10).json()
        assert health["device"] == "cpu"
    finally:
        svc.stop()
    # SIGTERM shuts it down cleanly (uvicorn re-raises the signal once it has finished),
    # not through the fixture's SIGKILL fallback.
    assert svc.process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in svc.log()
    assert "Traceback" not in svc.log()


def test_version_and_help() -> None:
    version = subprocess.run(
        [*service_command(), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("vllm-service ")
    help_text = subprocess.run(
        [*service_command(), "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--config", "--host", "--port", "--model"):
        assert option in help_text


def test_invalid_config_fails_at_start_with_the_key_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n  - name: m\n    options:\n      max_num_seqs: 0\n")
    result = subprocess.run(
        [*service_command(), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "models.0.options.max_num_seqs" in result.stderr


def test_missing_model_file_fails_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [*service_command(), "serve", "--model", str(tmp_path / "nope.gguf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "model file not found" in result.stderr
