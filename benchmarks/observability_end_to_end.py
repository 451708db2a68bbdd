"""What metrics, request logs and tracing add to a request, end to end, side by side in one run.

Starts two services on the embedded model, their response caches off: one with observability
off (``observability.enabled: false``), one with everything on: Prometheus metrics, the
latency window, one JSON log line per request, and OpenTelemetry tracing exported over OTLP
to a receiver in this process. Then, round after round and alternating between the two, sends
waves of ``--concurrency`` streamed chat requests with fixed-length answers and prints the
median over rounds of each service's p50 latency, and their ratio. Asserts nothing.

Needs the tracing extra (pip install -e '.[tracing]').

    python benchmarks/observability_end_to_end.py [--rounds 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import free_port, serve_in_thread
from upstream_overhead import start

MODEL = "smollm2-135m-instruct"
SUBJECTS = ["the sea", "a mountain", "bread", "the moon", "a violin", "winter", "a library"]


class Receiver:
    """An OTLP/HTTP trace receiver: accepts export requests and counts their bytes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.exports = 0
        self.bytes = 0

    async def traces(self, request: Request) -> Response:
        self.bytes += len(await request.body())
        self.exports += 1
        return Response(b"", media_type="application/x-protobuf")


def service_config(observability: dict[str, object]) -> dict[str, object]:
    return {"cache": {"enabled": False}, "observability": observability}


async def wave(url: str, concurrency: int, max_tokens: int, offset: int) -> list[float]:
    async with httpx2.AsyncClient(base_url=url, timeout=300) as http:

        async def one(i: int) -> float:
            subject = SUBJECTS[(offset + i) % len(SUBJECTS)]
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Write a short poem about {subject}."}],
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "seed": offset + i,
                "ignore_eos": True,
                "stream": True,
            }
            start = time.perf_counter()
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                async for _ in r.aiter_lines():
                    pass
            return time.perf_counter() - start

        return list(await asyncio.gather(*(one(i) for i in range(concurrency))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--waves", type=int, default=2, help="waves per service per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--no-tracing", action="store_true", help="observe with metrics and logs only"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="observability-bench-"))
    receiver = Receiver()
    app = Starlette(routes=[Route("/v1/traces", receiver.traces, methods=["POST"])])
    with serve_in_thread(app, receiver.port):
        off, off_url = start(service_config({"enabled": False}), workdir, "off")
        on, on_url = start(
            service_config({"enabled": True, "log_requests": True, "tracing": not args.no_tracing}),
            workdir,
            "on",
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                "OTEL_SERVICE_NAME": "vllm-service",
            },
        )
        services = {"observability off": off_url, "observability on": on_url}
        p50s: dict[str, list[float]] = {name: [] for name in services}
        try:
            for url in services.values():  # warm-up
                asyncio.run(wave(url, args.concurrency, args.max_tokens, 0))
            for round_no in range(args.rounds):
                for name, url in services.items():
                    latencies: list[float] = []
                    for w in range(args.waves):
                        offset = (round_no * args.waves + w) * args.concurrency
                        latencies += asyncio.run(
                            wave(url, args.concurrency, args.max_tokens, offset)
                        )
                    p50 = statistics.median(latencies)
                    p50s[name].append(p50)
                    print(f"round {round_no + 1} {name:18s} p50 {p50 * 1e3:8.1f} ms", flush=True)
            time.sleep(6)  # the batch span processor exports every 5 s
        finally:
            for proc in (off, on):
                proc.terminate()
            for proc in (off, on):
                proc.wait()
    log_lines = sum(
        1 for line in (workdir / "on.log").read_text().splitlines() if '"event": "request"' in line
    )
    base = statistics.median(p50s["observability off"])
    observed = statistics.median(p50s["observability on"])
    print(
        f"\nconcurrency {args.concurrency}, {args.max_tokens} tokens per answer, "
        f"median of {args.rounds} rounds' p50:"
    )
    print(f"  observability off {base * 1e3:8.1f} ms")
    print(f"  observability on  {observed * 1e3:8.1f} ms  ({(observed / base - 1) * 100:+.1f}%)")
    print(
        f"  the observed service wrote {log_lines} request log lines and exported "
        f"{receiver.bytes} bytes of spans in {receiver.exports} OTLP requests"
    )


if __name__ == "__main__":
    main()
