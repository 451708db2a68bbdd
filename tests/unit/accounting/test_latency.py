"""The latency SLI window, on an injected clock."""

from __future__ import annotations

import pytest

from vllm_service.accounting.latency import LatencyWindow


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def window(clock: Clock, max_samples: int = 100) -> LatencyWindow:
    return LatencyWindow(
        window_seconds=60,
        latency_target=0.1,
        ttft_target=0.05,
        slo=0.9,
        max_samples=max_samples,
        clock=clock,
    )


def test_percentiles_targets_and_budget_burn_of_the_window() -> None:
    clock = Clock()
    w = window(clock)
    for i in range(10):  # 10..100 ms; the 100 ms one meets the target exactly
        w.observe("m", (i + 1) / 100, ttft=0.01 * (i + 1), failed=False)
    w.observe("m", 0.02, ttft=None, failed=True)
    stats = w.report()["models"]["m"]
    assert stats["count"] == 11
    assert stats["errors"] == 1
    assert stats["latency_target_met"] == pytest.approx(10 / 11)
    assert stats["ttft_target_met"] == pytest.approx(5 / 10)
    # 1 of 11 missed, against an allowance of 1 in 10.
    assert stats["error_budget_burn"] == pytest.approx((1 / 11) / 0.1)
    assert stats["latency_ms"]["p50"] == pytest.approx(55.0, abs=6)


def test_samples_leave_the_window_with_time_and_past_the_bound() -> None:
    clock = Clock()
    w = window(clock, max_samples=3)
    for _ in range(5):
        w.observe("m", 0.01, ttft=None, failed=False)
    assert w.report()["models"]["m"]["count"] == 3
    clock.now += 61
    assert w.report()["models"]["m"] == {"count": 0}
