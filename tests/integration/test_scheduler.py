"""The embedded engine's scheduler seen through the API: batching, prefix caching, aborts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pytest

from tests.conftest import MODEL, SUBJECTS, Service, start_service

pytestmark = pytest.mark.integration


#: About 300 tokens of instructions shared by many requests, as a product's system prompt is.
SYSTEM_PROMPT = " ".join(
    [
        "You are the support assistant of a company that sells bicycles, spare parts and "
        "repair services in three cities. Answer politely and briefly, in plain English. "
        "Never invent prices, opening hours or stock levels; when a customer asks for them, "
        "tell them to check the website or call the shop. Recommend a repair appointment "
        "when a customer describes a safety problem such as worn brakes, a cracked frame or a "
        "loose headset. Do not give medical, legal or financial advice."
    ]
    * 3
)


@pytest.fixture(scope="module")
def uncached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The same model with prefix caching off: the reference for outputs over cached KV."""
    config = {
        "models": [
            {
                "name": MODEL,
                "options": {
                    "max_model_len": 1024,
                    "max_num_seqs": 16,
                    "enable_prefix_caching": False,
                },
            }
        ]
    }
    svc = start_service(tmp_path_factory.mktemp("uncached"), config)
    yield svc
    svc.stop()


@dataclass
class Outcome:
    text: str
    chunks: int
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


async def _stream(
    client: openai.AsyncOpenAI,
    messages: list[dict[str, str]],
    *,
    cancel_after: int | None = None,
    **params: Any,
) -> Outcome:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        **params,
    )
    out = Outcome("", 0, None, -1, -1, -1)
    async for chunk in stream:
        if chunk.usage is not None:
            out.prompt_tokens = chunk.usage.prompt_tokens
            out.completion_tokens = chunk.usage.completion_tokens
            details = chunk.usage.prompt_tokens_details
            out.cached_tokens = details.cached_tokens or 0 if details else 0
        for choice in chunk.choices:
            if choice.delta.content:
                out.text += choice.delta.content
                out.chunks += 1
            if choice.finish_reason is not None:
                out.finish_reason = choice.finish_reason
        if cancel_after is not None and out.chunks >= cancel_after:
            await stream.close()
            break
    return out


