"""Reading an upstream's streamed answer: bounded SSE lines, chunks parsed defensively, and
the final delta with the upstream's usage, or an estimate marked as such when it sent none."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from vllm_service.engine.base import (
    EngineError,
    FinishReason,
    GenerationRequest,
    Timing,
    TokenDelta,
    ToolCallDelta,
    UpstreamProtocolError,
    Usage,
)
from vllm_service.engine.capabilities import Embeddings

#: Longest SSE line accepted from an upstream, and most of an error body read.
MAX_LINE_BYTES = 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
#: Largest embeddings answer read from an upstream (2048 inputs of 3072 floats as JSON fit).
MAX_EMBEDDINGS_BYTES = 256 * 1024 * 1024
#: Most tool calls one upstream answer may make (an index beyond is a malformed chunk).
MAX_TOOL_CALLS = 128
#: An upstream's finish reasons as ours ("function_call": the deprecated name of a call).
FINISH_REASONS = {
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}
#: Without the upstream's tokenizer, usage it did not send is estimated at OpenAI's rule of
#: thumb (about 4 characters of English per token), plus ChatML's few tokens per message.
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4


async def bounded_lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The response's lines, refusing any longer than MAX_LINE_BYTES (memory stays bounded)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
        if len(buffer) > MAX_LINE_BYTES:
            raise UpstreamProtocolError(f"the upstream sent a line over {MAX_LINE_BYTES} bytes")
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


async def bounded_body(response: aiohttp.ClientResponse) -> str:
    body = b""
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) >= MAX_ERROR_BODY_BYTES:
            break
    return body[:MAX_ERROR_BODY_BYTES].decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class ChoicePiece:
    """What one chunk says of one choice: a text piece, tool-call pieces, a finish reason."""

    text: str | None
    reason: str | None
    tool_calls: tuple[ToolCallDelta, ...] = ()


def _tool_calls(raw: object) -> tuple[ToolCallDelta, ...]:
    """A delta's tool_calls pieces (OpenAI's streamed shape); raises on a bad shape."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise TypeError("tool_calls must be a list")
    out = []
    for item in raw:
        function = item.get("function") or {}
        index, call_id = item.get("index", 0), item.get("id")
        name, arguments = function.get("name"), function.get("arguments") or ""
        if not isinstance(index, int) or not 0 <= index < MAX_TOOL_CALLS:
            raise TypeError("a tool call's index must be a small integer")
        for value in (call_id, name):
            if value is not None and not isinstance(value, str):
                raise TypeError("a tool call's id and name must be strings")
        if not isinstance(arguments, str):
            raise TypeError("a tool call's arguments must be a string")
        out.append(ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments))
    return tuple(out)


def parse_chunk(data: str, chat: bool) -> tuple[list[ChoicePiece], Usage | None]:
    """Each choice's piece, and usage, from one chunk; raises on bad shape, and an
    EngineError for an error event."""
    try:
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise TypeError("a chunk must be an object")
        error = chunk.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise EngineError(f"upstream error: {str(message or error)[:500]}")
        usage = None
        if chunk.get("usage"):
            u = chunk["usage"]
            details = u.get("prompt_tokens_details") or {}
            usage = Usage(
                prompt_tokens=int(u.get("prompt_tokens", 0)),
                completion_tokens=int(u.get("completion_tokens", 0)),
                cached_tokens=int(details.get("cached_tokens") or 0),
            )
        out = []
        for choice in chunk.get("choices") or []:
            source = (choice.get("delta") or {}) if chat else choice
            piece = source.get("content" if chat else "text")
            reason = choice.get("finish_reason")
            if piece is not None and not isinstance(piece, str):
                raise TypeError("content must be a string")
            calls = _tool_calls(source.get("tool_calls")) if chat else ()
            out.append(ChoicePiece(piece, None if reason is None else str(reason), calls))
        return out, usage
    except (ValueError, TypeError, AttributeError) as exc:
        # Never echo what the upstream sent: only what was wrong with it.
        raise UpstreamProtocolError(
            f"the upstream sent a malformed chunk ({type(exc).__name__})"
        ) from None


