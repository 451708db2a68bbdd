"""The benchmark's definitions, against hand-computed values, so that they cannot drift."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx2
import numpy as np
import pytest
from scipy import stats
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from vllm_service.accounting.cost import HardwareCost, HostedPrice, compare_costs
from vllm_service.bench.loadgen import (
    Endpoint,
    RequestSample,
    arrival_times,
    parse_server_timing,
    send,
)
from vllm_service.bench.measures import SLO, summarize
from vllm_service.bench.workloads import BenchRequest, Length, Workload


def sample(index: int, ttft: float, gaps: list[float], tokens: int, **kw: object) -> RequestSample:
    latency = ttft + sum(gaps)
    return RequestSample(
        index=index,
        start=0.0,
        ttft=ttft,
        latency=latency,
        itl=gaps,
        output_tokens=tokens,
        prompt_tokens=10,
        **kw,  # type: ignore[arg-type]
    )


def test_ttft_itl_tpot_e2e_and_throughput_follow_vllms_definitions() -> None:
    samples = [
        sample(0, 0.100, [0.02, 0.02, 0.02], 4),  # e2e 0.16, TPOT (0.16-0.1)/3 = 0.02
        sample(1, 0.300, [0.05, 0.07], 3),  # e2e 0.42, TPOT 0.12/2 = 0.06
        sample(2, 0.200, [], 1),  # one token: no TPOT
        RequestSample(index=3, start=0.0, error="http_503"),
    ]
    out = summarize(samples, duration=2.0, slo=SLO())
    assert out["completed"] == 3
    assert out["failed"] == 1
    assert out["errors"] == {"http_503": 1}
    assert out["request_throughput"] == pytest.approx(1.5)
    assert out["output_throughput"] == pytest.approx(4.0)  # 8 tokens / 2 s
    assert out["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert out["ttft_ms"]["p50"] == pytest.approx(200.0)
    # ITL pools every gap: 20, 20, 20, 50, 70 ms.
    assert out["itl_ms"]["mean"] == pytest.approx(36.0)
    assert out["itl_ms"]["p50"] == pytest.approx(20.0)
    assert out["tpot_ms"]["mean"] == pytest.approx(40.0)
    assert out["e2e_ms"]["p50"] == pytest.approx(200.0)
    # E2E 160, 420, 200 ms: p99 interpolates between 200 and 420 at 0.98.
    assert out["e2e_ms"]["p99"] == pytest.approx(200 + 0.98 * 220)
    for key in ("ttft_ms", "itl_ms", "e2e_ms"):
        d = out[key]
        assert d["p50"] <= d["p90"] <= d["p95"] <= d["p99"]


def test_goodput_counts_requests_meeting_every_slo() -> None:
    samples = [
        sample(0, 0.100, [0.02, 0.02, 0.02], 4),
        sample(1, 0.300, [0.05, 0.07], 3),
        sample(2, 0.050, [0.2], 2),
    ]
    out = summarize(samples, duration=3.0, slo=SLO(ttft_ms=250, tpot_ms=100))
    # 0 meets both; 1 misses TTFT (300 > 250); 2 misses TPOT (200 > 100).
    assert out["goodput"]["good"] == 1
    assert out["goodput"]["share"] == pytest.approx(1 / 3)
    assert out["goodput"]["rate"] == pytest.approx(1 / 3)
    relaxed = summarize(samples, duration=3.0, slo=SLO(e2e_ms=500))
    assert relaxed["goodput"]["good"] == 3


def test_open_loop_poisson_arrivals_follow_the_requested_rate() -> None:
    rate = 20.0
    times = arrival_times(rate, 2000, "poisson", seed=7)
    gaps = np.diff(times)
    assert times[0] == 0.0
    assert np.all(gaps >= 0)
    # Exponential gaps with mean 1/rate: Kolmogorov-Smirnov against that distribution.
    result = stats.kstest(gaps, "expon", args=(0, 1 / rate))
    assert result.pvalue > 0.01
    assert len(times) / times[-1] == pytest.approx(rate, rel=0.1)
    # The same seed gives the same schedule; another seed another one.
    assert np.array_equal(times, arrival_times(rate, 2000, "poisson", seed=7))
    assert not np.array_equal(times, arrival_times(rate, 2000, "poisson", seed=8))
    assert np.allclose(np.diff(arrival_times(4.0, 10, "constant", seed=0)), 0.25)


def test_workloads_are_seeded_and_repeat_the_requested_share() -> None:
    w = Workload("synthetic", seed=3, input_len=Length(20, 0.5), output_len=Length(16))
    first = [r for _, r in zip(range(50), w.requests(), strict=False)]
    again = [r for _, r in zip(range(50), w.requests(), strict=False)]
    assert first == again
    assert all(r.max_tokens == 16 for r in first)
    lengths = {len((r.messages or [{}])[0]["content"].split()) for r in first}
    assert min(lengths) >= 13  # "Continue this text:" + at least 10 words
    assert len(lengths) > 1
    mixed = Workload("synthetic", seed=3, repeat_share=0.5).requests()
    repeats = sum(next(mixed).repeat_of is not None for _ in range(2000))
    assert repeats / 2000 == pytest.approx(0.5, abs=0.05)


def test_cost_per_1k_tokens_from_throughput_and_hardware() -> None:
    hardware = HardwareCost(purchase_price=2190.0, amortize_months=36, power_watts=500)
    # 2190 / (36 * 730) = 0.0833 $/h, plus 0.5 kW * 0.15 = 0.075 $/h.
    assert hardware.per_hour == pytest.approx(0.15833, rel=1e-3)
    cost = compare_costs(
        HardwareCost(hourly=3.6),
        HostedPrice("x", input_per_million=1.0, output_per_million=3.0),
        prompt_tokens=1000,
        completion_tokens=1000,
        seconds=10.0,
    )
    assert cost is not None
    # 3.6 $/h for 10 s = 0.01 $ for 2000 tokens: 0.005 $ per 1K.
    assert cost.local_per_1k == pytest.approx(0.005)
    # (1000 * 1 + 1000 * 3) / 1e6 = 0.004 $ for 2000 tokens: 0.002 $ per 1K.
    assert cost.hosted_per_1k == pytest.approx(0.002)
    assert cost.savings_ratio == pytest.approx(0.4)


def test_server_timing_values_are_parsed() -> None:
    assert parse_server_timing("cache;dur=0.1, queue;dur=1.5, decode;desc=x;dur=20") == {
        "cache": 0.1,
        "queue": 1.5,
        "decode": 20.0,
    }


def test_one_streamed_request_is_timed_on_its_chunks() -> None:
    """A real SSE response over ASGI; the clock is scripted: chunks at 0.5, 0.6, 0.8 s."""

    async def chat(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            for word in ("a", "b", "c"):
                yield f"data: {json.dumps({'choices': [{'delta': {'content': word}}]})}\n\n"
            usage = {"prompt_tokens": 5, "completion_tokens": 3}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield ": server-timing decode;dur=12.5\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    ticks = iter([0.5, 0.6, 0.8, 0.9])

    async def run() -> RequestSample:
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)) as http:
            s = RequestSample(index=0, start=0.0)
            endpoint = Endpoint("t", "http://test/v1", "m")
            request = BenchRequest(messages=[{"role": "user", "content": "x"}], max_tokens=3)
            return await send(
                http, endpoint, request, s, clock=lambda: next(ticks), ignore_eos=False
            )

    s = asyncio.run(run())
    assert s.ok
    assert s.ttft == pytest.approx(0.5)
    assert s.itl == pytest.approx([0.1, 0.2])
    assert s.latency == pytest.approx(0.9)
    assert s.tpot == pytest.approx(0.2)  # (0.9 - 0.5) / (3 - 1)
    assert (s.prompt_tokens, s.output_tokens) == (5, 3)
    assert s.server_timing == {"decode": 12.5}
