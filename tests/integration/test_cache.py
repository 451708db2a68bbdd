"""The response cache through real service processes, a real redis-server, and the openai SDK."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.conftest import MODEL, Service, free_port, start_service, system_binary

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Say hello in French."}]


class RedisServer:
    """A redis-server process on a loopback port, which a test may kill and start again."""

    def __init__(self, workdir: Path) -> None:
        self.exe = system_binary("redis-server", "redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        options += ["--appendonly", "no", "--dir", str(self.workdir)]
        self.process = subprocess.Popen(
            [self.exe, *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


def model_entry() -> dict[str, Any]:
    return {"name": MODEL, "options": {"max_model_len": 1024, "max_num_seqs": 16}}


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service with the default (memory) cache and the semantic cache on."""
    config = {
        "cache": {"enabled": True, "semantic": {"enabled": True, "threshold": 0.9}},
        "models": [model_entry()],
    }
    svc = start_service(tmp_path_factory.mktemp("cached"), config)
    yield svc
    svc.stop()


def redis_config(url: str) -> dict[str, Any]:
    return {
        "cache": {
            "enabled": True,
            "backend": "redis",
            "redis_url": url,
            "redis_retry_interval": 0.2,
            "semantic": {"enabled": True},
        },
        "models": [model_entry()],
    }


