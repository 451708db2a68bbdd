"""/metrics, /performance/latency and request ids, against a service with known traffic."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL, Service, prometheus, start_service

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))
ALERTS = ROOT / "deploy/prometheus/alerts.yml"


def dashboard_queries() -> list[str]:
    return [
        target["expr"]
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]


def alert_queries() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def exported_names(service: Service) -> set[str]:
    """Every series name /metrics can carry, whether or not it has samples yet."""
    text = httpx2.get(f"{service.base_url}/metrics", timeout=10).text
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
        }.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service of its own, so every request it counts is one these tests sent."""
    config = {
        "models": [{"name": MODEL, "options": {"max_model_len": 512, "max_num_seqs": 4}}],
        "cache": {"enabled": True},
    }
    svc = start_service(tmp_path_factory.mktemp("observed"), config)
    yield svc
    svc.stop()


def scrape(service: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx2.get(f"{service.base_url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def chat_body(**fields: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 6,
        "temperature": 0,
        **fields,
    }


def test_metrics_count_a_known_sequence_of_requests(observed: Service) -> None:
    base = observed.base_url
    httpx2.delete(f"{base}/admin/cache", timeout=10)
    before = scrape(observed)
    usages = []
    with httpx2.Client(base_url=base, timeout=60) as http:
        # A miss, then the same request twice more: two cache hits (one of them streamed).
        for _ in range(2):
            r = http.post(CHAT, json=chat_body())
            assert r.status_code == 200
            usages.append(r.json()["usage"])
        r = http.post(CHAT, json=chat_body(stream=True, stream_options={"include_usage": True}))
        assert r.status_code == 200
        assert r.headers["x-cache"] == "hit"
        # The usage chunk is the one before [DONE].
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        usages.append(json.loads(events[-2])["usage"])
        # Sampled without a seed: not cacheable, generated.
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "Once", "max_tokens": 5})
        assert r.status_code == 200
        assert r.headers["x-cache"] == "bypass"
        usages.append(r.json()["usage"])
        assert http.post(CHAT, json=chat_body(messages=[])).status_code == 400
        assert http.post(CHAT, json=chat_body(model="no-such-model")).status_code == 404
    after = scrape(observed)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    generated, cached = [usages[0], usages[3]], [usages[1], usages[2]]
    ok_chat = {"model": MODEL, "route": CHAT, "status": "200"}
    assert delta("vllm_requests_total", **ok_chat) == 3
    assert delta("vllm_request_duration_seconds_count", **ok_chat) == 3
    assert delta("vllm_requests_total", model=MODEL, route="/v1/completions", status="200") == 1
    # Rejected before a model was chosen: counted, with model "none".
    assert delta("vllm_requests_total", model="none", route=CHAT, status="400") == 1
    assert delta("vllm_requests_total", model="none", route=CHAT, status="404") == 1
    completion = sum(u["completion_tokens"] for u in generated)
    assert delta("vllm_tokens_generated_total", model=MODEL) == completion
    from_cache = sum(u["completion_tokens"] for u in cached)
    assert delta("vllm_cache_completion_tokens_total", model=MODEL) == from_cache
    assert delta("vllm_prompt_tokens_total", model=MODEL) == sum(u["prompt_tokens"] for u in usages)
    assert delta("vllm_cache_lookups_total", model=MODEL, outcome="miss") == 1
    assert delta("vllm_cache_lookups_total", model=MODEL, outcome="hit") == 2
    assert delta("vllm_cache_lookups_total", model=MODEL, outcome="bypass") == 1
    assert delta("vllm_cache_stores_total") == 1
    assert value(after, "vllm_cache_entries") == 1
    assert value(after, "vllm_cache_up") == 1
    # Only the two generated requests ran on the device and waited in its queue.
    assert delta("vllm_device_requests_total", device="cpu") == 2
    assert delta("vllm_time_to_first_token_seconds_count", model=MODEL) == 4
    assert delta("vllm_request_queue_time_seconds_count", model=MODEL) == 2
    # One inter-token gap per generated output token after the first.
    gaps = sum(u["completion_tokens"] - 1 for u in generated)
    assert delta("vllm_inter_token_latency_seconds_count", model=MODEL) == gaps
    # The engine's own state is exported at scrape time, and its deployment's breaker.
    assert value(after, "vllm_engine_up", model=MODEL) == 1
    assert value(after, "vllm_num_requests_running", model=MODEL) == 0
    assert value(after, "vllm_kv_cache_cells_total", model=MODEL) == 512 * 4
    assert value(after, "vllm_requests_in_flight", route=CHAT) == 0
    assert value(after, "vllm_circuit_breaker_state", deployment=MODEL) == 0
    assert delta("vllm_upstream_attempts_total", deployment=MODEL, outcome="success") == 2
    # Every answered token, cached or not, is priced at the hosted API's list price.
    hosted = sum(u["prompt_tokens"] * 0.15 + u["completion_tokens"] * 0.60 for u in usages) / 1e6
    assert delta("vllm_hosted_equivalent_cost_usd_total", model=MODEL) == pytest.approx(hosted)
    assert value(after, "vllm_hardware_cost_usd_per_hour") == 0
    assert value(after, "vllm_cost_savings_usd") >= hosted


