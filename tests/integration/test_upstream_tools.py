"""Tools and embeddings through an upstream: a service whose model is an upstream, in front
of a service serving the bundled model. The front passes tools, tool_choice and the history's
calls through and the upstream's calls back, streamed as the upstream streams them, and
embeddings from the upstream's /embeddings; checked with the official SDK against the same
requests sent to the upstream directly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import jsonschema
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL, Service, start_service

pytestmark = pytest.mark.integration

REMOTE = "remote-chat"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
    },
    "required": ["city", "unit"],
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather.", "parameters": WEATHER},
    }
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Oslo, in celsius?"}]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    # its response cache on: embeddings are cached per text
    upstream = start_service(
        tmp_path_factory.mktemp("tools-upstream"), {"cache": {"enabled": True}}
    )
    try:
        options = {"base_url": f"{upstream.base_url}/v1", "model": MODEL}
        front = start_service(
            tmp_path_factory.mktemp("tools-front"),
            {"models": [{"name": REMOTE, "engine": "upstream", "options": options}]},
        )
        try:
            yield front, upstream
        finally:
            front.stop()
    finally:
        upstream.stop()


def sdk(service: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.base_url}/v1", api_key="unused", max_retries=0)


def ask(service: Service, model: str, **fields: Any) -> Any:
    if "tools" in fields:
        fields.setdefault("parallel_tool_calls", False)  # passed through like the rest
    return sdk(service).chat.completions.create(
        model=model, messages=fields.pop("messages", ASK), max_tokens=96, temperature=0, **fields
    )


def test_a_required_call_comes_back_through_the_upstream(services: tuple[Service, Service]) -> None:
    front, upstream = services
    through = ask(front, REMOTE, tools=TOOLS, tool_choice="required")
    direct = ask(upstream, MODEL, tools=TOOLS, tool_choice="required")
    choice = through.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    # greedy on the same model: the call made upstream is the one handed on
    assert call.function.arguments == direct.choices[0].message.tool_calls[0].function.arguments


def test_streamed_calls_pass_through_piece_by_piece(services: tuple[Service, Service]) -> None:
    front, _ = services
    whole = ask(front, REMOTE, tools=TOOLS, tool_choice="required").choices[0].message
    stream = ask(front, REMOTE, tools=TOOLS, tool_choice="required", stream=True)
    pieces: list[Any] = []
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.extend(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert pieces[0].id
    assert pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert arguments == whole.tool_calls[0].function.arguments
    # the SDK's own accumulation of the streamed deltas gives the same call
    with sdk(front).chat.completions.stream(
        model=REMOTE, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=96,
        temperature=0, parallel_tool_calls=False,
    ) as events:  # fmt: skip
        final = events.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.arguments == arguments


def test_a_whole_round_trip_through_the_upstream(services: tuple[Service, Service]) -> None:
    front, _ = services
    called = ask(front, REMOTE, tools=TOOLS, tool_choice="required").choices[0].message
    call = called.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": -3, "sky": "snow"}'},
    ]
    answer = ask(front, REMOTE, messages=history, tools=TOOLS, tool_choice="none")
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


def test_bad_tools_are_refused_before_the_upstream(services: tuple[Service, Service]) -> None:
    front, _ = services
    unknown = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(openai.BadRequestError) as refused:
        ask(front, REMOTE, tools=TOOLS, tool_choice=unknown)
    assert refused.value.body["param"] == "tool_choice"  # type: ignore[index]
    broken = [{"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}]
    with pytest.raises(openai.BadRequestError) as refused:
        ask(front, REMOTE, tools=broken)
    assert refused.value.body["param"] == "tools"  # type: ignore[index]
    assert ask(front, REMOTE).choices[0].message.content  # still serving


def cache_hits(service: Service) -> float:
    text = httpx2.get(f"{service.base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vllm_cache_lookups_total"
        and sample.labels == {"model": MODEL, "outcome": "hit"}
    )


def test_embeddings_through_the_upstream_and_its_cache(services: tuple[Service, Service]) -> None:
    front, upstream = services
    texts = ["Snow falls on Oslo.", "It is snowing in Norway's capital.", "Bonds rallied."]
    direct = sdk(upstream).embeddings.create(model=MODEL, input=texts)
    hits = cache_hits(upstream)
    through = sdk(front).embeddings.create(model=REMOTE, input=texts)
    assert through.model == REMOTE
    assert through.usage.prompt_tokens == direct.usage.prompt_tokens
    a = np.array([d.embedding for d in through.data])
    b = np.array([d.embedding for d in direct.data])
    assert np.allclose(a, b, atol=1e-6)  # the upstream's vectors (renormalized in float32)
    assert cache_hits(upstream) == hits + len(texts)  # the second time, from its cache
