"""The latency SLI: percentiles, target attainment and error-budget burn over a rolling window.

Each model keeps a ring buffer of its most recent requests (bounded: constant memory per
model); entries older than the window are skipped when a report is computed.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    latency: float
    ttft: float | None
    failed: bool


class LatencyWindow:
    """Per-model rolling window of request latencies."""

    def __init__(
        self,
        *,
        window_seconds: float,
        latency_target: float,
        ttft_target: float,
        slo: float,
        max_samples: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self.latency_target = latency_target
        self.ttft_target = ttft_target
        self.slo = slo
        self._max = max_samples
        self._clock = clock
        self._samples: dict[str, collections.deque[_Sample]] = {}

    def observe(self, model: str, latency: float, ttft: float | None, *, failed: bool) -> None:
        ring = self._samples.get(model)
        if ring is None:
            ring = self._samples[model] = collections.deque(maxlen=self._max)
        ring.append(_Sample(self._clock(), latency, ttft, failed))

    def report(self) -> dict[str, Any]:
        since = self._clock() - self.window_seconds
        models = {}
        for model, ring in self._samples.items():
            recent = [s for s in ring if s.at >= since]
            models[model] = self._summarize(recent)
        return {
            "window_seconds": self.window_seconds,
            "latency_target_ms": self.latency_target * 1e3,
            "ttft_target_ms": self.ttft_target * 1e3,
            "slo": self.slo,
            "models": models,
        }

    def _summarize(self, samples: list[_Sample]) -> dict[str, Any]:
        count = len(samples)
        if count == 0:
            return {"count": 0}
        latencies = np.array([s.latency for s in samples])
        ttfts = np.array([s.ttft for s in samples if s.ttft is not None])
        # A request is "good" when it succeeded within the end-to-end target.
        good = sum(1 for s in samples if not s.failed and s.latency <= self.latency_target)
        bad_share = 1.0 - good / count
        return {
            "count": count,
            "errors": sum(1 for s in samples if s.failed),
            "latency_ms": _stats(latencies),
            "ttft_ms": _stats(ttfts),
            "latency_target_met": good / count,
            "ttft_target_met": (float(np.mean(ttfts <= self.ttft_target)) if ttfts.size else None),
            # 1.0 burns the error budget exactly at the rate the SLO allows.
            "error_budget_burn": bad_share / (1.0 - self.slo),
        }


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    out = {"mean": float(values.mean()) * 1e3}
    for q in PERCENTILES:
        out[f"p{q}"] = float(np.percentile(values, q)) * 1e3
    return out
