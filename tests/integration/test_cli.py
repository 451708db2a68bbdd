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
    # SIGTERM shuts it down cleanly, with status 0, not through the fixture's SIGKILL fallback.
    assert svc.process.returncode == 0
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


def test_sigterm_drains_then_finishes_every_stream_and_exits_0(tmp_path: Path) -> None:
    """Readiness turns 503 first; 8 streams in flight all complete; then exit status 0."""
    import asyncio

    from tests.conftest import MODEL, start_service

    config = {
        "server": {"drain_delay": 1.0, "shutdown_grace": 60},
        "models": [{"name": MODEL, "options": {"max_model_len": 512, "max_num_seqs": 8}}],
    }
    svc = start_service(tmp_path, config)

    async def main() -> list[int]:
        client = svc.async_client()

        async def one(i: int) -> int:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Tell story number {i}."}],
                max_tokens=48,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            tokens = 0
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return tokens

        tasks = [asyncio.create_task(one(i)) for i in range(8)]
        await svc.until_running(8)
        svc.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with httpx2.AsyncClient(base_url=svc.base_url) as http:
            ready = await http.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["status"] == "draining"
        return list(await asyncio.gather(*tasks))

    try:
        tokens = asyncio.run(main())
        assert tokens == [48] * 8
        assert svc.process.wait(timeout=60) == 0
    finally:
        svc.stop()
