"""Trace spans: with an in-memory exporter, a streaming request yields the expected tree."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import MODEL
from vllm_service.api.app import create_app
from vllm_service.config import load_settings

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_streaming_request_yields_the_span_tree() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = load_settings(
        None, models=[{"name": MODEL, "options": {"max_model_len": 512, "max_num_seqs": 2}}]
    )
    app = create_app(settings, telemetry={"tracer_provider": provider})
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        exporter.clear()
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 5,
                "temperature": 0,
                "stream": True,
            },
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        assert r.status_code == 200
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}

    def named(name: str) -> list[ReadableSpan]:
        return [s for s in spans if s.name == name]

    # Every span belongs to the caller's trace (W3C traceparent honoured).
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    roots = [s for s in spans if s.parent is not None and s.parent.span_id == int(PARENT_ID, 16)]
    assert len(roots) == 1
    request_span = roots[0]
    assert request_span.kind.name == "SERVER"

    def ancestors(span: ReadableSpan) -> list[ReadableSpan]:
        chain = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            chain.append(span)
        return chain

    (route,) = named("vllm.route")
    assert request_span in ancestors(route)
    (generate,) = named("vllm.generate")
    assert generate.parent is not None
    assert by_id[generate.parent.span_id] is not None
    assert request_span in ancestors(generate)
    for child in ("vllm.queue", "vllm.prefill", "vllm.decode"):
        (span,) = named(child)
        assert span.parent is not None
        assert span.parent.span_id == generate.context.span_id
        assert span.start_time is not None
        assert span.end_time is not None
        assert span.start_time <= span.end_time
    queue, prefill, decode = (named(n)[0] for n in ("vllm.queue", "vllm.prefill", "vllm.decode"))
    assert queue.end_time == prefill.start_time
    assert prefill.end_time == decode.start_time
    assert generate.attributes is not None
    assert generate.attributes["vllm.model"] == MODEL
    # The cache lookup (a miss) and the attempt on the deployment are spans of the request.
    (cache,) = named("vllm.cache")
    assert request_span in ancestors(cache)
    assert cache.attributes is not None
    assert cache.attributes["vllm.cache.outcome"] == "miss"
    (attempt,) = named("vllm.attempt")
    assert request_span in ancestors(attempt)
    assert attempt.attributes is not None
    assert attempt.attributes["vllm.deployment"] == MODEL
    assert attempt.attributes["vllm.outcome"] == "success"