@pytest.fixture(scope="module")
def redis_pair(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[tuple[Service, Service]]:
    """Two service processes sharing one Redis."""
    first = start_service(tmp_path_factory.mktemp("a"), redis_config(redis_server.url))
    try:
        second = start_service(tmp_path_factory.mktemp("b"), redis_config(redis_server.url))
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def raw_chat(client: openai.OpenAI, **extra: Any) -> Any:
    """The raw response (headers and all) of a greedy chat request."""
    args: dict[str, Any] = {"model": MODEL, "messages": QUESTION, "max_tokens": 16}
    args["temperature"] = 0
    args.update(extra)
    return client.chat.completions.with_raw_response.create(**args)


def chat(client: openai.OpenAI, **extra: Any) -> tuple[str, Any]:
    """(x-cache header, parsed completion) of a greedy chat request."""
    raw = raw_chat(client, **extra)
    return raw.headers["x-cache"], raw.parse()


def stream_chat(client: openai.OpenAI, **extra: Any) -> tuple[str, str, Any, list[Any]]:
    """(x-cache, streamed text, the usage chunk's usage, every chunk) of a streamed request."""
    args: dict[str, Any] = {"model": MODEL, "messages": QUESTION, "max_tokens": 16}
    args.update(temperature=0, stream=True, stream_options={"include_usage": True}, **extra)
    with client.chat.completions.with_streaming_response.create(**args) as raw:
        header = raw.headers["x-cache"]
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    return header, text, usage, chunks


def purge(svc: Service) -> None:
    assert httpx2.delete(f"{svc.base_url}/admin/cache", timeout=10).status_code == 200


def test_a_repeated_chat_request_is_a_hit_with_the_same_content_and_usage(
    cached: Service,
) -> None:
    purge(cached)
    client = cached.client()
    first_header, first = chat(client)
    second_header, second = chat(client)
    assert (first_header, second_header) == ("miss", "hit")
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage == first.usage
    assert second.choices[0].finish_reason == first.choices[0].finish_reason
    # A streamed request for the same answer replays it as proper SSE chunks.
    header, text, usage, chunks = stream_chat(client)
    assert header == "hit"
    assert text == first.choices[0].message.content
    assert usage == first.usage
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == first.choices[0].finish_reason


def test_a_streamed_miss_is_stored_and_replayed_for_a_plain_request(cached: Service) -> None:
    purge(cached)
    client = cached.client()
    header, text, usage, _ = stream_chat(client, max_tokens=12)
    assert header == "miss"
    again_header, again = chat(client, max_tokens=12)
    assert again_header == "hit"
    assert again.choices[0].message.content == text
    assert again.usage == usage


def test_completions_hit_too_and_logprobs_are_replayed(cached: Service) -> None:
    purge(cached)
    client = cached.client()
    args: dict[str, Any] = {
        "model": MODEL,
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": 2,
    }
    first = client.completions.with_raw_response.create(**args)
    second = client.completions.with_raw_response.create(**args)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    a, b = first.parse(), second.parse()
    assert b.choices[0].text == a.choices[0].text
    assert b.choices[0].logprobs == a.choices[0].logprobs
    assert b.usage == a.usage
    streamed = client.completions.with_raw_response.create(**args, stream=True)
    assert streamed.headers["x-cache"] == "hit"
    text = "".join(c.choices[0].text for c in streamed.parse() if c.choices)
    assert text == a.choices[0].text


def test_sampled_requests_are_not_cached_by_default(cached: Service) -> None:
    client = cached.client()
    headers = [chat(client, temperature=0.9)[0] for _ in range(2)]
    assert headers == ["bypass", "bypass"]
    # A seed makes a sampled answer reproducible, so it is cached.
    seeded = [chat(client, temperature=0.9, seed=11)[0] for _ in range(2)]
    assert seeded[1] == "hit"


def test_no_cache_refreshes_no_store_bypasses_and_a_key_can_be_purged(cached: Service) -> None:
    purge(cached)
    client = cached.client()
    chat(client)
    refreshed = raw_chat(client, extra_headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "miss"
    bypassed = raw_chat(client, extra_headers={"Cache-Control": "no-store"})
    assert bypassed.headers["x-cache"] == "bypass"
    key = refreshed.headers["x-cache-key"]
    assert chat(client)[0] == "hit"
    gone = httpx2.delete(f"{cached.base_url}/admin/cache/{key}", timeout=10)
    assert gone.json() == {"purged": 1}
    assert chat(client)[0] == "miss"


def test_a_streamed_request_cut_short_is_not_stored(cached: Service) -> None:
    purge(cached)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
    }
    with (
        httpx2.Client(base_url=cached.base_url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.headers["x-cache"] == "miss"
        for _ in response.iter_lines():
            break  # the client leaves after the first chunk
    cached.wait_idle()
    plain = {**body, "stream": False}
    again = httpx2.post(f"{cached.base_url}/v1/chat/completions", json=plain, timeout=120)
    assert again.headers["x-cache"] == "miss"


def test_the_choices_of_one_request_do_not_wait_for_each_other(cached: Service) -> None:
    purge(cached)

    def waits() -> float:
        metrics = httpx2.get(f"{cached.base_url}/metrics", timeout=10).text
        line = next(x for x in metrics.splitlines() if x.startswith("vllm_cache_single_flight"))
        return float(line.rsplit(" ", 1)[1])

    before = waits()
    header, completion = chat(cached.client(), n=2)
    assert header == "miss"
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].message.content == completion.choices[1].message.content
    assert waits() == before
    assert chat(cached.client(), n=2)[0] == "hit"


def test_identical_concurrent_requests_cause_exactly_one_generation(cached: Service) -> None:
    purge(cached)
    before = cached.wait_idle()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name three rivers of Europe."}],
        "max_tokens": 48,
        "temperature": 0,
    }

    async def main() -> list[httpx2.Response]:
        async with httpx2.AsyncClient(base_url=cached.base_url, timeout=120) as http:
            return await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(10))
            )

    responses = asyncio.run(main())
    after = cached.wait_idle()
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.headers["x-cache"] for r in responses) == ["hit"] * 9 + ["miss"]
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1
    # The engine admitted one sequence's prompt, not ten.
    prompt_tokens = responses[0].json()["usage"]["prompt_tokens"]
    assert after["prompt_tokens"] - before["prompt_tokens"] == prompt_tokens


def test_a_reworded_question_hits_the_semantic_cache_and_an_unrelated_one_does_not(
    cached: Service,
) -> None:
    purge(cached)
    client = cached.client()
    _, original = chat(client, messages=[{"role": "user", "content": "Say hello in French."}])
    header, reworded = chat(
        client, messages=[{"role": "user", "content": "How do you say hello in French?"}]
    )
    assert header == "hit"
    assert reworded.choices[0].message.content == original.choices[0].message.content
    unrelated_header, _ = chat(
        client, messages=[{"role": "user", "content": "Write a haiku about the sea."}]
    )
    assert unrelated_header == "miss"
    # Other parameters make another context: the reworded question misses there.
    other = chat(client, max_tokens=9, messages=[{"role": "user", "content": "Hi in French?"}])
    assert other[0] == "miss"
    metrics = httpx2.get(f"{cached.base_url}/metrics", timeout=10).text
    assert f'vllm_cache_lookups_total{{model="{MODEL}",outcome="semantic_hit"}}' in metrics


