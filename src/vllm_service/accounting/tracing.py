"""Trace spans of the engine's work, under the request span FastAPI's telemetry opens.

FastAPI (0.165+) makes the request span itself, accepts a W3C ``traceparent`` and, when asked,
configures OTLP exporters from the standard ``OTEL_*`` variables. This module adds what only
the service knows: per choice a ``vllm.generate`` span with ``vllm.queue``, ``vllm.prefill``
and ``vllm.decode`` children, drawn from the engine's own timing after the fact (the engine's
thread never touches OpenTelemetry). Without a configured provider, every call is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from opentelemetry import trace

from vllm_service.accounting.request_log import RequestRecord

TRACER_NAME = "vllm_service"


def _epoch_clock() -> Callable[[float], int]:
    """Maps ``time.monotonic()`` instants to wall-clock nanoseconds, as spans want them.

    One offset for all the spans of a request, so that adjacent spans meet exactly.
    """
    offset = time.time_ns() - time.monotonic_ns()
    return lambda monotonic_s: offset + int(monotonic_s * 1e9)


def emit_engine_spans(tracer: trace.Tracer, rec: RequestRecord) -> None:
    """One ``vllm.generate`` span per finished choice, children of the current span."""
    _epoch_ns = _epoch_clock()
    for index, timing in enumerate(rec.timings):
        start = timing.submitted_at
        # An engine that cannot see its queue (an upstream) gets no queue span.
        scheduled = start + (timing.queue_time or 0.0)
        first = start + timing.time_to_first_token
        end = first + timing.decode_time
        attributes: dict[str, str | int] = {
            "vllm.model": rec.model or "",
            "vllm.choice": index,
            "vllm.request_id": rec.request_id,
        }
        generate = tracer.start_span(
            "vllm.generate", start_time=_epoch_ns(start), attributes=attributes
        )
        context = trace.set_span_in_context(generate)
        phases = [("vllm.prefill", scheduled, first), ("vllm.decode", first, end)]
        if timing.queue_time is not None:
            phases.insert(0, ("vllm.queue", start, scheduled))
        for name, begin, finish in phases:
            span = tracer.start_span(name, context=context, start_time=_epoch_ns(begin))
            span.end(end_time=_epoch_ns(finish))
        generate.set_attribute("vllm.completion_tokens", len(timing.inter_token_times) + 1)
        generate.end(end_time=_epoch_ns(end))
