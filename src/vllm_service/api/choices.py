"""Running the n choices of one request side by side, as one stream of (choice index, delta).

Every choice is its own engine sequence. Before a response starts, each choice's first delta is
awaited, so that anything the engine rejects (context length, grammar, a full queue) becomes a
plain HTTP error instead of a broken stream. Closing the stream closes every engine iterator,
which aborts their sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

from vllm_service.engine import TokenDelta

_DONE: Final = object()


class ChoiceStreams:
    """The engine iterators of one request's choices, primed and then merged."""

    def __init__(
        self,
        streams: Sequence[AsyncIterator[TokenDelta]],
        on_final: Callable[[int, TokenDelta], None] | None = None,
    ) -> None:
        self._streams = list(streams)
        self._first: list[TokenDelta] = []
        #: Called with each choice's index and final delta (usage, timing) as it passes.
        self._on_final = on_final

    async def prime(self) -> None:
        """Await every choice's first delta; on any failure close all and re-raise."""
        if len(self._streams) == 1:  # the common case: no task needed
            try:
                self._first = [await anext(self._streams[0])]
            except BaseException:
                await self.aclose()
                raise
            return
        tasks = [asyncio.ensure_future(anext(s)) for s in self._streams]
        try:
            self._first = list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.aclose()
            raise

    async def aclose(self) -> None:
        for stream in self._streams:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    async def merged(self) -> AsyncIterator[tuple[int, TokenDelta]]:
        """Deltas of all choices in arrival order; engine errors propagate."""
        async for index, delta in self._merged():
            if delta.finish_reason is not None and self._on_final is not None:
                self._on_final(index, delta)
            yield index, delta

    async def _merged(self) -> AsyncIterator[tuple[int, TokenDelta]]:
        if len(self._streams) == 1:
            try:
                yield 0, self._first[0]
                if self._first[0].finish_reason is None:
                    async for delta in self._streams[0]:
                        yield 0, delta
            finally:
                await self.aclose()
            return
        queue: asyncio.Queue[tuple[int, TokenDelta | BaseException | object]] = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                first = self._first[index]
                await queue.put((index, first))
                if first.finish_reason is None:
                    async for delta in self._streams[index]:
                        await queue.put((index, delta))
            except Exception as exc:
                await queue.put((index, exc))
            finally:
                await queue.put((index, _DONE))

        tasks = [asyncio.create_task(pump(i)) for i in range(len(self._streams))]
        remaining = len(tasks)
        try:
            while remaining:
                index, item = await queue.get()
                if item is _DONE:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                elif isinstance(item, TokenDelta):
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.aclose()