def _user(subject: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write two sentences about {subject}."}]


def _with_system(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(service: Service) -> None:
    params = {"max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 1234}

    async def main() -> None:
        client = service.async_client()
        alone = await _stream(client, _user("a red kite"), **params)
        crowd = [
            _stream(client, _user(s), max_tokens=24, temperature=0.7, seed=i)
            for i, s in enumerate(SUBJECTS[:15])
        ]
        together, *others = await asyncio.gather(
            _stream(client, _user("a red kite"), **params), *crowd
        )
        assert together.text == alone.text
        assert together.completion_tokens == alone.completion_tokens
        assert all(o.completion_tokens > 0 for o in others)
        await client.close()

    asyncio.run(main())


def test_32_mixed_requests_each_get_their_own_stream(service: Service) -> None:
    """Mixed lengths, stop strings and cancellations at once; then no cell is left behind."""
    before = service.wait_idle()
    plans: list[dict[str, Any]] = []
    for i in range(32):
        subject = SUBJECTS[i % 16] + ("" if i < 16 else " at night")
        plan: dict[str, Any] = {"messages": _user(subject), "max_tokens": 4 + (i * 7) % 29}
        if i % 4 == 1:
            plan["stop"] = [" the", "."]
        if i % 4 == 3:
            plan["cancel_after"] = 2
            plan["max_tokens"] = 200
            # It must still be running when the client leaves.
            plan["extra_body"] = {"ignore_eos": True}
        plans.append(plan)

    async def main() -> tuple[list[Outcome], list[Outcome]]:
        client = service.async_client()
        together = await asyncio.gather(*(_stream(client, temperature=0, **plan) for plan in plans))
        solo = []
        for plan in plans:
            if "cancel_after" in plan:
                solo.append(Outcome("", 0, None, -1, -1, -1))
                continue
            solo.append(await _stream(client, temperature=0, **plan))
        await client.close()
        return list(together), solo

    together, solo = asyncio.run(main())
    for plan, got, ref in zip(plans, together, solo, strict=True):
        if "cancel_after" in plan:
            assert got.chunks == 2
            assert got.finish_reason is None
            continue
        assert got.text == ref.text
        assert got.finish_reason == ref.finish_reason
        assert got.prompt_tokens == ref.prompt_tokens > 0
        assert got.completion_tokens == ref.completion_tokens
        # Every generated token is at most one chunk; a stop string's tokens are held back.
        assert got.chunks <= got.completion_tokens <= plan["max_tokens"]
        if "stop" in plan:
            assert " the" not in got.text
            assert "." not in got.text
    after = service.wait_idle()
    cancelled = sum(1 for p in plans if "cancel_after" in p)
    assert after["aborted"] == before["aborted"] + cancelled
    # Every cell llama.cpp holds is accounted for as a prefix-cache entry: none leaked.
    assert after["kv_cells_used"] == after["kv_cells_cached"]
    assert after["kv_cells_used"] <= after["kv_cells_total"]


def test_shared_system_prompt_is_computed_once(service: Service, uncached: Service) -> None:
    async def main() -> None:
        client = service.async_client()
        first = await _stream(
            client, _with_system("My brakes squeak. What should I do?"), max_tokens=8
        )
        second = await _stream(
            client, _with_system("Do you sell helmets for children?"), max_tokens=8
        )
        assert first.prompt_tokens > 280
        # The second request reuses the system prompt's KV (its ~270 tokens), never the whole
        # prompt: its question differs.
        assert 250 < second.cached_tokens < second.prompt_tokens
        reference = await _stream(
            uncached.async_client(),
            _with_system("Do you sell helmets for children?"),
            max_tokens=8,
            temperature=0,
        )
        assert reference.cached_tokens == 0
        again = await _stream(
            client, _with_system("Do you sell helmets for children?"), max_tokens=8, temperature=0
        )
        # The whole prompt but its last token comes from the cache; the answer is unchanged.
        assert again.cached_tokens == again.prompt_tokens - 1
        assert again.text == reference.text
        await client.close()

    asyncio.run(main())


def test_a_short_shared_prefix_is_copied_not_recomputed(
    service: Service, uncached: Service
) -> None:
    """Prompts with no system message still share the chat template's own (~20 tokens): a new
    one copies them from the cached entry (kept: it holds a long answer) and answers as a
    prefill of its whole prompt would."""
    service.wait_idle()
    first = [{"role": "user", "content": "Name a harbour."}]
    second = [{"role": "user", "content": "Describe a mountain railway."}]

    async def main() -> None:
        client = service.async_client()
        await _stream(client, first, max_tokens=48, temperature=0, extra_body={"ignore_eos": True})
        copies = service.engine_stats()["prefix_cache_copies"]
        answer = await _stream(client, second, max_tokens=8, temperature=0)
        assert service.engine_stats()["prefix_cache_copies"] == copies + 1
        assert 8 <= answer.cached_tokens < answer.prompt_tokens
        reference = await _stream(uncached.async_client(), second, max_tokens=8, temperature=0)
        assert reference.cached_tokens == 0
        assert answer.text == reference.text
        await client.close()

    asyncio.run(main())


def test_running_sequence_shares_its_prefix_by_copy(service: Service, uncached: Service) -> None:
    """A request arriving while another with the same system prompt runs copies its KV."""
    service.wait_idle()

    async def main() -> None:
        client = service.async_client()
        # Fill every idle slot with unrelated cache entries so no idle slot holds the prefix.
        await asyncio.gather(
            *(_stream(client, _user(s), max_tokens=2, temperature=0) for s in SUBJECTS)
        )
        copies = service.engine_stats()["prefix_cache_copies"]
        question = "How often should I oil my chain?"
        long_one = asyncio.create_task(
            _stream(client, _with_system("Tell me a long story."), max_tokens=120)
        )
        await service.until_running()
        await asyncio.sleep(0.5)  # let it finish its prompt
        joined = await _stream(client, _with_system(question), max_tokens=12, temperature=0)
        await long_one
        assert service.engine_stats()["prefix_cache_copies"] > copies
        assert joined.cached_tokens > 250
        reference = await _stream(
            uncached.async_client(), _with_system(question), max_tokens=12, temperature=0
        )
        assert joined.text == reference.text
        await client.close()

    asyncio.run(main())


def test_aborted_requests_free_capacity(service: Service) -> None:
    """200 clients give up after 0.5 s; their sequences are dropped, a new request is served."""
    before = service.wait_idle()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": 400,
        "temperature": 0.8,
        "ignore_eos": True,
    }

    async def main() -> int:
        limits = httpx2.Limits(max_connections=200)
        async with httpx2.AsyncClient(base_url=service.base_url, limits=limits) as http:

            async def give_up() -> bool:
                try:
                    r = await http.post("/v1/chat/completions", json=body, timeout=0.5)
                except httpx2.TimeoutException:
                    return False
                return r.status_code == 200

            done = await asyncio.gather(*(give_up() for _ in range(200)))
        return sum(done)

    completed = asyncio.run(main())
    # One snapshot in which nothing runs or waits: every sequence that reached the engine has
    # ended there, however many were still on their way when the clients gave up.
    after = service.wait_idle()
    submitted = after["submitted"] - before["submitted"]
    assert submitted > 0, "no request reached the engine before its client gave up"
    # What the engine ran to its end is what a client received; the rest was aborted.
    assert after["completed"] - before["completed"] == completed
    assert after["aborted"] - before["aborted"] == submitted - completed
    assert after["kv_cells_used"] == after["kv_cells_cached"]
    started = time.monotonic()
    r = httpx2.post(
        f"{service.base_url}/v1/chat/completions",
        json={**body, "max_tokens": 8},
        timeout=60,
    )
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] > 0
    # Reported, not asserted (no wall-clock thresholds in tests): see with `pytest -s`.
    print(f"fresh request after 200 aborted ones: {time.monotonic() - started:.2f} s")


def test_conversations_sharing_a_system_prompt_keep_their_own_cache(service: Service) -> None:
    """A new conversation that shares only the system prompt with a cached one does not
    overwrite it: the first conversation's next turn reuses its whole history."""
    service.wait_idle()

    async def main() -> None:
        client = service.async_client()
        first = _with_system("My brakes squeak. What should I do?")
        turn1 = await _stream(client, first, max_tokens=48, temperature=0)
        copies = service.engine_stats()["prefix_cache_copies"]
        for question in ("Do you sell helmets?", "Can I rent a bike?", "Where are you?"):
            other = await _stream(client, _with_system(question), max_tokens=8, temperature=0)
            assert other.cached_tokens > 250  # the shared system prompt, copied
        # the first of them at least shared the system prompt by a copy of the first
        # conversation's entry (later ones may reuse each other's shorter entries in place)
        assert service.engine_stats()["prefix_cache_copies"] > copies
        history = [
            *first,
            {"role": "assistant", "content": turn1.text},
            {"role": "user", "content": "And the chain?"},
        ]
        turn2 = await _stream(client, history, max_tokens=12, temperature=0)
        # everything up to the first turn's answer came from its own, kept, cache entry
        assert turn2.cached_tokens >= turn1.prompt_tokens + turn1.completion_tokens - 2
        assert turn2.completion_tokens == 12
        # Not compared with the uncached service: the reused entry holds the first answer's
        # KV as decoding computed it, one token per step, which differs in the last bits from
        # a prefill of the same text, and greedy decoding can follow that (issue 20).
        await client.close()

    asyncio.run(main())
