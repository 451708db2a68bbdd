"""ASGI middleware that observes every request: id, timing, status, then metrics and logs.

It only watches: the request id is read from ``X-Request-ID`` (or made) and echoed back, the
routes fill in what they know (model, tokens, first token) on the ``RequestRecord`` in the
request's state, and the record goes to the accounting layer after the last byte is sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import time
from collections.abc import Iterable

from opentelemetry import trace
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vllm_service.accounting.latency import LatencyWindow
from vllm_service.accounting.ledger import Ledger
from vllm_service.accounting.metrics import Metrics
from vllm_service.accounting.request_log import RequestRecord
from vllm_service.accounting.tracing import emit_engine_spans

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
#: The requests the ledger keeps: those that ask for tokens.
LEDGER_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def record_of(request: Request) -> RequestRecord | None:
    """The record the middleware attached to this request, if any."""
    rec = getattr(request.state, "record", None)
    return rec if isinstance(rec, RequestRecord) else None


class Observe:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        latency: LatencyWindow,
        routes: Iterable[str],
        log_requests: bool,
        tracer: trace.Tracer,
        ledger: Ledger | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.ledger = ledger
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]
        self.tracer = tracer
        self.app = app
        self.metrics = metrics
        self.latency = latency
        self.routes = frozenset(routes)
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _VALID_ID.match(candidate):
                    request_id = candidate
        request_id = request_id or os.urandom(16).hex()
        path = scope.get("path", "")
        route = path if path in self.routes else "other"
        rec = RequestRecord(
            request_id=request_id, route=route, method=scope.get("method", ""), started=started
        )
        rec.client = self._client(scope)
        scope.setdefault("state", {})["record"] = rec
        in_flight = self.metrics.in_flight.labels(route)
        in_flight.inc()

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                rec.status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                rec.latency = time.monotonic() - started
                # In the journal before the client has the whole answer: a crash after this
                # byte loses no row.
                self._ledger(rec)
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            rec.status = rec.status or 500
            raise
        finally:
            in_flight.dec()
            if rec.latency is None:
                rec.latency = time.monotonic() - started
            self._ledger(rec)  # the answer did not end (client gone, or a failure)
            self._account(rec)
            for finish in rec.finishers:
                try:
                    await asyncio.shield(finish())
                except Exception:  # settling must never break serving
                    logger.exception("could not settle request %s", rec.request_id)

    def _client(self, scope: Scope) -> str | None:
        """The client's address: the peer's, or, when the peer is a trusted proxy, the
        nearest address in X-Forwarded-For that is not one of them."""
        peer = scope.get("client")
        address = str(peer[0]) if peer else None
        if not self.trusted or address is None or not self._is_trusted(address):
            return address
        forwarded: list[str] = [
            str(part).strip()
            for name, value in scope.get("headers", ())
            if name == b"x-forwarded-for"
            for part in value.decode("latin-1").split(",")
        ]
        for hop in reversed(forwarded):
            if not self._is_trusted(hop):
                return hop[:64]
        return address

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def _ledger(self, rec: RequestRecord) -> None:
        if self.ledger is None or rec.ledgered or rec.route not in LEDGER_ROUTES:
            return
        rec.ledgered = True
        try:
            self.ledger.record(rec)
        except Exception:  # accounting must never break serving
            logger.exception("could not journal request %s", rec.request_id)

    def _account(self, rec: RequestRecord) -> None:
        try:
            self.metrics.observe(rec)
            if rec.model is not None:
                self.latency.observe(
                    rec.model, rec.latency or 0.0, rec.ttft, failed=rec.status >= 500
                )
            if rec.timings:
                emit_engine_spans(self.tracer, rec)
            if self.log_requests:
                rec.log()
        except Exception:  # observing must never break serving
            logger.exception("could not account request %s", rec.request_id)
