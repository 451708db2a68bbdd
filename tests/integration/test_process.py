"""The managed engine process, supervising a real second vllm-service."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.conftest import MODEL, Service, service_command, start_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("supervised")
    child_config = tmp / "child.yaml"
    child_config.write_text(
        yaml.safe_dump(
            {"models": [{"name": MODEL, "options": {"max_model_len": 512, "max_num_seqs": 2}}]}
        )
    )
    config = {
        "models": [
            {
                "name": "managed",
                "engine": "process",
                "options": {
                    "kind": "command",
                    "command": [
                        *service_command(),
                        "serve",
                        "--port",
                        "{port}",
                        "--config",
                        str(child_config),
                    ],
                    "served_model": MODEL,
                    "health_path": "/ready",
                    "restart_backoff": 0.2,
                    "stop_grace": 10,
                },
            }
        ]
    }
    svc = start_service(tmp_path_factory.mktemp("supervisor"), config)
    yield svc
    svc.stop()


def managed(svc: Service) -> dict[str, object]:
    engines: dict[str, dict[str, object]] = httpx2.get(f"{svc.base_url}/health").json()["engines"]
    return engines["managed"]


def ask(svc: Service) -> httpx2.Response:
    return httpx2.post(
        f"{svc.base_url}/v1/chat/completions",
        json={
            "model": "managed",
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 4,
            "temperature": 0,
        },
        timeout=60,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_serves_through_the_managed_process(supervisor: Service) -> None:
    r = ask(supervisor)
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] > 0
    assert int(str(managed(supervisor)["pid"])) > 0


def test_a_dead_process_is_restarted(supervisor: Service) -> None:
    first = int(str(managed(supervisor)["pid"]))
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        info = managed(supervisor)
        if info["restarts"] == 1 and info["state"] == "ready":
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    assert int(str(info["pid"])) not in (0, first)
    assert info["last_exit"] == -signal.SIGKILL
    assert ask(supervisor).status_code == 200


def test_stopping_the_service_stops_the_process(
    tmp_path_factory: pytest.TempPathFactory, supervisor: Service
) -> None:
    pid = int(str(managed(supervisor)["pid"]))
    assert alive(pid)
    supervisor.stop()
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, "the managed process outlived the service"
        time.sleep(0.1)
