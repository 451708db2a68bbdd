"""Fault injection: an upstream that answers 500, hangs, or dies mid-stream (a real HTTP
server in this process), behind the manager's breakers, timeouts and fallbacks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port, serve_in_thread
from vllm_service.api.app import create_app
from vllm_service.config import load_settings

pytestmark = pytest.mark.integration


def _chunk(content: str | None, finish: str | None = None) -> str:
    delta = {"content": content} if content is not None else {}
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


class Faulty:
    """An OpenAI-compatible upstream whose behaviour the test switches."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.port = free_port()
        self.calls = 0

    async def chat(self, request: Request) -> Response:
        self.calls += 1
        mode = request.path_params.get("mode", self.mode)
        if mode == "fail500":
            return Response('{"error": {"message": "boom"}}', status_code=500)
        if mode == "hang":
            await asyncio.sleep(30)

        async def events() -> AsyncIterator[str]:
            for word in ("one", " two", " three"):
                yield _chunk(word)
                await asyncio.sleep(0.05)
            if mode == "die":
                raise RuntimeError("the upstream process died")
            yield _chunk(None, "stop")
            usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def faulty() -> Iterator[Faulty]:
    upstream = Faulty()
    app = Starlette(
        routes=[
            Route("/switch/v1/chat/completions", upstream.chat, methods=["POST"]),
            Route("/{mode}/v1/chat/completions", upstream.chat, methods=["POST"]),
        ]
    )
    with serve_in_thread(app, upstream.port):
        yield upstream


@pytest.fixture(scope="module")
def client(faulty: Faulty) -> Iterator[TestClient]:
    def upstream(name: str, path: str, **extra: object) -> dict[str, object]:
        return {
            "name": name,
            "engine": "upstream",
            "options": {
                "base_url": f"http://127.0.0.1:{faulty.port}/{path}/v1",
                "model": "m",
                "read_timeout": 0.5,
            },
            **extra,
        }

    settings = load_settings(
        None,
        models=[
            upstream(
                "flaky",
                "switch",
                fallbacks=["safe"],
                breaker={"failure_threshold": 5, "recovery_timeout": 1.0},
                retry={"max_attempts": 1},
            ),
            upstream("safe", "ok"),
            upstream("slow", "hang", fallbacks=["safe"]),
            upstream("dying", "die"),
        ],
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def ask(client: TestClient, model: str) -> tuple[int, str, str]:
    r = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )
    return r.status_code, r.headers.get("x-vllm-service-deployment", ""), r.text


def breaker_of(client: TestClient, deployment: str) -> dict[str, object]:
    engines: dict[str, dict[str, object]] = client.get("/health").json()["engines"]
    return engines[deployment]


def test_500s_open_the_breaker_then_a_trial_closes_it(client: TestClient, faulty: Faulty) -> None:
    faulty.mode = "fail500"
    for _ in range(5):
        status, deployment, _ = ask(client, "flaky")
        assert (status, deployment) == (200, "safe")  # served by the fallback
    assert breaker_of(client, "flaky")["breaker"] == "open"
    calls = faulty.calls
    status, deployment, _ = ask(client, "flaky")
    assert (status, deployment) == (200, "safe")
    assert faulty.calls == calls + 1  # only the fallback was called: the breaker refused
    faulty.mode = "ok"
    time.sleep(1.1)  # the configured recovery_timeout
    status, deployment, _ = ask(client, "flaky")
    assert (status, deployment) == (200, "flaky")
    assert breaker_of(client, "flaky")["breaker"] == "closed"


def test_a_hanging_upstream_times_out_and_falls_back(client: TestClient) -> None:
    status, deployment, _ = ask(client, "slow")
    assert (status, deployment) == (200, "safe")
    assert breaker_of(client, "slow")["attempts_failure"] == 1


def test_an_upstream_dying_after_three_chunks(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"model": "dying", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    contents = [
        json.loads(e)["choices"][0]["delta"].get("content")
        for e in events
        if '"choices"' in e and json.loads(e)["choices"]
    ]
    assert "".join(c for c in contents if c) == "one two three"
    assert "error" in json.loads(events[-1])
    assert "[DONE]" not in events
    assert breaker_of(client, "dying")["attempts_failure"] == 1