def test_two_services_on_one_redis_share_hits(redis_pair: tuple[Service, Service]) -> None:
    first, second = redis_pair
    purge(first)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Count to five."}]}
    miss_header, original = chat(first.client(), **body)
    hit_header, shared = chat(second.client(), **body)
    assert (miss_header, hit_header) == ("miss", "hit")
    assert shared.choices[0].message.content == original.choices[0].message.content
    assert shared.usage == original.usage


def test_semantic_neighbours_are_shared_through_redis(
    redis_pair: tuple[Service, Service],
) -> None:
    first, second = redis_pair
    purge(first)
    original = chat(first.client(), messages=[{"role": "user", "content": "Say hi in Spanish."}])
    reworded = chat(
        second.client(), messages=[{"role": "user", "content": "How do you say hi in Spanish?"}]
    )
    assert (original[0], reworded[0]) == ("miss", "hit")
    assert reworded[1].choices[0].message.content == original[1].choices[0].message.content


def test_a_dead_redis_degrades_the_cache_but_never_a_request(
    redis_pair: tuple[Service, Service], redis_server: RedisServer
) -> None:
    first, _ = redis_pair
    client = first.client()
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Name a colour."}]}
    chat(client, **body)
    redis_server.kill()
    try:
        for _ in range(3):
            header, answer = chat(client, **body)
            assert header == "miss"
            assert answer.choices[0].message.content
        health = httpx2.get(f"{first.base_url}/health", timeout=10).json()
        assert health["status"] == "ok"
        assert health["cache"]["state"] == "degraded"
        metrics = httpx2.get(f"{first.base_url}/metrics", timeout=10).text
        assert "vllm_cache_up 0.0" in metrics
        assert 'vllm_cache_errors_total{operation="get"}' in metrics
    finally:
        redis_server.start()
    # Redis is back (empty: it kept nothing on disk); after the retry interval caching resumes.
    deadline = time.monotonic() + 30
    while httpx2.get(f"{first.base_url}/health", timeout=10).json()["cache"]["state"] != "ok":
        assert time.monotonic() < deadline, "the cache never recovered"
        time.sleep(0.1)
    assert [chat(client, **body)[0] for _ in range(2)] == ["miss", "hit"]


def test_a_stale_answer_is_the_fallback_when_every_deployment_fails() -> None:
    from fastapi.testclient import TestClient
    from starlette.applications import Starlette
    from starlette.routing import Route

    from tests.conftest import serve_in_thread
    from tests.integration.test_upstream_faults import Faulty
    from vllm_service.api.app import create_app
    from vllm_service.config import load_settings

    upstream = Faulty()
    app = Starlette(routes=[Route("/switch/v1/chat/completions", upstream.chat, methods=["POST"])])
    settings = load_settings(
        None,
        cache={"ttl": 0.2, "stale_if_error": 600},
        models=[
            {
                "name": "flaky",
                "engine": "upstream",
                "options": {
                    "base_url": f"http://127.0.0.1:{upstream.port}/switch/v1",
                    "model": "m",
                },
                "retry": {"max_attempts": 1},
            }
        ],
    )

    def ask(content: str = "hi") -> Any:
        body = {"model": "flaky", "messages": [{"role": "user", "content": content}]}
        return client.post("/v1/chat/completions", json={**body, "temperature": 0})

    with serve_in_thread(app, upstream.port), TestClient(create_app(settings)) as client:
        fresh = ask()
        assert (fresh.status_code, fresh.headers["x-cache"]) == (200, "miss")
        time.sleep(0.3)  # the answer is past its TTL now, within its stale window
        upstream.mode = "fail500"
        calls = upstream.calls
        stale = ask()
        assert upstream.calls == calls + 1  # the deployment was tried first
        assert stale.status_code == 200
        assert stale.headers["x-cache"] == "hit"
        assert stale.headers["x-vllm-service-deployment"] == "cache"
        assert stale.headers["x-vllm-service-fallback"] == "true"
        assert stale.json()["choices"] == fresh.json()["choices"]
        # Nothing cached for this one: the client gets the deployment's error, cleanly.
        failed = ask("something else")
        assert failed.status_code >= 500
        assert "error" in failed.json()
        metrics = client.get("/metrics").text
        assert 'vllm_cache_lookups_total{model="flaky",outcome="stale_hit"} 1.0' in metrics
