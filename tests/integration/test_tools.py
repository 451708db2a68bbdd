"""Tool calling with the official SDK against the bundled model: grammar-constrained calls
that validate against their schemas (nested objects, enums, arrays), streamed as OpenAI streams
them, a whole round trip, and bad tool definitions refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import jsonschema
import openai
import pytest

from tests.conftest import MODEL, Service, start_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service of its own: seeded sampling elsewhere in the suite must not depend on the
    prefix-cache state these requests leave (docs/tools.md notes why)."""
    svc = start_service(tmp_path_factory.mktemp("tools"), {})
    yield svc
    svc.stop()


@pytest.fixture
def client(service: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.base_url}/v1", api_key="unused", max_retries=0)


BOOKING = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "nights": {"type": "integer", "minimum": 1, "maximum": 14},
        "room": {"type": "string", "enum": ["single", "double", "suite"]},
        "guests": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
            },
        },
    },
    "required": ["city", "nights", "room", "guests"],
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "book_hotel", "description": "Book a hotel room.",
                                      "parameters": BOOKING}},
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now.",
                                      "parameters": WEATHER}},
]  # fmt: skip
SCHEMAS = {"book_hotel": BOOKING, "get_weather": WEATHER}
ASK = [{"role": "user", "content": "Book a double room in Rome for 2 nights for Ana (31)."}]


def check_call(name: str, arguments: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(arguments)
    jsonschema.validate(parsed, SCHEMAS[name])
    return parsed


@pytest.mark.parametrize("choice", ["required", "book_hotel", "get_weather"])
def test_a_required_or_named_call_always_validates(client: openai.OpenAI, choice: str) -> None:
    tool_choice: Any = choice
    if choice != "required":
        tool_choice = {"type": "function", "function": {"name": choice}}
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=200,
        temperature=0,
    )  # fmt: skip
    (answer,) = reply.choices
    assert answer.finish_reason == "tool_calls"
    assert answer.message.content is None
    calls = answer.message.tool_calls
    assert calls
    for call in calls:
        assert call.id.startswith("call_")
        assert call.type == "function"
        if choice != "required":
            assert call.function.name == choice
        check_call(call.function.name, call.function.arguments)


def test_streamed_calls_accumulate_to_the_same_call(client: openai.OpenAI) -> None:
    fields: dict[str, Any] = {
        "model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required",
        "max_tokens": 200, "temperature": 0,
    }  # fmt: skip
    whole = client.chat.completions.create(**fields).choices[0].message.tool_calls
    assert whole
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(**fields, stream=True):
        for choice in chunk.choices:
            for part in choice.delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += part.id or ""
                if part.function is not None:
                    call["name"] += part.function.name or ""
                    call["arguments"] += part.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (w.function.name, json.loads(w.function.arguments)) for w in whole
    ]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_auto_answers_text_or_a_valid_call(client: openai.OpenAI) -> None:
    for messages in (ASK, [{"role": "user", "content": "Say hello in one word."}]):
        reply = client.chat.completions.create(
            model=MODEL, messages=messages, tools=TOOLS, max_tokens=120, temperature=0
        )
        answer = reply.choices[0]
        if answer.message.tool_calls:
            assert answer.finish_reason == "tool_calls"
            for call in answer.message.tool_calls:
                check_call(call.function.name, call.function.arguments)
        else:
            assert answer.message.content
            assert not answer.message.content.lstrip().startswith("{")


def test_a_whole_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
        temperature=0,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"confirmation": "RM-2231"}'},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=60,
        temperature=0,
    )  # fmt: skip
    answer = final.choices[0]
    assert answer.message.tool_calls is None
    assert answer.message.content
    # The call and its result were in the prompt: more tokens than the question alone.
    alone = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=1
    )
    assert final.usage is not None
    assert alone.usage is not None
    assert final.usage.prompt_tokens > alone.usage.prompt_tokens + 20


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {
            "name": "bad", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}}}]},
         "tools"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto", "tools": None}, "function_call"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        # A schema whose grammar would spell out 100,000 repetitions: refused before it is built.
        ({"tools": [{"type": "function", "function": {"name": "huge", "parameters": {
            "type": "object", "properties": {"a": {"type": "array", "minItems": 100000}}}}}],
          "tool_choice": "required"}, "tools"),
    ],
)  # fmt: skip
def test_bad_tools_are_openai_400s(service: Service, fields: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 8, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    r = httpx2.post(f"{service.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert str(error["param"]).startswith(param), error
    assert httpx2.get(f"{service.base_url}/health").json()["status"] == "ok"
