"""The live shadow quality gate against real services: a second service on the bundled model
as the reference, a degraded upstream (a real HTTP server in this process answering garbage)
driving the gate open, Prometheus evaluating the alert, routing to the fallback and back."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import (
    MODEL,
    SUBJECTS,
    Service,
    dead_url,
    free_port,
    prometheus,
    serve_in_thread,
    start_service,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GARBAGE = "zx qv blorp " * 6


def chat(model: str, subject: str, **fields: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Write one sentence about {subject}."}],
        "max_tokens": 16,
        "temperature": 0,
        **fields,
    }


def prompts(n: int) -> list[str]:
    return [f"{SUBJECTS[i % len(SUBJECTS)]} (note {i})" for i in range(n)]


def quality(svc: Service) -> dict[str, Any]:
    body: dict[str, Any] = httpx2.get(f"{svc.base_url}/quality", timeout=10).json()
    return body


def wait_shadowed(svc: Service, model: str, total: int, timeout: float = 120) -> dict[str, Any]:
    """/quality once every one of ``total`` answers has a shadow outcome."""
    deadline = time.monotonic() + timeout
    while True:
        body = quality(svc)
        if sum(body["shadow"].get(model, {}).values()) >= total:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def test_shadow_scores_a_sampled_share_without_changing_the_answers(tmp_path: Path) -> None:
    (tmp_path / "reference").mkdir()
    (tmp_path / "main").mkdir()
    reference = start_service(tmp_path / "reference", {})
    try:
        config = {
            "models": [
                {"name": MODEL},
                {"name": "reference",
                 "options": {"base_url": f"{reference.base_url}/v1", "model": MODEL}},
            ],
            "quality": {"shadow": {
                "enabled": True, "reference_model": "reference", "sample_rate": 0.5,
                "max_per_second": 100, "max_pending": 100, "concurrency": 2,
            }},
        }  # fmt: skip
        main = start_service(tmp_path / "main", config)
        try:
            n = 40
            with httpx2.Client(timeout=120) as http:
                for subject in prompts(n):
                    body = chat(MODEL, subject)
                    ours = http.post(f"{main.base_url}/v1/chat/completions", json=body)
                    plain = http.post(f"{reference.base_url}/v1/chat/completions", json=body)
                    assert ours.status_code == plain.status_code == 200
                    a, b = ours.json(), plain.json()
                    # Shadowing on (main) or off (reference): the same greedy answer.
                    assert a["choices"][0]["message"] == b["choices"][0]["message"]
                    assert a["choices"][0]["finish_reason"] == b["choices"][0]["finish_reason"]
                    # (cached_tokens is left out: it depends on each engine's prefix cache
                    # history, and the reference also answers the shadow's calls.)
                    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                        assert a["usage"][key] == b["usage"][key]
            body = wait_shadowed(main, MODEL, n)
            costs = wait_ledgered(main, body["shadow"][MODEL].get("scored", 0))
        finally:
            main.stop()
    finally:
        reference.stop()
    outcomes = body["shadow"][MODEL]
    scored = outcomes.get("scored", 0)
    assert scored + outcomes.get("sampled_out", 0) == n, outcomes
    # Binomial(40, 0.5): within four standard deviations of 20.
    assert abs(scored - n * 0.5) <= 4 * math.sqrt(n * 0.25), outcomes
    overall = body["models"][MODEL]["classes"]["all"]["overall"]
    assert overall["n"] == scored
    # The same model, greedy: the local answers equal the reference's.
    assert overall["mean"] == pytest.approx(1.0)
    assert body["shadow_tokens"][MODEL]["reference_completion"] > 0
    assert "reference" not in body["models"]  # the reference itself is not scored
    # The ledger keeps the shadow's calls apart: traffic is the 40 requests clients sent.
    assert costs["models"][MODEL]["requests"] == n
    assert "reference" not in costs["models"]
    assert costs["overall"]["requests"] == n
    assert costs["shadow_calls"]["reference"]["requests"] == scored
    assert costs["shadow_calls"]["reference"]["completion_tokens"] > 0


def wait_ledgered(svc: Service, shadow_calls: int, timeout: float = 30) -> dict[str, Any]:
    """/cost-comparison once the ledger holds the shadow's calls."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = httpx2.get(f"{svc.base_url}/cost-comparison", timeout=10).json()
        got = body.get("shadow_calls", {}).get("reference", {}).get("requests", 0)
        if got >= shadow_calls:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


