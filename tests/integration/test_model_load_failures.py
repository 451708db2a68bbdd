"""A model that cannot load is never silent: the reason is logged and on /health, and `serve`
exits non-zero when nothing at all can be served. llama.cpp logs without a Python callback."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.conftest import MODEL, free_port, service_command
from vllm_service.engine.llamacpp.model_files import bundled_model_path

pytestmark = pytest.mark.integration


def corrupt_gguf(path: Path) -> Path:
    """The GGUF magic, then bytes that are no GGUF header."""
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    return path


def serve_until_exit(tmp_path: Path, models: list[dict[str, object]]) -> tuple[int, str]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    argv = [*service_command(), "serve", "--port", str(free_port()), "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_SERVICE_")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    return done.returncode, done.stdout + done.stderr


def mapped_file(address: int) -> str:
    """The file mapped at ``address`` in this process ("" for anonymous memory, where
    ctypes puts the machine code of a Python callback)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5].strip() if len(fields) == 6 and "/" in fields[5] else ""
    return ""


def test_llama_cpp_logs_without_a_python_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    from vllm_service.engine.llamacpp import model
    from vllm_service.engine.llamacpp.native_log import log_callback_address

    # Importing llama_cpp installs a Python callback, which C would call from any thread.
    llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, None)
    assert mapped_file(log_callback_address()) == ""
    monkeypatch.setattr(model, "_backend_ready", False)
    model.ensure_backend()
    # The engine's backend setup replaces it by llama.cpp's own C default (in ggml).
    native = Path(mapped_file(log_callback_address())).name
    assert native.startswith(("libllama", "libggml")), native


def test_an_unloadable_only_model_exits_non_zero_with_llama_cpps_reason(tmp_path: Path) -> None:
    bad = corrupt_gguf(tmp_path / "bad.gguf")
    code, output = serve_until_exit(tmp_path, [{"name": "m", "options": {"model": str(bad)}}])
    assert code == 1, output
    assert "no model could be loaded" in output
    assert "failed to read header" in output  # llama.cpp's own words, not a silent death


def test_a_kv_cache_larger_than_memory_is_refused_before_allocation(tmp_path: Path) -> None:
    options = {"max_model_len": 4_194_304, "max_num_seqs": 256}
    code, output = serve_until_exit(tmp_path, [{"name": "m", "options": options}])
    assert code == 1, output
    assert "KV cache" in output
    assert "GiB of memory available" in output


def test_one_unloadable_model_of_two_is_reported_and_the_other_serves(tmp_path: Path) -> None:
    bad = corrupt_gguf(tmp_path / "bad.gguf")
    good = {"model": str(bundled_model_path()), "max_model_len": 256, "max_num_seqs": 2}
    config = {
        "models": [
            {"name": MODEL, "options": good},
            {"name": "broken", "options": {"model": str(bad)}},
        ]
    }
    port = free_port()
    argv = [*service_command(), "serve", "--port", str(port)]
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"cache": {"enabled": False}, **config}))
    log = (tmp_path / "service.log").open("wb")
    process = subprocess.Popen([*argv, "--config", str(config_path)], stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        health = None
        for _ in range(600):
            try:
                health = httpx2.get(f"{url}/health", timeout=5)
            except httpx2.TransportError:
                health = None
            if health is not None and health.json()["engines"]["broken"]["state"] == "failed":
                break
            assert process.poll() is None, (tmp_path / "service.log").read_text()
            time.sleep(0.2)
        assert health is not None
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "failed"
        assert "failed to read header" in body["error"]
        reply = httpx2.post(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert reply.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "failed to read header" in (tmp_path / "service.log").read_text()
