"""Bounds on slow and idle clients, at the HTTP protocol level where uvicorn has none.

uvicorn closes a keep-alive connection idle between requests (``timeout_keep_alive``) but
waits forever for the headers of a request, for the rest of a body that stopped arriving, and
accepts any number of connections. Each such connection costs a socket and some memory, and
enough of them exhaust the process's file descriptors. ``GuardedHttpProtocol`` is uvicorn's
own httptools protocol with three bounds added:

- the headers of a request must be complete within ``header_timeout`` seconds of the
  connection opening (or of the previous response ending): otherwise 408 and close;
- while a body is being read, no gap between its bytes may exceed ``body_timeout`` seconds:
  otherwise the connection closes (the handler sees the client as gone);
- at most ``max_connections`` are open at once: one more is answered 503 and closed at once.

Behind a reverse proxy (which buffers slow clients itself), these rarely trigger; set the
proxy's own timeouts below these so that its errors, not ours, reach the client.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass
class ConnectionGuard:
    """The bounds, and what they have done (read by /health and /metrics)."""

    header_timeout: float
    body_timeout: float
    max_connections: int
    counts: dict[str, int] = field(
        default_factory=lambda: {"header_timeouts": 0, "body_timeouts": 0, "refused": 0}
    )


def _response(status: bytes, message: str, code: str, extra: bytes = b"") -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    body = json.dumps({"error": error}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n"
        + extra
        + b"\r\n"
        + body
    )


_TOO_MANY = _response(
    b"503 Service Unavailable",
    "The server has too many open connections. Retry shortly.",
    "too_many_connections",
    b"retry-after: 1\r\n",
)
_HEADER_TIMEOUT = _response(
    b"408 Request Timeout",
    "The request's headers did not arrive in time.",
    "request_timeout",
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with header, body and connection-count bounds."""

    #: Set on the class that ``bound`` makes: uvicorn builds protocols from a class.
    guard: ConnectionGuard

    @classmethod
    def bound(cls, guard: ConnectionGuard) -> type[GuardedHttpProtocol]:
        """This protocol with ``guard``'s bounds, as the class uvicorn's ``http`` takes."""
        return type("BoundGuardedHttpProtocol", (cls,), {"guard": guard})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = self.guard
        self._timer: asyncio.TimerHandle | None = None
        self._reading_body = False

    def _arm(self, delay: float, handler: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, handler)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self._guard.counts["header_timeouts"] += 1
            self.transport.write(_HEADER_TIMEOUT)
            self.transport.close()

    def _body_stalled(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self._guard.counts["body_timeouts"] += 1
            # The handler may be running: closing is the only safe answer; it sees a
            # disconnect, as it would if the client had gone.
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._guard.max_connections:
            self._guard.counts["refused"] += 1
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._arm(self._guard.header_timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:
            self._arm(self._guard.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        # Whether a body follows is known once the message is complete or not: assume one
        # follows until on_message_complete says otherwise.
        self._reading_body = True
        self._arm(self._guard.body_timeout, self._body_stalled)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._reading_body:
            self._arm(self._guard.body_timeout, self._body_stalled)

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._disarm()
        super().on_message_complete()
