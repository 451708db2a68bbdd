"""Reading an upstream's stream: chunks parsed defensively, the final delta, usage estimated
(and marked so) when the upstream sends none."""

from __future__ import annotations

import json

import pytest

from vllm_service.engine import EngineError, FinishReason, GenerationRequest, SamplingParams
from vllm_service.engine.base import ChatMessage, UpstreamProtocolError
from vllm_service.engine.upstream_stream import (
    ChoicePiece,
    UpstreamStream,
    estimate_usage,
    parse_chunk,
)

CHAT = GenerationRequest(
    request_id="r",
    messages=(ChatMessage(role="user", content="x" * 40),),
    sampling=SamplingParams(),
)


def line(chunk: object) -> str:
    return "data: " + json.dumps(chunk)


def chat_chunk(content: str | None, reason: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": reason}]}


def test_chat_and_completion_chunks_give_their_text_and_finish_reason() -> None:
    assert parse_chunk(json.dumps(chat_chunk("hi")), chat=True) == ([ChoicePiece("hi", None)], None)
    text = {"choices": [{"index": 0, "text": "yo", "finish_reason": "length"}]}
    assert parse_chunk(json.dumps(text), chat=False) == ([ChoicePiece("yo", "length")], None)


def test_usage_is_read_with_its_cached_tokens() -> None:
    chunk = {
        "choices": [],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }
    _, usage = parse_chunk(json.dumps(chunk), chat=True)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (9, 2, 4)
    assert not usage.estimated


def test_an_error_event_is_an_engine_error_with_its_message() -> None:
    with pytest.raises(EngineError, match="upstream error: overloaded"):
        parse_chunk(json.dumps({"error": {"message": "overloaded"}}), chat=True)


@pytest.mark.parametrize(
    "data", ["not json", "[1, 2]", json.dumps(chat_chunk(None) | {"choices": [{"delta": 5}]})]
)
def test_a_malformed_chunk_is_a_protocol_error_that_never_echoes_it(data: str) -> None:
    with pytest.raises(UpstreamProtocolError) as caught:
        parse_chunk(data, chat=True)
    assert data not in str(caught.value)


def test_a_stream_gives_its_pieces_then_a_final_delta_with_the_upstream_usage() -> None:
    stream = UpstreamStream(CHAT)
    usage = {"prompt_tokens": 12, "completion_tokens": 2}
    lines = [
        ": keep-alive",
        line(chat_chunk("a")),
        line(chat_chunk("b", "stop")),
        line({"choices": [], "usage": usage}),
        "data: [DONE]",
        line(chat_chunk("after done")),  # read to the end, never handed on
    ]
    assert [d.text for text in lines for d in stream.feed(text)] == ["a", "b"]
    final = stream.final()
    assert final.finish_reason is FinishReason.STOP
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.estimated) == (12, False)
    assert final.timing is not None
    assert final.timing.queue_time is None  # an upstream's queue is out of sight


def test_usage_the_upstream_leaves_out_is_estimated_and_marked() -> None:
    stream = UpstreamStream(CHAT)
    stream.feed(line(chat_chunk("12345678", "length")))
    usage = stream.final().usage
    assert usage == estimate_usage(CHAT, "12345678")
    assert usage is not None
    assert usage.estimated
    assert usage.completion_tokens == 2  # 8 characters at 4 per token
    assert usage.prompt_tokens == 4 + 10  # one message's overhead, 40 characters


def test_a_stream_cut_without_a_finish_reason_is_an_error() -> None:
    stream = UpstreamStream(CHAT)
    stream.feed(line(chat_chunk("partial")))
    with pytest.raises(UpstreamProtocolError, match="finish reason"):
        stream.final()


def test_tool_call_pieces_are_read_and_a_malformed_one_is_refused() -> None:
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    more = {"index": 0, "function": {"arguments": '{"a": 1}'}}
    chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]}
    stream = UpstreamStream(CHAT)
    deltas = stream.feed(line(chunk))
    chunk["choices"][0]["delta"] = {"tool_calls": [more]}
    deltas += stream.feed(line(chunk))
    chunk["choices"][0].update(delta={}, finish_reason="tool_calls")
    stream.feed(line(chunk))
    assert [(c.index, c.id, c.name, c.arguments) for d in deltas for c in d.tool_calls] == [
        (0, "call_1", "f", ""),
        (0, None, None, '{"a": 1}'),
    ]
    assert stream.final().finish_reason is FinishReason.TOOL_CALLS
    for bad in ({"index": "0"}, {"index": 10**6}, {"function": {"arguments": 1}}, {"id": 7}):
        chunk["choices"][0].update(delta={"tool_calls": [bad]}, finish_reason=None)
        with pytest.raises(UpstreamProtocolError):
            UpstreamStream(CHAT).feed(line(chunk))