class Degradable:
    """An OpenAI-compatible upstream that answers garbage, or passes requests on to a real
    service (as the model ``target_model`` there) when healthy."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "garbage"
        self.target = ""
        self.target_model = "ref"

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        if self.mode == "garbage":
            return StreamingResponse(self._garbage(), media_type="text/event-stream")
        body["model"] = self.target_model
        client = httpx2.AsyncClient(timeout=60)
        upstream = await client.send(
            client.build_request("POST", f"{self.target}/v1/chat/completions", json=body),
            stream=True,
        )

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code,
                                 media_type="text/event-stream")  # fmt: skip

    @staticmethod
    async def _garbage() -> AsyncIterator[str]:
        chunk = {"choices": [{"index": 0, "delta": {"content": GARBAGE}, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n"
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(end)}\n\n"
        usage = {"prompt_tokens": 10, "completion_tokens": 18, "total_tokens": 28}
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"


@pytest.fixture
def degradable() -> Iterator[Degradable]:
    upstream = Degradable()
    app = Starlette(routes=[Route("/v1/chat/completions", upstream.chat, methods=["POST"])])
    with serve_in_thread(app, upstream.port):
        yield upstream


def alert_expression() -> str:
    groups = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    rules = [r for g in groups for r in g["rules"] if r.get("alert") == "QualityDegradation"]
    return str(rules[0]["expr"])


def send(svc: Service, http: httpx2.Client, subject: str) -> httpx2.Response:
    r = http.post(f"{svc.base_url}/v1/chat/completions", json=chat("chat", subject))
    assert r.status_code == 200, r.text
    return r


def test_a_degraded_deployment_opens_the_gate_alerts_and_routes_to_the_fallback(
    tmp_path: Path, degradable: Degradable
) -> None:
    config = {
        "models": [
            {"name": "ref"},
            {"name": "chat", "fallbacks": ["ref"],
             "options": {"base_url": f"http://127.0.0.1:{degradable.port}/v1", "model": "x"}},
        ],
        "quality": {
            "shadow": {"enabled": True, "reference_model": "ref", "models": ["chat"],
                       "sample_rate": 1.0, "max_per_second": 100},
            "gate": {"threshold": 0.85, "recover_threshold": 0.9, "min_samples": 4,
                     "window": 6, "route_to_fallback": True},
        },
    }  # fmt: skip
    svc = start_service(tmp_path, config)
    degradable.target = svc.base_url
    subjects = iter(prompts(200))
    try:
        with httpx2.Client(timeout=120) as http:
            sent = 0
            while quality(svc)["models"].get("chat", {}).get("gate", {}).get("state") != "degraded":
                first = send(svc, http, next(subjects))
                assert first.json()["choices"][0]["message"]["content"] == GARBAGE
                sent += 1
                wait_shadowed(svc, "chat", sent)
                assert sent <= 6, quality(svc)
            assert sent == 4  # the minimum sample, every answer garbage
            gate = quality(svc)["models"]["chat"]["gate"]
            assert gate["open"] is True
            assert gate["routing_to_fallback"] is True
            # Held: the fallback answers, saying so.
            held = send(svc, http, next(subjects))
            assert held.headers["x-vllm-service-fallback"] == "true"
            assert held.headers["x-vllm-service-deployment"] == "ref"
            sent += 1
            wait_shadowed(svc, "chat", sent)
            # The alert's expression, evaluated by a real Prometheus scraping the service.
            with prometheus(tmp_path, svc.port) as prom:
                result = prom.wait_for(alert_expression())
                assert [r["metric"]["model"] for r in result] == ["chat"]
            # The deployment heals: probes score it again until the gate closes.
            degradable.mode = "good"
            for _ in range(12):
                if not quality(svc)["models"]["chat"]["gate"]["open"]:
                    break
                r = send(svc, http, next(subjects))
                assert r.headers["x-vllm-service-fallback"] == "true"
                sent += 1
                wait_shadowed(svc, "chat", sent)
            assert quality(svc)["models"]["chat"]["gate"]["open"] is False
            back = send(svc, http, next(subjects))
            assert back.headers["x-vllm-service-fallback"] == "false"
            assert back.headers["x-vllm-service-deployment"] == "chat"
            assert back.json()["choices"][0]["message"]["content"] != GARBAGE
    finally:
        svc.stop()


def test_a_failing_reference_is_counted_and_never_reaches_the_client(tmp_path: Path) -> None:
    dead = dead_url()
    config = {
        "models": [
            {"name": MODEL},
            {"name": "deadref", "options": {"base_url": dead, "model": "x",
                                            "connect_timeout": 0.5}},
        ],
        "quality": {"shadow": {"enabled": True, "reference_model": "deadref",
                               "sample_rate": 1.0, "max_per_second": 100}},
    }  # fmt: skip
    svc = start_service(tmp_path, config)
    try:
        with httpx2.Client(timeout=120) as http:
            for subject in prompts(3):
                r = http.post(f"{svc.base_url}/v1/chat/completions", json=chat(MODEL, subject))
                assert r.status_code == 200
        body = wait_shadowed(svc, MODEL, 3)
        assert body["shadow"][MODEL] == {"reference_failed": 3}
        metrics = httpx2.get(f"{svc.base_url}/metrics").text
        line = f'vllm_quality_shadow_total{{model="{MODEL}",outcome="reference_failed"}} 3.0'
        assert line in metrics
    finally:
        svc.stop()


def test_an_ab_test_splits_callers_stickily_and_names_the_faster_arm(
    tmp_path: Path, degradable: Degradable
) -> None:
    config = {
        "models": [
            {"name": MODEL},
            {"name": "fast", "options": {
                "base_url": f"http://127.0.0.1:{degradable.port}/v1", "model": "x"}},
        ],
        "ab_tests": [{"name": "assistant", "metric": "latency", "planned_samples": 5,
                      "arms": [{"model": MODEL}, {"model": "fast"}]}],
    }  # fmt: skip
    svc = start_service(tmp_path, config)
    try:
        arms: dict[str, set[str]] = {}
        with httpx2.Client(timeout=120) as http:
            for round_ in range(2):
                for i in range(12):
                    body = chat("assistant", f"{SUBJECTS[i]} {round_}", user=f"user-{i}")
                    r = http.post(f"{svc.base_url}/v1/chat/completions", json=body)
                    assert r.status_code == 200, r.text
                    arms.setdefault(f"user-{i}", set()).add(r.headers["x-vllm-service-deployment"])
            report = http.get(f"{svc.base_url}/quality/ab/assistant").json()
            missing = http.get(f"{svc.base_url}/quality/ab/nope")
        metrics = httpx2.get(f"{svc.base_url}/metrics").text
    finally:
        svc.stop()
    assert all(len(seen) == 1 for seen in arms.values())  # sticky per caller
    assert {d for seen in arms.values() for d in seen} == {MODEL, "fast"}
    by_model = {a["model"]: a for a in report["arms"]}
    assert by_model[MODEL]["requests"] + by_model["fast"]["requests"] == 24
    assert by_model["fast"]["samples"]["latency"] == by_model["fast"]["requests"]
    assert report["status"] == "significant"
    assert report["winner"] == "fast"  # lower latency wins
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ab_test_not_found"
    assert 'vllm_ab_requests_total{arm="b",model="fast",test="assistant"}' in metrics
