"""The n choices of one request: started together, merged in arrival order, usage added up
once per choice, and every choice closed when one fails to start."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from tests.fakes import FakeEngine, answer
from vllm_service.accounting.usage import UsageTally
from vllm_service.api.choices import ChoiceStreams
from vllm_service.engine import EngineUnavailableError, TokenDelta
from vllm_service.manager import Answer, Route


async def started(engine: FakeEngine) -> Answer:
    """A started answer straight from an engine (what the manager hands the API)."""
    stream = engine.generate(None)  # type: ignore[arg-type]
    first = await anext(stream)
    return Answer(Route(deployment=engine.name), first, stream)


def test_choices_merge_and_their_usage_is_added_once_each() -> None:
    engines = [FakeEngine("a"), FakeEngine("b")]
    engines[0].enqueue(answer("x", "y", prompt_tokens=5))
    engines[1].enqueue(answer("z", prompt_tokens=5))
    finals: list[int] = []

    async def scenario() -> list[tuple[int, str]]:
        streams = await ChoiceStreams.start(
            [started(e) for e in engines], UsageTally(), lambda i, _: finals.append(i)
        )
        assert [r.deployment for r in streams.routes] == ["a", "b"]
        seen = [(i, d.text) async for i, d in streams.merged()]
        assert (streams.usage.prompt_tokens, streams.usage.completion_tokens) == (5, 3)
        return seen

    seen = asyncio.run(scenario())
    assert [t for i, t in seen if i == 0] == ["x", "y", ""]
    assert [t for i, t in seen if i == 1] == ["z", ""]
    assert sorted(finals) == [0, 1]
    assert [e.endings for e in engines] == [["finished"], ["finished"]]


def test_when_one_choice_cannot_start_the_others_are_closed() -> None:
    ok, refusing = FakeEngine("ok"), FakeEngine("refusing")
    ok.enqueue(answer("a", "b"))
    refusing.enqueue([EngineUnavailableError("full")])

    async def scenario() -> None:
        starts: list[Awaitable[Answer]] = [started(ok), started(refusing)]
        with pytest.raises(EngineUnavailableError):
            await ChoiceStreams.start(starts)

    asyncio.run(scenario())
    assert ok.endings == ["closed"]


def test_leaving_the_merged_stream_early_closes_every_choice() -> None:
    engines = [FakeEngine("a"), FakeEngine("b")]
    for e in engines:
        e.enqueue(answer("1", "2", "3"))

    async def scenario() -> TokenDelta:
        streams = await ChoiceStreams.start([started(e) for e in engines])
        merged = streams.merged()
        _, first = await anext(merged)
        await merged.aclose()  # type: ignore[attr-defined]
        return first

    asyncio.run(scenario())
    assert [e.endings for e in engines] == [["closed"], ["closed"]]
