"""Client latency with live shadow scoring on (10% of requests) and off, side by side.

Two services on the bundled model, the response cache off so every request generates: one
without shadowing, one scoring a sampled 10% against a reference model. The reference is an
OpenAI-compatible server in this process that answers at once (as a remote hosted API's
compute is elsewhere): what is measured is what shadowing costs the service itself (keeping
the text, the queue, the reference call, scoring the answer). Rounds of sequential requests
alternate between the two; prints the median of the rounds' p50 and p95 and their ratio, and
how many answers were scored. Asserts nothing.

    python benchmarks/shadow_overhead.py [--rounds 7] [--requests 40] [--rate 0.1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import MODEL, free_port, serve_in_thread, start_configured

ANSWER = "A short reference answer about the subject, in one plain sentence."


async def reference(request: Request) -> Response:
    await request.body()

    async def events() -> AsyncIterator[str]:
        chunk = {"choices": [{"index": 0, "delta": {"content": ANSWER}, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n"
        yield 'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
        usage = {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def round_latencies(url: str, requests: int, offset: int, max_tokens: int) -> list[float]:
    out = []
    with httpx2.Client(timeout=120) as http:
        for i in range(requests):
            body = {
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": f"Say something about item {offset + i}."}
                ],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            started = time.perf_counter()
            r = http.post(f"{url}/v1/chat/completions", json=body)
            out.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shadow-overhead-"))
    ref_port = free_port()
    app = Starlette(routes=[Route("/v1/chat/completions", reference, methods=["POST"])])
    base = {"cache": {"enabled": False}, "observability": {"log_requests": False}}
    shadowed = {
        **base,
        "models": [
            {"name": MODEL},
            {"name": "reference", "options": {"base_url": f"http://127.0.0.1:{ref_port}/v1",
                                              "model": "reference"}},
        ],
        "quality": {"shadow": {"enabled": True, "reference_model": "reference",
                               "sample_rate": args.rate, "max_per_second": 100}},
    }  # fmt: skip
    with serve_in_thread(app, ref_port):
        off, off_url = start_configured("off", base, work)
        on, on_url = start_configured("on", shadowed, work)
        try:
            p50 = {"off": [], "on": []}  # type: dict[str, list[float]]
            p95 = {"off": [], "on": []}  # type: dict[str, list[float]]
            for r in range(args.rounds):
                order = [("off", off_url), ("on", on_url)]
                for name, url in order if r % 2 == 0 else order[::-1]:
                    lat = round_latencies(url, args.requests, r * args.requests, args.max_tokens)
                    p50[name].append(statistics.median(lat) * 1e3)
                    p95[name].append(statistics.quantiles(lat, n=20)[18] * 1e3)
            time.sleep(1)
            shadow = httpx2.get(f"{on_url}/quality").json()["shadow"].get(MODEL, {})
        finally:
            for proc in (off, on):
                proc.terminate()
                proc.wait(timeout=30)
    total = args.rounds * args.requests
    print(f"{args.rounds} alternating rounds of {args.requests} sequential requests "
          f"(max_tokens {args.max_tokens}), shadow sample rate {args.rate}")  # fmt: skip
    for name in ("off", "on"):
        print(f"  shadow {name:>3}: p50 median {statistics.median(p50[name]):7.1f} ms "
              f"(rounds {min(p50[name]):.1f}-{max(p50[name]):.1f}), p95 median "
              f"{statistics.median(p95[name]):7.1f} ms")  # fmt: skip
    ratio = statistics.median(p50["on"]) / statistics.median(p50["off"])
    paired = [a / b for a, b in zip(p50["on"], p50["off"], strict=True)]
    print(f"  p50 on/off: {ratio:.3f} (per-round ratios {min(paired):.3f}-{max(paired):.3f})")
    print(f"  shadow outcomes over {total} requests: {shadow}")


if __name__ == "__main__":
    main()
