"""POST /v1/chat/completions."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse

from vllm_service.api.encoders import (
    SYSTEM_FINGERPRINT,
    ChatChunks,
    Pending,
    chat_logprobs,
    finish_reason,
)
from vllm_service.api.errors import InvalidRequest
from vllm_service.api.protocol import (
    UNSUPPORTED_CHAT_PARAMS,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
)
from vllm_service.api.responses import ERROR_RESPONSES, SSE_RESPONSE
from vllm_service.api.serving import (
    SSE_HEADERS,
    Manager,
    Server,
    Started,
    check_common,
    collect,
    cost_header,
    cost_info,
    json_response,
    new_id,
    resolve_model,
    sampling,
    start,
    stream_end,
    stream_failed,
    usage_info,
)
from vllm_service.auth import Permission, requires
from vllm_service.engine import GenerationRequest
from vllm_service.engine.base import ChatMessage

router = APIRouter(prefix="/v1", tags=["openai"])


def _response_format(body: ChatCompletionRequest) -> tuple[bool, str | None]:
    """(JSON mode?, JSON schema text) of a chat request."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return False, None
    if fmt.type == "json_object":
        return True, None
    assert fmt.json_schema is not None
    return False, json.dumps(fmt.json_schema.json_schema or {"type": "object"})


def _requests(body: ChatCompletionRequest, request_id: str) -> list[GenerationRequest]:
    """One engine sequence per choice."""
    extra = body.model_extra or {}
    for name in UNSUPPORTED_CHAT_PARAMS:
        if extra.get(name) is not None:
            raise InvalidRequest(f"'{name}' is not supported by this server.", param=name)
    messages = tuple(ChatMessage(role=m.role, content=m.text()) for m in body.messages)
    json_object, json_schema = _response_format(body)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return [
        GenerationRequest(
            request_id=f"{request_id}-{i}",
            messages=messages,
            sampling=sampling(
                body,
                max_tokens=body.completion_budget(),
                logprobs=logprobs,
                choice=i,
                json_object=json_object,
                json_schema=json_schema,
            ),
        )
        for i in range(body.n)
    ]


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERROR_RESPONSES, **SSE_RESPONSE},
)
@requires(Permission.INFERENCE)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    manager: Manager,
    server: Server,
) -> Response:
    check_common(body, server)
    served = resolve_model(request, manager, body.model, body.user)
    request_id = new_id("chatcmpl")
    requests = _requests(body, request_id)
    started = await start(request, manager, served, requests, stream=body.stream, user=body.user)
    created = int(time.time())
    if body.stream:
        return EventSourceResponse(
            _stream(request, body, started, request_id, created),
            headers={**SSE_HEADERS, **started.headers},
        )
    collected = await collect(request, started, [""] * body.n)
    choices = [
        ChatChoice(
            index=i,
            message=ChatMessageOut(content=collected.texts[i]),
            logprobs=chat_logprobs(collected.logprobs[i]) if body.logprobs else None,
            finish_reason=finish_reason(final.finish_reason),
        )
        for i, final in enumerate(collected.finals)
        if final.finish_reason is not None
    ]
    answer = ChatCompletionResponse(
        id=request_id,
        created=created,
        model=body.model,
        choices=choices,
        usage=usage_info(started.usage),
        system_fingerprint=SYSTEM_FINGERPRINT,
        cost_info=cost_info(request, started.usage),
    )
    cost_header(answer.cost_info, started.headers)
    return json_response(answer, started.headers)


async def _stream(
    request: Request,
    body: ChatCompletionRequest,
    started: Started,
    request_id: str,
    created: int,
) -> AsyncIterator[bytes]:
    chunks = ChatChunks(request_id, created, body.model, body.include_usage)
    # Events ready together leave in one write (see Pending): the role chunks go with the
    # first delta, and a finish chunk with whatever follows it.
    pending = Pending()
    for i in range(body.n):
        pending.add(chunks.role(i))
    try:
        async for index, delta in started.streams.merged():
            if delta.text or delta.logprobs:
                logprobs = chat_logprobs(delta.logprobs) if body.logprobs else None
                pending.add(chunks.content(index, delta.text, logprobs))
            if delta.finish_reason is not None:
                pending.add(chunks.finish(index, delta.finish_reason))
            elif pending:
                yield pending.take()
    except Exception as exc:
        pending.add(stream_failed(request, exc))
        yield pending.take()
        return
    usage = None
    if body.include_usage:
        usage = chunks.usage(usage_info(started.usage), cost_info(request, started.usage))
    yield stream_end(pending, started, usage)
