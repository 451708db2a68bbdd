"""The prefix cache's host-RAM tier, on the bundled model: a conversation whose slot was taken by
others comes back from host memory, bit for bit, and the tier stays within its budget."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from tests.conftest import MODEL, SUBJECTS, Service, start_service

pytestmark = pytest.mark.integration

#: KV bytes per token of the bundled model (30 layers x 3 KV heads x 64 x K and V x f16).
KV_BYTES_PER_TOKEN = 30 * 3 * 64 * 2 * 2


def _service(tmp: Any, **options: Any) -> Service:
    config = {
        "models": [
            {"name": MODEL, "options": {"max_model_len": 1024, "max_num_seqs": 2, **options}}
        ]
    }
    return start_service(tmp, config)


@pytest.fixture(scope="module", params=[None, False], ids=["default", "flash-attention-off"])
def two_slots(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    # Without flash attention llama.cpp keeps V transposed in the cache: saved, restored and
    # copied between slots all the same.
    options: dict[str, Any] = {"prefix_cache_host_bytes": "64MiB"}
    if request.param is not None:
        options["flash_attention"] = request.param
    svc = _service(tmp_path_factory.mktemp("host-tier"), **options)
    mode = httpx2.get(f"{svc.base_url}/health", timeout=10).json()["engines"][MODEL]
    assert mode["flash_attention"] == ("auto" if request.param is None else "off")
    yield svc
    svc.stop()


def _ask(client: openai.OpenAI, messages: list[dict[str, str]], tokens: int) -> Any:
    return client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=tokens,
        temperature=0,
        extra_body={"ignore_eos": True},
    )


def _conversation(subject: str) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": f"Tell me about {subject}: where they come from, how they are made or "
            "found, and why people care about them. Three sentences, please.",
        }
    ]


def _cached(answer: Any) -> int:
    details = answer.usage.prompt_tokens_details
    return int(details.cached_tokens or 0) if details else 0


def test_a_conversation_whose_slot_was_reused_comes_back_from_host_memory(
    two_slots: Service,
) -> None:
    client = two_slots.client()
    first = _ask(client, _conversation("lighthouses"), 48)
    prompt = [
        *_conversation("lighthouses"),
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Which is the oldest one still working?"},
    ]
    _ask(client, prompt, 16)
    # The same turn again while its entry is in a slot: all but the last prompt token reused.
    kept = _ask(client, prompt, 16)
    assert _cached(kept) == kept.usage.prompt_tokens - 1
    before = two_slots.engine_stats()
    for subject in SUBJECTS[:4]:  # two slots: these take both, the conversation goes to RAM
        _ask(client, _conversation(subject), 24)
    after_others = two_slots.engine_stats()
    assert after_others["host_cache_entries"] >= 1
    back = _ask(client, prompt, 16)
    stats = two_slots.engine_stats()
    assert _cached(back) == back.usage.prompt_tokens - 1
    restored = stats["prefix_cache_host_hit_tokens"] - after_others["prefix_cache_host_hit_tokens"]
    assert restored == back.usage.prompt_tokens - 1
    assert before["prefix_cache_host_hit_tokens"] == after_others["prefix_cache_host_hit_tokens"]
    # The restored KV is the same as the kept one, bit for bit: so is the greedy answer.
    assert back.choices[0].message.content == kept.choices[0].message.content
    assert stats["kv_cells_used"] == stats["kv_cells_cached"]  # nothing leaked
    metrics = httpx2.get(f"{two_slots.base_url}/metrics", timeout=10).text
    assert "vllm_engine_prefix_cache_host_hit_tokens_total" in metrics
    assert "vllm_prefix_cache_host_bytes" in metrics


def test_without_the_host_tier_the_conversation_is_computed_again(
    tmp_path: Any,
) -> None:
    svc = _service(tmp_path, prefix_cache_host_bytes=0)
    try:
        client = svc.client()
        prompt = _conversation("lighthouses")
        _ask(client, prompt, 32)
        for subject in SUBJECTS[:4]:
            _ask(client, _conversation(subject), 24)
        back = _ask(client, prompt, 8)
        assert _cached(back) < back.usage.prompt_tokens // 2  # the chat template's start
        assert svc.engine_stats()["host_cache_entries"] == 0
    finally:
        svc.stop()


def test_the_host_tier_stays_within_its_budget(tmp_path: Any) -> None:
    budget = 6 * 1024 * 1024  # room for two or three of these conversations' KV
    svc = _service(tmp_path, prefix_cache_host_bytes=budget)
    try:
        client = svc.client()
        for subject in SUBJECTS[:10]:
            answer = _ask(client, _conversation(subject), 48)
            entry = (answer.usage.prompt_tokens + 48) * KV_BYTES_PER_TOKEN
            assert entry < budget / 2  # the budget does hold some
            stats = svc.engine_stats()
            assert stats["host_cache_bytes"] <= budget
        assert stats["host_cache_entries"] >= 2
        assert stats["host_cache_evictions"] >= 3
        assert stats["kv_cells_used"] == stats["kv_cells_cached"]
    finally:
        svc.stop()


def test_an_entry_being_restored_is_not_evicted_to_save_the_slot_it_goes_to(
    tmp_path: Any,
) -> None:
    # One slot, room for one conversation in RAM: the slot's entry must be saved before the
    # restored one overwrites it, and the only room is the restored entry's own.
    svc = _service(tmp_path, max_num_seqs=1, prefix_cache_host_bytes=3 * 1024 * 1024)
    try:
        client = svc.client()
        prompt = _conversation("lighthouses")
        first = _ask(client, prompt, 48)
        assert (first.usage.prompt_tokens + 48) * KV_BYTES_PER_TOKEN > 1024 * 1024
        _ask(client, _conversation("volcanoes"), 48)  # the lighthouses go to RAM
        saved = svc.engine_stats()
        assert saved["host_cache_entries"] == 1
        back = _ask(client, prompt, 48)
        stats = svc.engine_stats()
        assert _cached(back) == back.usage.prompt_tokens - 1
        hits = stats["prefix_cache_host_hit_tokens"] - saved["prefix_cache_host_hit_tokens"]
        assert hits == back.usage.prompt_tokens - 1
        # The volcanoes did not fit beside it: the restored entry stayed, nothing was evicted.
        assert stats["host_cache_entries"] == 1
        assert stats["host_cache_evictions"] == 0
        assert stats["host_cache_bytes"] <= 3 * 1024 * 1024
        assert stats["kv_cells_used"] == stats["kv_cells_cached"]
    finally:
        svc.stop()
