"""Stopping work for a client that has gone away before its response started.

A streaming response notices a disconnect by itself once it is sending. Before that (waiting
in the engine's queue, prefilling, or generating a whole non-streamed answer) nothing is sent,
so nothing would notice: the engine would finish work nobody reads. ``until_disconnected``
races that work against the ASGI ``http.disconnect`` message and cancels it, which closes the
engine iterators and aborts their sequences.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response

T = TypeVar("T")

#: Status logged for requests whose client left (nginx's convention; never seen by the client).
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client closed the connection before the response started."""


async def _disconnected(request: Request) -> None:
    # The body has been read by now: the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also on our own cancellation: neither task may outlive this call.
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled() and watcher.done() and not watcher.cancelled():
        raise ClientDisconnected
    return task.result()


async def on_client_disconnected(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)
