"""The client's address: X-Forwarded-For is believed only from trusted proxies."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace

from vllm_service.accounting.latency import LatencyWindow
from vllm_service.accounting.metrics import Metrics
from vllm_service.api.observe import Observe


def observer(trusted: list[str]) -> Observe:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    window = LatencyWindow(
        window_seconds=60, latency_target=1, ttft_target=1, slo=0.9, max_samples=100
    )
    return Observe(
        app,
        metrics=Metrics(latency_target=1),
        latency=window,
        routes=[],
        log_requests=False,
        tracer=trace.get_tracer("test"),
        trusted_proxies=trusted,
    )


def scope(peer: str, forwarded: str | None) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return {"type": "http", "client": (peer, 1234), "headers": headers}


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ([], "10.0.0.5", "1.2.3.4", "10.0.0.5"),  # no trusted proxy: the header is ignored
        (["10.0.0.0/8"], "192.0.2.7", "1.2.3.4", "192.0.2.7"),  # not from a proxy: ignored
        (["10.0.0.0/8"], "10.0.0.5", "1.2.3.4", "1.2.3.4"),
        # The client may prepend anything; the nearest untrusted hop is the one to believe.
        (["10.0.0.0/8"], "10.0.0.5", "6.6.6.6, 1.2.3.4, 10.0.0.9", "1.2.3.4"),
        (["10.0.0.0/8"], "10.0.0.5", None, "10.0.0.5"),
        (["10.0.0.0/8"], "10.0.0.5", "not-an-ip", "not-an-ip"),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(
    trusted: list[str], peer: str, forwarded: str | None, client: str
) -> None:
    assert observer(trusted)._client(scope(peer, forwarded)) == client
