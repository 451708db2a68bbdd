"""server.metrics_port: /metrics on a port of its own (a NetworkPolicy filters ports, not
paths), without a key there, and nothing else on that port."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.conftest import free_port, start_service

pytestmark = pytest.mark.integration


def test_metrics_have_a_port_of_their_own(tmp_path: Path) -> None:
    metrics_port = free_port()
    svc = start_service(
        tmp_path, {"auth": {"enabled": True}, "server": {"metrics_port": metrics_port}}
    )
    try:
        scrape = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scrape.status_code == 200
        assert "vllm_requests_total" in scrape.text
        assert "vllm_quality_score" in scrape.text
        # On the API port, metrics still need a key.
        assert httpx2.get(f"{svc.base_url}/metrics", timeout=10).status_code == 401
        # The metrics port serves nothing else, with or without a key.
        for path in ("/v1/models", "/admin/cache", "/health", "/metrics/", "/"):
            r = httpx2.get(f"http://127.0.0.1:{metrics_port}{path}", timeout=10)
            assert r.status_code == 404, path
            assert r.json()["error"]["code"] == "not_found"
        chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        post = httpx2.post(f"http://127.0.0.1:{metrics_port}/v1/chat/completions", json=chat)
        assert post.status_code == 404
        # The API port is unchanged: probes open, the rest keyed.
        assert httpx2.get(f"{svc.base_url}/ready", timeout=10).status_code == 200
        assert httpx2.get(f"{svc.base_url}/v1/models", timeout=10).status_code == 401
    finally:
        svc.stop()
    assert svc.process.returncode == 0


def test_the_metrics_port_must_differ_from_the_api_port(tmp_path: Path) -> None:
    from vllm_service.config import ConfigError, load_settings

    config = tmp_path / "c.yaml"
    config.write_text("server: {port: 9000, metrics_port: 9000}\n")
    with pytest.raises(ConfigError, match="metrics_port must differ from port"):
        load_settings(config)
