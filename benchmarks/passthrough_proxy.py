"""The least a Python proxy adds here: the reference for benchmarks/upstream_overhead.py.

A bare ASGI app on uvicorn (uvloop, httptools), with no framework, validation, routing, breaker,
cache or accounting: it forwards each request's body to the upstream with the service's own
HTTP client (pyreqwest) and streams the answer back chunk by chunk. Whatever the service adds
beyond this is the price of its features; what this adds is the price of being a Python proxy.

    python benchmarks/passthrough_proxy.py UPSTREAM_URL PORT
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from pyreqwest.client import Client, ClientBuilder

Scope = dict[str, Any]


def passthrough(upstream: str) -> Any:
    client: Client | None = None

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        nonlocal client
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if client is None:
            client = ClientBuilder().build()
        request = (
            client.request(scope["method"], upstream + scope["path"])
            .body_bytes(body)
            .header("content-type", "application/json")
            .streamed_read_buffer_limit(0)
            .build_streamed()
        )
        async with request as response:
            content_type = response.headers.get("content-type", "application/json")
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(b"content-type", content_type.encode())],
                }
            )
            reader = response.body_reader
            while (chunk := await reader.read_chunk()) is not None:
                await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


if __name__ == "__main__":
    uvicorn.run(
        passthrough(sys.argv[1].rstrip("/")),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
