"""Concurrent requests: each gets its own stream, correct usage, and disconnects free the engine."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from tests.conftest import MODEL, SUBJECTS, Service

pytestmark = pytest.mark.integration


async def _stream(service: Service, topic: str, max_tokens: int) -> tuple[str, int, int]:
    client = service.async_client()
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Write two sentences about {topic}."}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, content_chunks, completion_tokens = "", 0, -1
    async for chunk in stream:
        if chunk.usage is not None:
            completion_tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
                content_chunks += 1
    await client.close()
    return text, content_chunks, completion_tokens


def test_sixteen_concurrent_streams_match_their_solo_runs(service: Service) -> None:
    async def main() -> None:
        solo = [await _stream(service, topic, 32) for topic in SUBJECTS[:4]]
        together = await asyncio.gather(*(_stream(service, t, 32) for t in SUBJECTS))
        for (text, _, tokens), (alone_text, _, alone_tokens) in zip(
            together[:4], solo, strict=True
        ):
            # Greedy output does not depend on what else is in the batch.
            assert text == alone_text
            assert tokens == alone_tokens
        seen = set()
        for text, chunks, tokens in together:
            assert text
            assert 0 < tokens <= 32
            # One token per chunk, at most: the final EOS token carries no text.
            assert chunks <= tokens
            seen.add(text)
        assert len(seen) == len(SUBJECTS)

    asyncio.run(main())


def test_client_disconnect_stops_generation(service: Service) -> None:
    aborted_before = service.engine_stats()["aborted"]

    async def main() -> None:
        client = service.async_client()
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write a very long essay about oceans."}],
            max_tokens=900,
            temperature=0,
            stream=True,
        )
        received = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
            if received >= 5:
                break
        assert service.engine_stats()["running"] == 1
        await stream.close()
        await client.close()

    asyncio.run(main())
    detail = service.wait_idle()
    # Stopped by the disconnect, not by running out its 900 tokens.
    assert detail["aborted"] == aborted_before + 1
    # Every cell llama.cpp holds belongs to the prefix cache now: nothing leaked.
    assert detail["kv_cells_used"] == detail["kv_cells_cached"]
    r = httpx2.post(
        f"{service.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )
    assert r.status_code == 200
