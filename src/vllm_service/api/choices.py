"""Running the n choices of one request side by side, as one stream of (choice index, delta).

Every choice is its own engine sequence, started by the manager, which returns once the
choice's first delta is in hand: anything the engine rejects (context length, grammar, a full
queue) becomes a plain HTTP error instead of a broken stream. The request's usage is added up
here, once, as each choice's final delta passes. Closing the stream closes every choice, which
aborts their sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

from vllm_service.accounting.usage import UsageTally
from vllm_service.engine import TokenDelta
from vllm_service.manager import Answer, Route

_DONE: Final = object()


class ChoiceStreams:
    """The started answers of one request's choices, merged."""

    def __init__(
        self,
        answers: Sequence[Answer],
        usage: UsageTally | None = None,
        on_final: Callable[[int, TokenDelta], None] | None = None,
    ) -> None:
        self._answers = list(answers)
        #: The request's usage, complete once every choice has finished.
        self.usage = usage if usage is not None else UsageTally()
        #: Called with each choice's index and final delta (usage, timing) as it passes.
        self._on_final = on_final
        #: Each choice's text as it passed, when kept (the audit trail's content, the
        #: quality shadow), and its finish reason.
        self.texts: list[list[str]] | None = None
        self.finishes: list[str | None] = [None] * len(self._answers)

    def keep_text(self) -> None:
        self.texts = [[] for _ in self._answers]

    @classmethod
    async def start(
        cls,
        starts: Sequence[Awaitable[Answer]],
        usage: UsageTally | None = None,
        on_final: Callable[[int, TokenDelta], None] | None = None,
    ) -> ChoiceStreams:
        """Start every choice together; if one fails, close the others and re-raise."""
        if len(starts) == 1:  # the common case: no task needed
            return cls([await starts[0]], usage, on_final)
        tasks = [asyncio.ensure_future(s) for s in starts]
        try:
            answers = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                if not task.cancelled() and task.exception() is None:
                    await task.result().aclose()
            raise
        return cls(answers, usage, on_final)

    @property
    def routes(self) -> list[Route]:
        """How each choice is being served."""
        return [a.route for a in self._answers]

    async def aclose(self) -> None:
        for answer in self._answers:
            with contextlib.suppress(Exception):
                await answer.aclose()

    def _passed(self, index: int, delta: TokenDelta) -> tuple[int, TokenDelta]:
        if self.texts is not None:
            self.texts[index].append(delta.text)
        if delta.finish_reason is not None:
            self.finishes[index] = delta.finish_reason
            if delta.usage is not None:
                self.usage.add(index, delta.usage)
            if self._on_final is not None:
                self._on_final(index, delta)
        return index, delta

    async def merged(self) -> AsyncIterator[tuple[int, TokenDelta]]:
        """Deltas of all choices in arrival order; engine errors propagate."""
        if len(self._answers) == 1:
            try:
                async for delta in self._answers[0]:
                    yield self._passed(0, delta)
            finally:
                await self.aclose()
            return
        queue: asyncio.Queue[tuple[int, TokenDelta | BaseException | object]] = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                async for delta in self._answers[index]:
                    await queue.put((index, delta))
            except Exception as exc:
                await queue.put((index, exc))
            finally:
                await queue.put((index, _DONE))

        tasks = [asyncio.create_task(pump(i)) for i in range(len(self._answers))]
        remaining = len(tasks)
        try:
            while remaining:
                index, item = await queue.get()
                if item is _DONE:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                elif isinstance(item, TokenDelta):
                    yield self._passed(index, item)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.aclose()
