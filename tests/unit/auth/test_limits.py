"""Per-key limits on an injected clock: requests and tokens per minute, requests at once,
OpenAI's rate-limit headers, and reservations settled against real usage."""

from __future__ import annotations

import asyncio

from vllm_service.auth.limits import Limits, MemoryLimits, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 6000.0  # the start of a minute

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_with_headers_and_reset() -> None:
    clock = Clock()
    limiter = RateLimiter(MemoryLimits(), clock=clock)
    limits = Limits(rpm=3)

    async def scenario() -> None:
        verdicts = [await limiter.admit("k", limits, 0) for _ in range(3)]
        assert [v.headers["x-ratelimit-remaining-requests"] for v in verdicts] == ["2", "1", "0"]
        clock.now += 20
        refused = await limiter.admit("k", limits, 0)
        assert not refused.allowed
        assert refused.refused == "requests"
        assert refused.retry_after == 40
        assert refused.headers["x-ratelimit-reset-requests"] == "40s"
        assert (await limiter.admit("other-key", limits, 0)).allowed  # keys count apart
        clock.now += 40  # a new minute
        assert (await limiter.admit("k", limits, 0)).allowed

    asyncio.run(scenario())


def test_tokens_are_reserved_then_settled_against_real_usage() -> None:
    clock = Clock()
    limiter = RateLimiter(MemoryLimits(), clock=clock)
    limits = Limits(tpm=1000)

    async def scenario() -> None:
        first = await limiter.admit("k", limits, 600)  # prompt estimate + max_tokens
        assert first.headers["x-ratelimit-remaining-tokens"] == "400"
        refused = await limiter.admit("k", limits, 600)
        assert (refused.allowed, refused.refused) == (False, "tokens")
        # The first answer used 150 tokens: the rest of its reservation comes back.
        await limiter.settle("k", limiter.window(), reserved=600, used=150)
        assert (await limiter.admit("k", limits, 600)).allowed

    asyncio.run(scenario())


def test_requests_at_once_are_released_when_answers_end() -> None:
    limiter = RateLimiter(MemoryLimits(), clock=Clock())
    limits = Limits(max_parallel=2)

    async def scenario() -> None:
        assert (await limiter.admit("k", limits, 0)).allowed
        assert (await limiter.admit("k", limits, 0)).allowed
        third = await limiter.admit("k", limits, 0)
        assert (third.allowed, third.refused, third.retry_after) == (False, "parallel", 1.0)
        await limiter.settle("k", limiter.window(), 0, 0)
        assert (await limiter.admit("k", limits, 0)).allowed

    asyncio.run(scenario())
