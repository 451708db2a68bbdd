"""What an upstream receives: only configured routing, the configured key, the trace context."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port, serve_in_thread
from vllm_service.api.app import create_app
from vllm_service.config import load_settings

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class Recorder:
    """A minimal OpenAI-compatible upstream that records every request it gets."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.port = free_port()

    async def chat(self, request: Request) -> StreamingResponse:
        self.seen.append({"headers": dict(request.headers), "body": await request.json()})

        async def events() -> AsyncIterator[str]:
            chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def bad(self, request: Request) -> Response:
        """Broken upstreams, by kind."""
        kind = request.path_params["kind"]
        if kind == "html500":
            return Response("<html>SECRET-PAGE internal trace</html>", status_code=500)
        bodies = {
            "garbage": "data: {not json SECRET-PAGE\n\n",
            "shape": 'data: {"choices": [{"delta": {"content": 42}}]}\n\n',
            "huge": "data: " + "x" * (2 * 1024 * 1024),
        }
        return Response(bodies[kind], media_type="text/event-stream")


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", rec.chat, methods=["POST"]),
            Route("/bad/{kind}/v1/chat/completions", rec.bad, methods=["POST"]),
        ]
    )
    with serve_in_thread(app, rec.port):
        yield rec


def test_request_fields_never_reroute_and_the_trace_goes_upstream(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECORDER_KEY", "sk-configured")
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = load_settings(
        None,
        models=[
            {
                "name": "remote",
                "engine": "upstream",
                "options": {
                    "base_url": f"http://127.0.0.1:{recorder.port}/v1",
                    "model": "upstream-name",
                    "api_key_env": "RECORDER_KEY",
                },
            }
        ],
    )
    app = create_app(settings, telemetry={"tracer_provider": provider})
    with TestClient(app) as client:
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "remote",
                "messages": [{"role": "user", "content": "hello"}],
                "api_base": "http://evil.example/v1",
                "base_url": "http://evil.example/v1",
                "headers": {"Authorization": "Bearer stolen"},
                "extra_headers": {"X-Target": "elsewhere"},
            },
            headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"},
        )
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "hi"
    (seen,) = recorder.seen
    # It went to the configured upstream (this recorder), with the configured key and name.
    assert seen["headers"]["authorization"] == "Bearer sk-configured"
    assert seen["body"]["model"] == "upstream-name"
    for field in ("api_base", "base_url", "headers", "extra_headers"):
        assert field not in seen["body"]
    assert "x-target" not in seen["headers"]
    # The caller's trace continues upstream, as a child of the attempt's span.
    _, trace_id, parent_id, _ = seen["headers"]["traceparent"].split("-")
    assert trace_id == TRACE_ID
    (attempt,) = [s for s in exporter.get_finished_spans() if s.name == "vllm.attempt"]
    assert parent_id == format(attempt.context.span_id, "016x")
    assert attempt.attributes is not None
    assert attempt.attributes["vllm.deployment"] == "remote"
    assert attempt.attributes["vllm.outcome"] == "success"


@pytest.mark.parametrize("kind", ["garbage", "shape", "huge", "html500"])
def test_a_broken_upstream_answer_is_a_clean_error_never_echoed(
    recorder: Recorder, kind: str
) -> None:
    settings = load_settings(
        None,
        models=[
            {
                "name": "broken",
                "engine": "upstream",
                "options": {
                    "base_url": f"http://127.0.0.1:{recorder.port}/bad/{kind}/v1",
                    "model": "m",
                },
            }
        ],
    )
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert client.get("/health").json()["status"] == "ok"
    error = r.json()["error"]
    assert "SECRET-PAGE" not in r.text
    if kind == "html500":
        assert r.status_code == 503  # the upstream's own 5xx: unavailable, retryable
    else:
        assert r.status_code == 502
        assert error["type"] == "bad_gateway_error"


def test_an_upstream_gets_the_configured_defaults_and_otherwise_its_own(
    recorder: Recorder,
) -> None:
    upstream = {"base_url": f"http://127.0.0.1:{recorder.port}/v1", "model": "upstream-name"}
    settings = load_settings(
        None,
        models=[
            {"name": "plain", "engine": "upstream", "options": upstream},
            {
                "name": "tuned",
                "engine": "upstream",
                "options": upstream,
                "defaults": {"temperature": 0.3, "top_k": 20},
            },
        ],
    )
    question = [{"role": "user", "content": "hello"}]
    with TestClient(create_app(settings)) as client:
        listed = {m["id"]: m["sampling_defaults"] for m in client.get("/v1/models").json()["data"]}
        for model, extra in [("plain", {}), ("tuned", {}), ("tuned", {"temperature": 1})]:
            r = client.post(
                "/v1/chat/completions", json={"model": model, "messages": question, **extra}
            )
            assert r.status_code == 200
    plain, tuned, overridden = (seen["body"] for seen in recorder.seen[-3:])
    # Nothing set: the upstream applies its own defaults.
    assert not {"temperature", "top_p", "top_k"} & set(plain)
    assert (tuned["temperature"], tuned["top_k"]) == (0.3, 20)
    assert "top_p" not in tuned
    # The request's own value wins over the configured default.
    assert overridden["temperature"] == 1
    assert listed["plain"] == {}
    assert listed["tuned"] == {
        "temperature": {"value": 0.3, "source": "config"},
        "top_k": {"value": 20.0, "source": "config"},
    }
