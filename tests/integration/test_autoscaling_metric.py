"""The HPA's metric as prometheus-adapter computes it: the adapter rule's query (from the
shipped Kubernetes base), run in a real Prometheus scraping two real service processes under
different loads, agrees with each process's own /performance/latency p95."""

from __future__ import annotations

import bisect
import threading
import time
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.conftest import MODEL, Service, prometheus, start_service

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: vllm_request_duration_seconds's bucket bounds (accounting/metrics.py).
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0]


def adapter_query() -> str:
    """The rule's metricsQuery, its template filled as the adapter fills it for one pod per
    series (here: per scraped instance)."""
    adapter = yaml.safe_load((ROOT / "deploy/kubernetes/base/prometheus-adapter.yaml").read_text())
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == "vllm_request_duration_seconds_p95"
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", "vllm_request_duration_seconds_bucket")
        .replace("<<.LabelMatchers>>", 'job="vllm-service"')
        .replace("<<.GroupBy>>", "instance")
    )


def load(svc: Service, max_tokens: int, n: int) -> None:
    with httpx2.Client(timeout=120) as http:
        for i in range(n):
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Tell me about item {i}."}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            assert http.post(f"{svc.base_url}/v1/chat/completions", json=body).status_code == 200


def bucket(seconds: float) -> int:
    return bisect.bisect_left(BOUNDS, seconds)


def test_the_adapter_p95_matches_each_process(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # One thread each: two services with a thread per core each would share the machine's
    # cores by preemption, and llama.cpp's threads wait for each other by spinning, so one
    # process could stall the other for a minute (measured on 2 cores: a 40-token request
    # took 81-99 s beside the other service's load, 0.5 s alone).
    config = {"models": [{"name": MODEL, "options": {"n_threads": 1}}]}
    fast = start_service(tmp_path / "a", config)
    slow = start_service(tmp_path / "b", config)
    try:
        with prometheus(tmp_path, fast.port, slow.port) as prom:
            up = prom.wait_for('count(up{job="vllm-service"} == 1) == 2')
            assert up
            threads = [
                threading.Thread(target=load, args=(fast, 2, 20)),
                threading.Thread(target=load, args=(slow, 40, 20)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(3)  # a few more scrapes
            got = {
                r["metric"]["instance"]: float(r["value"][1])
                for r in prom.wait_for(adapter_query())
            }
        own = {}
        for svc in (fast, slow):
            report = httpx2.get(f"{svc.base_url}/performance/latency").json()
            own[f"127.0.0.1:{svc.port}"] = report["models"][MODEL]["latency_ms"]["p95"] / 1e3
    finally:
        fast.stop()
        slow.stop()
    assert set(got) == set(own)
    for instance, p95 in own.items():
        # histogram_quantile interpolates inside the bucket that holds the 95th-percentile
        # request; the process interpolates between its two nearest samples, which may sit on
        # either side of a bucket bound: the two land in the same bucket or in neighbours.
        assert abs(bucket(got[instance]) - bucket(p95)) <= 1, (instance, got[instance], p95)
    assert got[f"127.0.0.1:{fast.port}"] < got[f"127.0.0.1:{slow.port}"]
