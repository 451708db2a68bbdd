"""Where the engine puts new work among its slots: beside the running sequences, so that a step
stays one forward pass (llama.cpp runs each run of consecutive seq_ids as its own pass)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from tests.conftest import MODEL, SUBJECTS, Service, start_service

pytestmark = pytest.mark.integration


@pytest.fixture
def eight_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    config = {"models": [{"name": MODEL, "options": {"max_model_len": 512, "max_num_seqs": 8}}]}
    svc = start_service(tmp_path_factory.mktemp("placement"), config)
    yield svc
    svc.stop()


def _ask(subject: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a short paragraph about {subject}."}]


async def _answer(client: openai.AsyncOpenAI, messages: list[dict[str, str]], tokens: int) -> Any:
    return await client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=tokens,
        temperature=0,
        extra_body={"ignore_eos": True},
    )


def test_concurrent_work_runs_side_by_side_whatever_the_cache_order(
    eight_slots: Service,
) -> None:
    async def main() -> None:
        client = eight_slots.async_client()
        # Eight cached conversations fill slots 0-7; then 1, 3, 5 and 7 are used again, so
        # that the least recently used slots are 0, 2, 4 and 6: scattered.
        for subject in SUBJECTS[:8]:
            await _answer(client, _ask(subject), 40)
        for subject in SUBJECTS[1:8:2]:
            again = await _answer(client, _ask(subject), 4)
            assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
        eight_slots.wait_idle()
        before = eight_slots.engine_stats()
        new = [asyncio.create_task(_answer(client, _ask(s), 48)) for s in SUBJECTS[8:11]]
        await eight_slots.until_running(3)
        # A returning conversation, its entry in a slot away from the running ones.
        returning = await _answer(client, _ask(SUBJECTS[4]), 8)
        await asyncio.gather(*new)
        after = eight_slots.wait_idle()
        # Its whole prompt but the last token came from its cache entry (moved by a copy)...
        details = returning.usage.prompt_tokens_details
        assert details.cached_tokens == returning.usage.prompt_tokens - 1
        # ...and every step ran its sequences as one run of consecutive seq_ids.
        steps = after["steps"] - before["steps"]
        assert steps >= 48  # the new ones run 48 steps, together or not
        assert after["step_seq_runs"] - before["step_seq_runs"] == steps
        assert after["kv_cells_used"] == after["kv_cells_cached"]
        await client.close()

    asyncio.run(main())
    metrics = httpx2.get(f"{eight_slots.base_url}/metrics").text
    assert "vllm_engine_step_seq_runs_total" in metrics
