"""Encoding responses: OpenAI's typed chunk models as SSE events, logprobs in both shapes.

A streamed response's chunks differ only in their choices. Each encoder serializes its typed
chunk model (api/protocol.py) once with no choices, and per chunk serializes only the typed
choice into that frame: the wire shape is the model's, at less cost per token than building
and dumping a whole chunk.
"""

from __future__ import annotations

import json
import logging
from typing import ClassVar, Literal

from pydantic import BaseModel

from vllm_service import __version__
from vllm_service.api.answers import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    CostInfo,
    FinishReasonOut,
    TokenLogprobOut,
    TopLogprobOut,
    UsageInfo,
)
from vllm_service.api.errors import APIError, error_body, from_engine_error
from vllm_service.api.tools import FunctionCallDelta, ToolCallDelta, ToolCallOut
from vllm_service.engine import EngineError, FinishReason
from vllm_service.engine.base import PromptTokenLogprob, TokenLogprob
from vllm_service.engine.base import ToolCallDelta as EngineToolCallDelta

logger = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = f"vllm-service-{__version__}"
DONE = b"data: [DONE]\n\n"
_NO_CHOICES = b'"choices":[]'


def sse(data: str | bytes) -> bytes:
    """One SSE event carrying ``data`` (JSON has no raw newlines: one data line)."""
    return b"data: " + (data.encode() if isinstance(data, str) else data) + b"\n\n"


def stream_failure(exc: BaseException) -> APIError:
    """What to tell the client of an error that ended a stream after it started."""
    api = from_engine_error(exc) if isinstance(exc, EngineError) else None
    if api is None:
        logger.exception("stream failed", exc_info=exc)
        api = APIError(500, "The server had an error while streaming the response.")
    return api


def stream_error(api: APIError) -> bytes:
    """The SSE event of an error that ended a stream."""
    return sse(json.dumps(error_body(api.message, api.type, api.param, api.code)))


def finish_reason(reason: FinishReason) -> FinishReasonOut:
    """The finish reason as the response models spell it."""
    return reason.value


class Pending:
    """SSE events not sent yet. A stream sends what it has when it is about to wait for the
    engine, so that events ready together (the role chunk and the first tokens; a finish
    chunk, the usage chunk and [DONE]) go out in one write, not one write (and, for a proxy
    in between, one read) each."""

    def __init__(self) -> None:
        self._events: list[bytes] = []

    def add(self, event: bytes) -> None:
        self._events.append(event)

    def __bool__(self) -> bool:
        return bool(self._events)

    def take(self) -> bytes:
        events, self._events = self._events, []
        return b"".join(events)


class _Chunks:
    """A streamed response's chunk model, serialized once without choices and split where
    each chunk's choice goes; the chunks of one response are that frame around a choice."""

    chunk_model: ClassVar[type[ChatCompletionChunk] | type[CompletionResponse]]

    def __init__(self, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self._empty = self.chunk_model(
            id=request_id,
            created=created,
            model=model,
            choices=[],
            system_fingerprint=SYSTEM_FINGERPRINT,
        )
        text = self._empty.model_dump_json(exclude=None if include_usage else {"usage"}).encode()
        head, tail = text.split(_NO_CHOICES, 1)
        self._head = b"data: " + head + b'"choices":['
        self._tail = b"]" + tail + b"\n\n"

    def _event(self, choice: BaseModel) -> bytes:
        return self._head + type(choice).__pydantic_serializer__.to_json(choice) + self._tail

    def usage(self, usage: UsageInfo, cost: CostInfo | None = None) -> bytes:
        """The last chunk when the client asked for usage: no choices, the whole usage (and
        the answer's cost)."""
        chunk = self._empty.model_copy(update={"usage": usage, "cost_info": cost})
        return sse(chunk.model_dump_json())


class ChatChunks(_Chunks):
    """The chunks of one streamed chat completion (``chat.completion.chunk``)."""

    chunk_model = ChatCompletionChunk

    def role(self, index: int) -> bytes:
        """A choice's first chunk: the assistant role, no content yet."""
        delta = ChatDelta(role="assistant", content="")
        return self._event(ChatChunkChoice(index=index, delta=delta))

    def content(self, index: int, text: str, logprobs: ChoiceLogprobs | None) -> bytes:
        delta = ChatDelta(content=text)
        return self._event(ChatChunkChoice(index=index, delta=delta, logprobs=logprobs))

    def finish(self, index: int, reason: FinishReason | Literal["tool_calls"]) -> bytes:
        delta = ChatDelta()
        out: FinishReasonOut = "tool_calls" if reason == "tool_calls" else finish_reason(reason)
        return self._event(ChatChunkChoice(index=index, delta=delta, finish_reason=out))

    def tool_call_pieces(self, index: int, pieces: tuple[EngineToolCallDelta, ...]) -> bytes:
        """Pieces of an upstream's calls, passed on as it streamed them."""
        parts = [
            ToolCallDelta(
                index=p.index,
                id=p.id,
                type="function" if p.id is not None else None,
                function=FunctionCallDelta(name=p.name, arguments=p.arguments),
            )
            for p in pieces
        ]
        return self._event(ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=parts)))

    def tool_calls(self, index: int, calls: list[ToolCallOut]) -> bytes:
        """A choice's calls as OpenAI streams them: per call, its id, type and name (with
        empty arguments) first, then its arguments."""
        events = b""
        for k, call in enumerate(calls):
            head = ToolCallDelta(
                index=k,
                id=call.id,
                type="function",
                function=FunctionCallDelta(name=call.function.name, arguments=""),
            )
            body = ToolCallDelta(
                index=k, function=FunctionCallDelta(arguments=call.function.arguments)
            )
            for part in (head, body):
                delta = ChatDelta(tool_calls=[part])
                events += self._event(ChatChunkChoice(index=index, delta=delta))
        return events


class CompletionChunks(_Chunks):
    """The chunks of one streamed legacy completion (``text_completion``)."""

    chunk_model = CompletionResponse

    def text(
        self,
        index: int,
        text: str,
        logprobs: CompletionLogprobs | None = None,
        reason: FinishReason | None = None,
    ) -> bytes:
        choice = CompletionChoice(
            index=index,
            text=text,
            logprobs=logprobs,
            finish_reason=finish_reason(reason) if reason is not None else None,
        )
        return self._event(choice)


def chat_logprobs(items: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> ChoiceLogprobs:
    """Logprobs in the chat shape: per token, its bytes and its top alternatives."""
    return ChoiceLogprobs(
        content=[
            TokenLogprobOut(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.token_bytes),
                top_logprobs=[
                    TopLogprobOut(token=t.token, logprob=t.logprob, bytes=list(t.token_bytes))
                    for t in lp.top
                ],
            )
            for lp in items
        ]
    )


def completion_logprobs(
    items: list[TokenLogprob] | tuple[TokenLogprob, ...],
    offset: int,
    prompt: tuple[PromptTokenLogprob, ...] = (),
) -> CompletionLogprobs:
    """Logprobs in the legacy completions shape: the scored prompt's tokens first (the very
    first with null), then the completion's, from ``offset`` in the text."""
    out = CompletionLogprobs()
    prompt_offset = 0
    for plp in prompt:
        out.tokens.append(plp.token)
        out.token_logprobs.append(plp.logprob)
        out.top_logprobs.append(
            None if plp.logprob is None else {t.token: t.logprob for t in plp.top}
        )
        out.text_offset.append(prompt_offset)
        prompt_offset += len(plp.token)
    for lp in items:
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({t.token: t.logprob for t in lp.top})
        out.text_offset.append(offset)
        offset += len(lp.token)
    return out
