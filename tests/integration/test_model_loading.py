"""Many models on one endpoint, loaded on demand: the bundled model under two names with
different settings and one loaded at a time, plus a model whose file is not a model.

Real service, real llama.cpp, the official SDK; memory read from the service's /proc entry.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Service, start_service

ADMIN_KEY = "sk-loading-admin-0123456789abcdef"
USER_KEY = "sk-loading-user-0123456789abcdef"
A, B, BROKEN = "small-a", "small-b", "broken"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("loading")
    broken = tmp / "broken.gguf"
    broken.write_bytes(b"GGUF but not really a model file" * 64)
    os.environ["LOADING_ADMIN_KEY"] = ADMIN_KEY
    os.environ["LOADING_USER_KEY"] = USER_KEY
    keys = [
        {"name": "ops", "role": "admin", "key_env": "LOADING_ADMIN_KEY"},
        {"name": "app", "role": "user", "key_env": "LOADING_USER_KEY"},
    ]
    config = {
        "auth": {"enabled": True, "static_keys": keys, "public_metrics": True},
        "loading": {"max_loaded_models": 1, "preload": [], "retry_failed_after": 600},
        "models": [
            {"name": A, "options": {"max_model_len": 512, "max_num_seqs": 4}},
            {"name": B, "options": {"max_model_len": 1024, "max_num_seqs": 2}},
            {"name": BROKEN, "options": {"model": str(broken)}},
        ],
    }
    svc = start_service(tmp, config)
    try:
        yield svc
    finally:
        svc.stop()


def client(service: Service, key: str = USER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=key, max_retries=0)


def admin(service: Service, model: str, action: str, key: str = ADMIN_KEY) -> httpx2.Response:
    return httpx2.post(
        f"{service.base_url}/admin/models/{model}/{action}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def residency(service: Service, model: str) -> dict[str, Any]:
    body = httpx2.get(f"{service.base_url}/health", timeout=10).json()
    found: dict[str, Any] = body["engines"][model]["residency"]
    return found


def states(service: Service) -> dict[str, str]:
    listed = client(service).models.list().data
    return {m.id: m.model_extra["state"] for m in listed if m.model_extra}  # type: ignore[misc]


def rss_bytes(service: Service) -> int:
    for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def unload_all(service: Service) -> None:
    for model in (A, B):
        assert admin(service, model, "unload").status_code == 200


def chat(service: Service, model: str, text: str = "Say hello.") -> str:
    reply = client(service).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0
    )
    assert reply.model == model
    return reply.choices[0].message.content or ""


def test_models_start_unloaded_and_the_service_is_ready(service: Service) -> None:
    assert httpx2.get(f"{service.base_url}/ready", timeout=10).status_code == 200
    listed = states(service)
    assert listed[A] == listed[B] == listed[BROKEN] == "unloaded"
    model = client(service).models.retrieve(A)
    assert model.model_extra
    assert model.model_extra["state"] == "unloaded"


def test_alternating_requests_swap_the_models_with_no_failure(service: Service) -> None:
    unload_all(service)
    before = {m: residency(service, m)["loads"] for m in (A, B)}
    answers: dict[str, set[str]] = {A: set(), B: set()}
    for model in (A, B) * 3:
        answers[model].add(chat(service, model))
        listed = states(service)
        other = B if model == A else A
        assert (listed[model], listed[other]) == ("loaded", "unloaded")
    # the same file under both names, greedy: each swap serves the same answer again
    assert len(answers[A]) == 1
    assert answers[A] == answers[B]
    after = {m: residency(service, m) for m in (A, B)}
    assert {m: after[m]["loads"] - before[m] for m in (A, B)} == {A: 3, B: 3}
    assert after[A]["unloads"]["lru"] >= 3
    assert after[A]["load_seconds"] > 0
    assert after[A]["memory_bytes"] > 90_000_000


def test_concurrent_first_requests_wait_for_one_load(service: Service) -> None:
    unload_all(service)
    before = residency(service, B)["loads"]

    async def burst() -> list[str]:
        sdk = openai.AsyncOpenAI(base_url=f"{service.base_url}/v1", api_key=USER_KEY, max_retries=0)
        async with sdk:
            replies = await asyncio.gather(
                *(
                    sdk.chat.completions.create(
                        model=B,
                        messages=[{"role": "user", "content": f"Count to {n}."}],
                        max_tokens=8,
                        temperature=0,
                    )
                    for n in range(6)
                )
            )
        return [r.choices[0].message.content or "" for r in replies]

    assert all(asyncio.run(burst()))
    assert residency(service, B)["loads"] == before + 1


def test_concurrent_requests_for_both_models_are_all_served(service: Service) -> None:
    async def burst() -> list[tuple[str, str]]:
        sdk = openai.AsyncOpenAI(base_url=f"{service.base_url}/v1", api_key=USER_KEY, max_retries=0)
        async with sdk:

            async def one(model: str) -> tuple[str, str]:
                reply = await sdk.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Name a colour."}],
                    max_tokens=16,
                    temperature=0,
                )
                return reply.model, reply.choices[0].message.content or ""

            return await asyncio.gather(*(one(m) for m in (A, B) * 4))

    served = asyncio.run(burst())
    assert [model for model, _ in served] == [A, B] * 4
    assert len({text for _, text in served}) == 1  # the same greedy answer, whichever model
    for model in (A, B):
        assert residency(service, model)["users"] == 0


def test_memory_returns_after_an_unload(service: Service) -> None:
    unload_all(service)
    chat(service, A)  # warm: the first load of a process maps libraries once and for all
    unload_all(service)
    before = rss_bytes(service)
    assert admin(service, A, "load").json()["state"] == "loaded"
    chat(service, A)
    loaded = rss_bytes(service)
    assert admin(service, A, "unload").json()["unloaded"] is True
    after = rss_bytes(service)
    assert loaded - before > 50 * 2**20  # the model and its KV cache were really in memory
    assert abs(after - before) <= 0.10 * before, (before, loaded, after)


def test_a_model_serving_a_request_is_not_unloaded_by_hand(service: Service) -> None:
    stream = client(service).chat.completions.create(
        model=A,
        messages=[{"role": "user", "content": "Tell a long story."}],
        max_tokens=200,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    next(iter(stream))
    refused = admin(service, A, "unload")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "model_busy"
    assert sum(1 for _ in stream) > 10  # the stream goes on to its end
    assert admin(service, A, "unload").json()["unloaded"] is True


def test_a_model_that_fails_to_load_is_a_clear_503_and_the_rest_serve(service: Service) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        chat(service, BROKEN)
    assert failed.value.status_code == 503
    message = failed.value.body["message"]  # type: ignore[index]
    assert "failed to load" in message
    assert "broken.gguf" in message
    again = httpx2.post(
        f"{service.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {USER_KEY}"},
        json={"model": BROKEN, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert again.status_code == 503
    assert int(again.headers["retry-after"]) > 1
    assert residency(service, BROKEN)["failures"] == 1  # answered without trying again
    model = client(service).models.retrieve(BROKEN)
    assert model.model_extra
    assert model.model_extra["state"] == "failed"
    assert "broken.gguf" in model.model_extra["state_reason"]
    health = httpx2.get(f"{service.base_url}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert chat(service, A)
    # an admin load tries again at once, and reports the reason
    retried = admin(service, BROKEN, "load")
    assert retried.status_code == 503
    assert residency(service, BROKEN)["failures"] == 2


def test_loading_by_hand_takes_the_admin_permission(service: Service) -> None:
    assert admin(service, A, "load", key=USER_KEY).status_code == 403
    assert admin(service, A, "unload", key=USER_KEY).status_code == 403
    unknown = admin(service, "no-such-model", "load")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


def test_loads_and_unloads_are_exported_as_metrics(service: Service) -> None:
    chat(service, B)
    text = httpx2.get(f"{service.base_url}/metrics", timeout=10).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("vllm_model_loaded", (("deployment", B),))] == 1
    assert samples[("vllm_model_loaded", (("deployment", A),))] == 0
    loads = samples[("vllm_model_loads_total", (("deployment", B), ("outcome", "success")))]
    assert loads == residency(service, B)["loads"]
    assert samples[("vllm_model_loads_total", (("deployment", BROKEN), ("outcome", "failure")))]