def test_request_id_is_echoed_or_made(observed: Service) -> None:
    with httpx2.Client(base_url=observed.base_url, timeout=60) as http:
        given = http.post(CHAT, json=chat_body(), headers={"X-Request-ID": "trace-42"})
        made = http.post(CHAT, json=chat_body())
        bad = http.post(CHAT, json=chat_body(), headers={"X-Request-ID": "no spaces allowed"})
    assert given.headers["x-request-id"] == "trace-42"
    assert len(made.headers["x-request-id"]) == 32
    assert bad.headers["x-request-id"] != "no spaces allowed"
    log = observed.log()
    assert '"request_id": "trace-42"' in log
    # Prompts are never logged.
    assert "Say hello." not in log


def test_latency_endpoint_agrees_with_the_client(observed: Service) -> None:
    measured = []
    with httpx2.Client(base_url=observed.base_url, timeout=60) as http:
        http.post(CHAT, json=chat_body(model=MODEL, max_tokens=1))
        for i in range(12):
            body = chat_body(
                max_tokens=4 + i % 5, messages=[{"role": "user", "content": f"Hi {i}"}]
            )
            started = time.perf_counter()
            assert http.post(CHAT, json=body).status_code == 200
            measured.append(time.perf_counter() - started)
        report = http.get("/performance/latency").json()
    stats = report["models"][MODEL]
    assert report["window_seconds"] == 300
    assert stats["count"] >= 12
    client_p50 = statistics.median(measured) * 1e3
    server_p50 = stats["latency_ms"]["p50"]
    # The server's clock starts after the client's and stops before it: never more, and the
    # difference is loopback HTTP overhead (bounded relative to the request, not by a clock;
    # on a loaded machine the client's side of it can take as long as a short request).
    assert server_p50 <= client_p50 * 1.05
    assert server_p50 >= client_p50 * 0.25
    assert stats["latency_ms"]["p50"] <= stats["latency_ms"]["p90"] <= stats["latency_ms"]["p99"]
    # The budget burns at the rate the SLO allows when exactly 1 - slo of requests miss.
    missed = 1.0 - stats["latency_target_met"]
    assert stats["error_budget_burn"] == pytest.approx(missed / (1.0 - report["slo"]))


def test_dashboards_and_alerts_name_only_exported_metrics(observed: Service) -> None:
    exported = exported_names(observed)
    queries = dashboard_queries() + alert_queries()
    assert len(DASHBOARDS) == 4
    assert len(queries) > 20
    for query in queries:
        for name in re.findall(r"\bvllm_[a-z_]+\b", query):
            assert name in exported, f"{name} (in {query!r}) is not exported"


def test_prometheus_scrapes_the_service(observed: Service, tmp_path: Path) -> None:
    """A real Prometheus server scrapes /metrics; PromQL returns the count we sent."""
    with httpx2.Client(base_url=observed.base_url, timeout=60) as http:
        before = value(
            scrape(observed),
            "vllm_requests_total",
            model=MODEL,
            route="/v1/completions",
            status="200",
        )
        for _ in range(3):
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": "A", "max_tokens": 2})
            assert r.status_code == 200
    query = f'sum(vllm_requests_total{{route="/v1/completions",status="200",model="{MODEL}"}})'
    with prometheus(tmp_path, observed.port) as prom:
        result = prom.wait_for(query)
        assert float(result[0]["value"][1]) == before + 3
        # Every dashboard and alert query parses and runs in a real Prometheus.
        for q in dashboard_queries() + alert_queries():
            assert prom.query(q)["status"] == "success", q


def test_observability_can_be_switched_off_to_measure_its_cost() -> None:
    from fastapi.testclient import TestClient

    from vllm_service.api.app import create_app
    from vllm_service.config import load_settings

    settings = load_settings(
        None,
        observability={"enabled": False},
        models=[{"name": MODEL, "options": {"max_model_len": 256, "max_num_seqs": 1}}],
    )
    with TestClient(create_app(settings)) as client:
        while client.get("/ready").status_code != 200:
            time.sleep(0.1)
        r = client.post(CHAT, json=chat_body())
        assert r.status_code == 200
        assert "x-request-id" not in r.headers
        metrics = client.get("/metrics").text
    assert "vllm_requests_total{" not in metrics
    assert f'vllm_engine_up{{model="{MODEL}"}} 1.0' in metrics
