"""The least a Python proxy adds here: the reference for benchmarks/upstream_overhead.py.

A bare ASGI app on uvicorn (uvloop, httptools), with no framework, validation, routing, breaker,
cache or accounting: it forwards each request's body to the upstream with the service's own
HTTP client (aiohttp) and streams the answer back chunk by chunk. Whatever the service adds
beyond this is the price of its features; what this adds is the price of being a Python proxy.

    python benchmarks/passthrough_proxy.py UPSTREAM_URL PORT
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn


def passthrough(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if session is None:
            session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        async with session.request(
            scope["method"],
            upstream + scope["path"],
            data=body,
            headers={"content-type": "application/json"},
        ) as response:
            content_type = response.headers.get("content-type", "application/json")
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(b"content-type", content_type.encode())],
                }
            )
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
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
