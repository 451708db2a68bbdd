"""The measures of a load point, defined as vLLM's serving benchmark defines them.

* TTFT: from sending the request to receiving its first content chunk.
* ITL (inter-token latency): the gaps between consecutive content chunks, all requests pooled.
* TPOT (time per output token): per request, (latency - TTFT) / (output tokens - 1); requests
  with fewer than two output tokens have none.
* E2E latency: from sending the request to receiving its last byte.
* Request throughput: successful requests / the run's wall time; output-token throughput:
  their output tokens / the wall time (prompt tokens likewise).
* Goodput: successful requests that met every given SLO (TTFT, TPOT, E2E), as a rate over the
  wall time and as a share of the successful requests.

Each distribution is reported as mean, p50, p90, p95, p99 (linear interpolation, numpy's
default), in milliseconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from vllm_service.bench.loadgen import RequestSample

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True, slots=True)
class SLO:
    """Per-request objectives in milliseconds; None means not required."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met(self, sample: RequestSample) -> bool:
        if not sample.ok:
            return False
        checks = [
            (self.ttft_ms, sample.ttft),
            (self.tpot_ms, sample.tpot),
            (self.e2e_ms, sample.latency),
        ]
        for limit, seconds in checks:
            if limit is None:
                continue
            if seconds is None or seconds * 1e3 > limit:
                return False
        return True


def distribution(values_seconds: list[float]) -> dict[str, float] | None:
    """mean and percentiles, in milliseconds; None when there are no values."""
    if not values_seconds:
        return None
    ms = np.asarray(values_seconds, dtype=np.float64) * 1e3
    out = {"mean": float(ms.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(ms, p))
    return out


def summarize(samples: list[RequestSample], duration: float, slo: SLO) -> dict[str, Any]:
    """Every measure of one load point."""
    ok = [s for s in samples if s.ok]
    good = [s for s in ok if slo.met(s)]
    errors = Counter(s.error for s in samples if s.error is not None)
    output_tokens = sum(s.output_tokens for s in ok)
    prompt_tokens = sum(s.prompt_tokens for s in ok)
    server: dict[str, list[float]] = {}
    for s in ok:
        for phase, ms in s.server_timing.items():
            server.setdefault(phase, []).append(ms / 1e3)
    return {
        "requests": len(samples),
        "completed": len(ok),
        "failed": len(samples) - len(ok),
        "errors": dict(sorted(errors.items())),
        "duration_s": duration,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "output_throughput": output_tokens / duration if duration > 0 else 0.0,
        "prompt_throughput": prompt_tokens / duration if duration > 0 else 0.0,
        "ttft_ms": distribution([s.ttft for s in ok if s.ttft is not None]),
        "itl_ms": distribution([gap for s in ok for gap in s.itl]),
        "tpot_ms": distribution([t for s in ok if (t := s.tpot) is not None]),
        "e2e_ms": distribution([s.latency for s in ok if s.latency is not None]),
        "goodput": {
            "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "e2e_ms": slo.e2e_ms},
            "good": len(good),
            "share": len(good) / len(ok) if ok else 0.0,
            "rate": len(good) / duration if duration > 0 else 0.0,
        },
        "cache": dict(sorted(Counter(s.cache for s in ok if s.cache).items())),
        "server_timing_ms": {
            phase: distribution(values) for phase, values in sorted(server.items())
        },
    }
