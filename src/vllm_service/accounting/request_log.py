"""One request as the accounting layer sees it, and its JSON log line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from vllm_service.accounting.usage import UsageTally
from vllm_service.engine.base import Timing, TokenDelta

logger = logging.getLogger("vllm_service.requests")


#: The route of a quality shadow call's ledger row (a reference answer or a probe): marked so
#: that cost reports never count it as traffic.
SHADOW_ROUTE = "shadow"


def configure_request_log() -> None:
    """Request lines go to stdout as bare JSON, one per line, whatever the root format."""
    if any(getattr(h, "_vllm_service_requests", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._vllm_service_requests = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@dataclass
class RequestRecord:
    """Filled in while a request runs: by the middleware (HTTP side) and the route (model side).

    Holds no prompt or completion text: only numbers and bounded names.
    """

    request_id: str
    route: str
    method: str
    started: float
    status: int = 0
    model: str | None = None
    device: str | None = None
    #: The engine kind of the deployment that served it (llamacpp, upstream, process).
    engine: str | None = None
    #: The client's address (through trusted proxies' X-Forwarded-For).
    client: str | None = None
    #: The API key that called (auth on), by its id; never the key.
    key_id: str | None = None
    #: The request's 'user' field, as the client sent it (the ledger may hash it).
    user: str | None = None
    #: The OpenAI error type of an error answer (invalid_request_error, ...).
    error_type: str | None = None
    #: The deployment that served it, and whether that was a fallback model's.
    deployment: str | None = None
    fallback: bool = False
    #: The response cache's outcome: hit, miss or bypass (None: no model was reached).
    cache: str | None = None
    stream: bool = False
    #: Seconds from the request's arrival to its response's end, and to its first token.
    latency: float | None = None
    ttft: float | None = None
    queue_time: float | None = None
    inter_token_times: list[float] = field(default_factory=list)
    finished_choices: int = 0
    #: The engine's timing of each finished choice (for trace spans).
    timings: list[Timing] = field(default_factory=list)
    #: The request's usage: the response's own tally (api/serving.py), added up once.
    usage: UsageTally = field(default_factory=UsageTally)
    #: Its ledger row is in the journal (written once, before the last byte).
    ledgered: bool = False
    #: Called once the response has ended (e.g. to settle a rate limit's reservation).
    finishers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens

    @property
    def cached_tokens(self) -> int:
        return self.usage.cached_tokens

    def add_final(self, delta: TokenDelta) -> None:
        """Account one choice's final delta: the engine's own timing (usage is tallied by
        the response)."""
        self.finished_choices += 1
        if delta.timing is not None:
            self.timings.append(delta.timing)
            if self.queue_time is None:
                self.queue_time = delta.timing.queue_time
            self.inter_token_times.extend(delta.timing.inter_token_times)

    @property
    def time_per_output_token(self) -> float | None:
        """Mean gap between output tokens after the first (vLLM's TPOT)."""
        if self.latency is None or self.ttft is None or self.completion_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.completion_tokens - 1)

    def log(self) -> None:
        line = {
            "event": "request",
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "model": self.model,
            "device": self.device,
            "deployment": self.deployment,
            "fallback": self.fallback,
            "cache": self.cache,
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "usage_estimated": self.usage.estimated,
            "latency_ms": None if self.latency is None else round(self.latency * 1e3, 3),
            "ttft_ms": None if self.ttft is None else round(self.ttft * 1e3, 3),
            "queue_ms": None if self.queue_time is None else round(self.queue_time * 1e3, 3),
        }
        logger.info(json.dumps(line))
