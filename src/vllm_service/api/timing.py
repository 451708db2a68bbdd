"""Where a request's time went inside the service, reported to a client that asks.

A request carrying ``x-vllm-service-timing: true`` gets a W3C ``Server-Timing`` value: in a
``Server-Timing`` header when the answer is not streamed, and as an SSE comment line
(``: server-timing ...``, ignored by SSE clients) before ``data: [DONE]`` when it is, since a
stream's headers leave before its timing is known. Phases, in milliseconds:

* ``cache``: the response-cache lookup (and any wait for an identical request);
* ``queue``, ``prefill``, ``decode``: the engine's own timing of the first choice, when the
  engine measures its queue (the embedded one does);
* ``upstream``: time spent waiting on an engine that does not say how long it queued (an
  upstream server: its first token, then the rest);
* ``total``: from the request's arrival to its last token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from vllm_service.engine import TokenDelta
from vllm_service.manager import Route

TIMING_REQUEST_HEADER = "x-vllm-service-timing"


def wants_timing(request: Request) -> bool:
    return request.headers.get(TIMING_REQUEST_HEADER, "").lower() in ("1", "true", "yes")


@dataclass
class ServerTiming:
    """Collects what one response needs for its Server-Timing value."""

    started: float = field(default_factory=time.monotonic)
    routes: list[Route] = field(default_factory=list)
    finals: list[TokenDelta] = field(default_factory=list)

    def add_final(self, delta: TokenDelta) -> None:
        self.finals.append(delta)

    def value(self) -> str:
        phases: dict[str, float] = {}
        if any(r.cache_key is not None for r in self.routes):
            phases["cache"] = max(r.cache_seconds for r in self.routes)
        timing = next((f.timing for f in self.finals if f.timing is not None), None)
        if timing is not None:
            if timing.queue_time is not None:
                phases["queue"] = timing.queue_time
                phases["prefill"] = timing.time_to_first_token - timing.queue_time
                phases["decode"] = timing.decode_time
            else:
                phases["upstream"] = timing.time_to_first_token + timing.decode_time
        phases["total"] = time.monotonic() - self.started
        return ", ".join(f"{name};dur={seconds * 1e3:.3f}" for name, seconds in phases.items())