async def bounded_json(response: aiohttp.ClientResponse, limit: int) -> object:
    """A JSON body of at most ``limit`` bytes; UpstreamProtocolError beyond, or if invalid."""
    body = b""
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise UpstreamProtocolError(f"the upstream sent a body over {limit} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise UpstreamProtocolError("the upstream sent a body that is not JSON") from None


def parse_embeddings(raw: object, count: int) -> Embeddings:
    """An OpenAI embeddings answer for ``count`` inputs, checked; vectors normalized."""
    try:
        if not isinstance(raw, dict):
            raise TypeError("the answer must be an object")
        data = raw["data"]
        if not isinstance(data, list) or len(data) != count:
            raise ValueError("one embedding per input")
        vectors: list[list[float] | None] = [None] * count
        for item in data:
            index, vector = item["index"], item["embedding"]
            if not isinstance(index, int) or not 0 <= index < count or vectors[index] is not None:
                raise ValueError("bad index")
            if not isinstance(vector, list) or not vector:
                raise TypeError("an embedding must be a list of numbers")
            values = [float(v) for v in vector]
            if not all(math.isfinite(v) for v in values):
                raise ValueError("not finite")
            norm = math.sqrt(sum(v * v for v in values)) or 1.0
            vectors[index] = [v / norm for v in values]
        usage = raw.get("usage") or {}
        tokens = int(usage.get("prompt_tokens", 0))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UpstreamProtocolError(
            f"the upstream sent a malformed embeddings answer ({type(exc).__name__})"
        ) from None
    return Embeddings([v for v in vectors if v is not None], tokens)


def estimate_usage(req: GenerationRequest, completion: str) -> Usage:
    """Usage an upstream did not report, estimated from the text (marked estimated)."""
    if req.messages is not None:
        text = "".join(m.content for m in req.messages)
        prompt = len(req.messages) * TOKENS_PER_MESSAGE + math.ceil(len(text) / CHARS_PER_TOKEN)
    elif req.prompt_token_ids is not None:
        prompt = len(req.prompt_token_ids)
    else:
        prompt = math.ceil(len(req.prompt or "") / CHARS_PER_TOKEN)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=math.ceil(len(completion) / CHARS_PER_TOKEN),
        estimated=True,
    )


class UpstreamStream:
    """One streamed upstream answer, line by line: its text pieces, then its final delta."""

    def __init__(self, req: GenerationRequest) -> None:
        self._req = req
        self._chat = req.messages is not None
        self._submitted = time.monotonic()
        self._stamps: list[float] = []
        self._pieces: list[str] = []
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._done = False

    def feed(self, line: str) -> list[TokenDelta]:
        """The deltas one SSE line carries (most carry one or none): text, tool-call pieces."""
        # After [DONE] the rest is read to the end (the chunked terminator), so the connection
        # goes back to the pool instead of being closed.
        if self._done or not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self._done = True
            return []
        choices, usage = parse_chunk(data, self._chat)
        self._usage = usage or self._usage
        deltas = []
        for choice in choices:
            if choice.reason:
                self._finish = FINISH_REASONS.get(choice.reason, FinishReason.STOP)
            if choice.text or choice.tool_calls:
                self._stamps.append(time.monotonic())
                self._pieces.append(choice.text or "")
                self._pieces.extend(c.arguments for c in choice.tool_calls)
                deltas.append(TokenDelta(text=choice.text or "", tool_calls=choice.tool_calls))
        return deltas

    def final(self) -> TokenDelta:
        """The last delta: finish reason, usage, timing; an error if the upstream gave no
        finish reason (the answer was cut)."""
        if self._finish is None:
            raise UpstreamProtocolError("the upstream ended the stream without a finish reason")
        stamps = self._stamps
        first = stamps[0] if stamps else time.monotonic()
        usage = self._usage or estimate_usage(self._req, "".join(self._pieces))
        return TokenDelta(
            text="",
            finish_reason=self._finish,
            usage=usage,
            timing=Timing(
                queue_time=None,
                time_to_first_token=first - self._submitted,
                inter_token_times=tuple(b - a for a, b in itertools.pairwise(stamps)),
                submitted_at=self._submitted,
            ),
        )
