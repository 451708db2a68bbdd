"""The circuit breaker's state machine, on an injected clock, and the verdict the manager
reports to it for each attempt (manager/deployment.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from vllm_service.engine import EngineUnavailableError, InvalidRequestError
from vllm_service.manager.breaker import BreakerOpenError, BreakerState, CircuitBreaker
from vllm_service.manager.deployment import verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def Upstream5xx() -> EngineUnavailableError:
    return EngineUnavailableError("the upstream answered 502")


Client4xx = InvalidRequestError


@asynccontextmanager
async def attempt(b: CircuitBreaker) -> AsyncIterator[None]:
    """An attempt as the manager makes one: admitted, then its verdict (or a success)."""
    permit = b.acquire()
    try:
        yield
    except BaseException as exc:
        verdict(permit, exc)
        raise
    permit.success()


def breaker(clock: Clock, **kwargs: float) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    b = CircuitBreaker(
        "d1",
        clock=clock,
        on_transition=lambda _name, old, new: seen.append((old.value, new.value)),
        **kwargs,  # type: ignore[arg-type]
    )
    return b, seen


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        b.acquire().failure()


def test_opens_after_threshold_consecutive_failures_only() -> None:
    clock = Clock()
    b, seen = breaker(clock)
    fail(b, 4)
    b.acquire().success()  # a success resets the count
    fail(b, 4)
    assert b.state is BreakerState.CLOSED
    fail(b, 1)
    assert b.state is BreakerState.OPEN
    assert seen == [("closed", "open")]
    assert b.opened_total == 1


def test_open_rejects_at_once_until_recovery_timeout() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    fail(b, 5)
    clock.now += 29.0
    with pytest.raises(BreakerOpenError) as refused:
        b.acquire()
    assert refused.value.retry_after == pytest.approx(1.0)
    clock.now += 1.0
    probe = b.acquire()
    assert b.state is BreakerState.HALF_OPEN
    assert probe.probe


def test_half_open_success_closes_and_failure_reopens() -> None:
    clock = Clock()
    b, seen = breaker(clock)
    fail(b, 5)
    clock.now += 30
    b.acquire().success()
    assert b.state is BreakerState.CLOSED
    fail(b, 5)
    clock.now += 30
    b.acquire().failure()
    assert b.state is BreakerState.OPEN
    assert b.opened_at == clock.now
    assert seen == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
    ]


def test_half_open_admits_at_most_max_calls_among_50_concurrent_callers() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    fail(b, 5)
    clock.now += 30
    admitted = 0
    refused = 0
    release = asyncio.Event()

    async def caller() -> None:
        nonlocal admitted, refused
        try:
            async with attempt(b):
                admitted += 1
                await release.wait()
        except BreakerOpenError:
            refused += 1

    async def main() -> None:
        tasks = [asyncio.create_task(caller()) for _ in range(50)]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert admitted == 3
    assert refused == 47
    assert b.state is BreakerState.CLOSED


def test_a_hanging_probe_fails_through_its_timeout() -> None:
    clock = Clock()
    b, _ = breaker(clock, probe_timeout=10.0)
    fail(b, 5)
    clock.now += 30
    hanging = [b.acquire() for _ in range(3)]
    with pytest.raises(BreakerOpenError):
        b.acquire()  # all three probe places taken
    clock.now += 10
    with pytest.raises(BreakerOpenError):
        b.acquire()  # the expired probe counted as a failure: open again
    assert b.state is BreakerState.OPEN
    hanging[0].success()  # a late answer from the old period changes nothing
    assert b.state is BreakerState.OPEN
    clock.now += 30
    b.acquire().success()
    assert b.state is BreakerState.CLOSED


def test_client_errors_and_cancellation_never_trip_it() -> None:
    clock = Clock()
    b, _ = breaker(clock)

    async def client_error() -> None:
        async with attempt(b):
            raise Client4xx("bad request")

    async def cancelled() -> None:
        async with attempt(b):
            await asyncio.sleep(10)

    async def main() -> None:
        for _ in range(10):
            with pytest.raises(Client4xx):
                await client_error()
            task = asyncio.create_task(cancelled())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert b.state is BreakerState.CLOSED
    assert b.consecutive_failures == 0


def test_overload_releases_and_never_trips_it() -> None:
    clock = Clock()
    b, _ = breaker(clock)

    async def busy() -> None:
        async with attempt(b):
            raise EngineUnavailableError("busy", overloaded=True)

    async def main() -> None:
        for _ in range(10):
            with pytest.raises(EngineUnavailableError):
                await busy()

    asyncio.run(main())
    assert b.state is BreakerState.CLOSED
    assert b.consecutive_failures == 0


def test_failures_through_attempts_open_it() -> None:
    clock = Clock()
    b, _ = breaker(clock)

    async def main() -> None:
        for exc in (Upstream5xx(), TimeoutError(), ConnectionError(), Upstream5xx(), Upstream5xx()):
            with pytest.raises(type(exc)):
                async with attempt(b):
                    raise exc

    asyncio.run(main())
    assert b.state is BreakerState.OPEN


def test_cancelled_probe_frees_its_place() -> None:
    clock = Clock()
    b, _ = breaker(clock, half_open_max_calls=1)
    fail(b, 5)
    clock.now += 30
    probe = b.acquire()
    with pytest.raises(BreakerOpenError):
        b.acquire()
    probe.release()
    b.acquire().success()
    assert b.state is BreakerState.CLOSED


def test_outcome_is_counted_once() -> None:
    clock = Clock()
    b, _ = breaker(clock, failure_threshold=2)
    permit = b.acquire()
    permit.failure()
    permit.failure()
    assert b.state is BreakerState.CLOSED
    assert b.consecutive_failures == 1
