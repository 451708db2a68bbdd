"""What observing one request costs: metrics, the latency window, the JSON log line and trace
spans, timed in-process on records shaped like a 64-token streamed chat completion.

Prints microseconds per request; compare them with the request's own latency (p50 at
concurrency 16 on the embedded model is seconds). Asserts nothing.

    python benchmarks/observability_overhead.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vllm_service.accounting.latency import LatencyWindow
from vllm_service.accounting.metrics import Metrics
from vllm_service.accounting.request_log import RequestRecord, logger
from vllm_service.accounting.tracing import emit_engine_spans
from vllm_service.engine.base import FinishReason, Timing, TokenDelta, Usage


def record(i: int) -> RequestRecord:
    now = time.monotonic()
    rec = RequestRecord(f"req-{i}", "/v1/chat/completions", "POST", started=now - 5.0)
    rec.status, rec.model, rec.device, rec.stream = 200, "smollm2-135m-instruct", "cpu", True
    rec.ttft, rec.latency = 2.5, 5.0
    timing = Timing(0.2, 2.4, tuple([0.04] * 63), submitted_at=now - 4.9)
    usage = Usage(prompt_tokens=107, completion_tokens=64, cached_tokens=25)
    rec.add_final(TokenDelta("", finish_reason=FinishReason.LENGTH, usage=usage, timing=timing))
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    metrics = Metrics(latency_target=0.05)
    window = LatencyWindow(
        window_seconds=300, latency_target=0.05, ttft_target=0.05, slo=0.95, max_samples=10000
    )
    logger.addHandler(logging.FileHandler("/dev/null"))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracer = provider.get_tracer("bench")
    records = [record(i) for i in range(args.requests)]
    parts = {
        "metrics": lambda r: metrics.observe(r),
        "latency window": lambda r: window.observe(r.model, r.latency, r.ttft, failed=False),
        "JSON log line": lambda r: r.log(),
        "trace spans (SDK, in-memory)": lambda r: emit_engine_spans(tracer, r),
    }
    total = 0.0
    for name, fn in parts.items():
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            for rec in records:
                fn(rec)
            runs.append((time.perf_counter() - start) / len(records) * 1e6)
        cost = statistics.median(runs)
        total += cost
        print(f"{name:30s} {cost:8.1f} us/request")
    start = time.perf_counter()
    window.report()
    print(f"{'all':30s} {total:8.1f} us/request")
    print(f"/performance/latency report over {len(records)} samples: "
          f"{(time.perf_counter() - start) * 1e3:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
