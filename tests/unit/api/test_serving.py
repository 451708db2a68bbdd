"""The OpenAI endpoints over scripted engines, in process: response shapes (typed chunks),
usage added up once for the response and the metrics, errors before and after the stream
starts, and the routing headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeEngines, answer
from vllm_service.api.answers import ChatCompletionChunk, CompletionResponse
from vllm_service.api.app import create_app
from vllm_service.config import load_settings
from vllm_service.engine import EngineError, InvalidRequestError, TokenDelta

T = TypeVar("T")
MODEL = "m"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def app_with_fakes(**settings: Any) -> tuple[Any, FakeEngines]:
    engines = FakeEngines()
    config = load_settings(None, models=[{"name": MODEL}], cache={"enabled": False}, **settings)
    return create_app(config, engine_factory=engines), engines


async def post(app: Any, path: str, body: dict[str, Any]) -> httpx2.Response:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, json=body)


async def metric(app: Any, name: str) -> float:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        text = (await client.get("/metrics")).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def events(body: str) -> list[str]:
    return [line[6:] for line in body.splitlines() if line.startswith("data: ")]


def test_multi_prompt_usage_counts_each_prompt_once_in_the_response_and_the_metrics() -> None:
    app, engines = app_with_fakes()
    engine = engines.of(MODEL)[0]
    # Two prompts x two choices: prompt tokens 5 and 7, two completion tokens each.
    engine.enqueue(
        answer("a", "b", prompt_tokens=5),
        answer("c", "d", prompt_tokens=5),
        answer("e", "f", prompt_tokens=7),
        answer("g", "h", prompt_tokens=7),
    )

    async def scenario() -> tuple[httpx2.Response, float]:
        body = {"model": MODEL, "prompt": ["one", "two"], "n": 2, "max_tokens": 2}
        r = await post(app, "/v1/completions", body)
        return r, await metric(app, "vllm_prompt_tokens_total")

    r, counted = run(scenario())
    assert r.status_code == 200
    usage = CompletionResponse.model_validate(r.json()).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (12, 8)
    assert counted == 12
    assert [c["text"] for c in r.json()["choices"]] == ["ab", "cd", "ef", "gh"]


def test_a_chat_stream_is_typed_chunks_then_usage_then_done() -> None:
    app, engines = app_with_fakes()
    engines.of(MODEL)[0].enqueue(answer("Hel", "lo"))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = run(post(app, "/v1/chat/completions", body))
    assert r.status_code == 200
    assert r.headers["x-vllm-service-deployment"] == MODEL
    assert r.headers["x-cache"] == "bypass"
    data = events(r.text)
    assert data[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(d) for d in data[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    assert json.loads(data[-3])["choices"][0]["delta"] == {}  # OpenAI's empty last delta
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 2)
    assert all(c.usage is None for c in chunks[:-1])


def test_an_engine_refusal_before_the_first_token_is_an_openai_error() -> None:
    app, engines = app_with_fakes()
    engines.of(MODEL)[0].enqueue([InvalidRequestError("too long", param="messages")])
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = run(post(app, "/v1/chat/completions", body))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
    assert r.json()["error"]["message"] == "too long"


def test_a_failure_mid_stream_ends_it_with_an_error_event() -> None:
    app, engines = app_with_fakes()
    engines.of(MODEL)[0].enqueue([TokenDelta(text="a"), EngineError("engine failure: boom")])
    body = {"model": MODEL, "prompt": "x", "stream": True}
    r = run(post(app, "/v1/completions", body))
    assert r.status_code == 200
    data = events(r.text)
    assert json.loads(data[0])["choices"][0]["text"] == "a"
    error = json.loads(data[-1])["error"]
    assert "boom" in error["message"]
    assert "[DONE]" not in data


def test_answers_carry_their_cost_unless_configured_off() -> None:
    app, engines = app_with_fakes()
    engines.of(MODEL)[0].enqueue(
        answer("a", "b", prompt_tokens=1000), answer("c", prompt_tokens=10)
    )
    r = run(post(app, "/v1/completions", {"model": MODEL, "prompt": "x"}))
    info = r.json()["cost_info"]
    # 1000 prompt and 2 completion tokens at $0.15 and $0.60 per million.
    assert info["hosted_cost_usd"] == {"gpt-4o-mini": pytest.approx(1.5e-4 + 1.2e-6)}
    assert info["tokens"] == 1002
    assert info["local_cost_usd"] is None  # no hardware cost configured: unknown, not $0
    assert info["savings_usd"] == {"gpt-4o-mini": None}
    assert r.headers["x-vllm-service-cost"].startswith("local=unknown, gpt-4o-mini=0.00015")
    body = {
        "model": MODEL,
        "prompt": "x",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    data = events(run(post(app, "/v1/completions", body)).text)
    assert json.loads(data[-2])["cost_info"]["tokens"] == 11
    assert all("cost_info" not in json.loads(d) for d in data[:-2])

    off, engines = app_with_fakes(cost={"response_cost_info": False})
    r = run(post(off, "/v1/completions", {"model": MODEL, "prompt": "x"}))
    assert "cost_info" not in r.json()
    assert "x-vllm-service-cost" not in r.headers
