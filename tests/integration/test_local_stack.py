"""The monitoring stack without containers (deploy/local/stack.py): Redis, PostgreSQL,
Prometheus with the shipped rules, Alertmanager, and the service wired to them; and the compose
stack's own configs, checked by the tools that will read them (promtool, amtool)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.conftest import MODEL, free_port, system_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy/local/stack.py"


def stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STACK), *args], capture_output=True, text=True, timeout=600
    )


def query(url: str, promql: str) -> list[dict[str, Any]]:
    body = httpx2.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_the_stack_comes_up_monitored_and_goes_down(tmp_path: Path) -> None:
    for name, package in (("redis-server", "redis-server"), ("prometheus", "prometheus"),
                          ("prometheus-alertmanager", "prometheus-alertmanager")):  # fmt: skip
        system_binary(name, package)
    # PostgreSQL runs as its own user (as root): the folder must be one it can reach.
    base = Path(tempfile.mkdtemp(prefix="vllm-stack-", dir="/tmp"))
    base.chmod(0o755)
    work = base / "stack"
    port = free_port()
    started = stack("up", "--dir", str(work), "--port", str(port))
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        lines = dict(line.split(None, 1) for line in started.stdout.splitlines()[:3])
        prometheus, alertmanager = lines["prometheus"], lines["alertmanager"]
        base = f"http://127.0.0.1:{port}"
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        assert httpx2.post(f"{base}/v1/chat/completions", json=chat, timeout=60).status_code == 200
        health = httpx2.get(f"{base}/health", timeout=10).json()
        assert health["cache"]["backend"] == "redis"
        # The request reached the PostgreSQL ledger.
        deadline = time.monotonic() + 30
        while httpx2.get(f"{base}/cost-comparison").json()["overall"]["requests"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # Prometheus scrapes the service and holds the shipped rules.
        deadline = time.monotonic() + 60
        series = []
        while not series:
            assert time.monotonic() < deadline
            time.sleep(1)
            series = query(prometheus, f'vllm_requests_total{{model="{MODEL}",status="200"}}')
        rules = httpx2.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        names = {r["name"] for g in rules for r in g["rules"]}
        shipped = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
        assert names == {r["alert"] for g in shipped for r in g["rules"]}
        managers = httpx2.get(f"{prometheus}/api/v1/alertmanagers", timeout=5).json()
        assert managers["data"]["activeAlertmanagers"]
        assert httpx2.get(f"{alertmanager}/-/ready", timeout=5).status_code == 200
    finally:
        stopped = stack("down", "--dir", str(work))
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2)
    shutil.rmtree(base, ignore_errors=True)


def test_the_compose_stacks_configs_pass_their_tools(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    assert set(compose["services"]) == {
        "vllm-service", "redis", "postgres", "prometheus", "alertmanager", "jaeger", "grafana",
    }  # fmt: skip
    service = compose["services"]["vllm-service"]
    assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert service["read_only"] is True
    assert service["user"] == "10001:10001"
    for name, spec in compose["services"].items():
        image = spec.get("image", "")
        assert ":" in image, name
        assert not image.endswith(":latest"), name
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / "deploy/compose" / source).exists(), (name, source)
    # Prometheus's config, with its mounted rule file where the container would see it.
    config = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    shutil.copy(ROOT / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    promtool = system_binary("promtool", "prometheus")
    checked = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    amtool = system_binary("amtool", "prometheus-alertmanager")
    checked = subprocess.run(
        [amtool, "check-config", str(ROOT / "deploy/compose/alertmanager.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Severity routing: critical to the pager, warning to the chat.
    routes = yaml.safe_load((ROOT / "deploy/compose/alertmanager.yml").read_text())["route"]
    by_match = {r["matchers"][0]: r["receiver"] for r in routes["routes"]}
    assert by_match['severity="critical"'] == "pager"
    assert by_match['severity="warning"'] == "chat"
