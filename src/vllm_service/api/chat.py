"""POST /v1/chat/completions."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse

from vllm_service.api.answers import ChatChoice, ChatCompletionResponse, ChatMessageOut
from vllm_service.api.encoders import (
    SYSTEM_FINGERPRINT,
    ChatChunks,
    Pending,
    chat_logprobs,
    finish_reason,
)
from vllm_service.api.errors import InvalidRequest
from vllm_service.api.protocol import UNSUPPORTED_CHAT_PARAMS, ChatCompletionRequest, ChatMessageIn
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
from vllm_service.api.tool_passthrough import merge_calls, tools_json, upstream_message
from vllm_service.api.tools import ToolPlan, ToolStream, parse, plan_tools, render
from vllm_service.auth import Permission, requires
from vllm_service.engine import GenerationRequest
from vllm_service.engine.base import ChatMessage, InvalidRequestError
from vllm_service.engine.registry import DEFAULT_KIND
from vllm_service.manager import ServedModel

#: The engine kind whose models take tools in the service's own tool-call format; the others
#: get them passed through (api/tool_passthrough.py).
EMBEDDED = DEFAULT_KIND.name

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


def _requests(
    body: ChatCompletionRequest, request_id: str, served: ServedModel, plan: ToolPlan | None
) -> list[GenerationRequest]:
    """One engine sequence per choice."""
    extra = body.model_extra or {}
    for name in UNSUPPORTED_CHAT_PARAMS:
        if extra.get(name) is not None:
            raise InvalidRequest(f"'{name}' is not supported by this server.", param=name)
    calls = [m.tool_calls for m in body.messages]
    own_tools = served.config.engine == EMBEDDED
    if own_tools:
        messages = render([_message(m, body.messages) for m in body.messages], calls, plan)
    else:  # an upstream takes the tools and the history's calls as the client sent them
        messages = tuple(upstream_message(m) for m in body.messages)
    json_object, json_schema = _response_format(body)
    if plan is not None and own_tools:
        if json_object or json_schema is not None:
            raise InvalidRequest(
                "'response_format' cannot be combined with 'tools'.", param="response_format"
            )
        json_schema = plan.schema()
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return [
        GenerationRequest(
            request_id=f"{request_id}-{i}",
            messages=messages,
            tools_json=None if own_tools else tools_json(body),
            sampling=sampling(
                body,
                max_tokens=body.completion_budget(),
                logprobs=logprobs,
                choice=i,
                json_object=json_object,
                json_schema=json_schema,
                json_optional=plan is not None and plan.optional and own_tools,
            ),
        )
        for i in range(body.n)
    ]


def _message(m: ChatMessageIn, history: list[ChatMessageIn]) -> ChatMessage:
    """A request message for the engine; a tool result names the call it answers."""
    if m.role != "tool":
        return ChatMessage(role=m.role, content=m.text())
    names = {c.id: c.function.name for h in history for c in h.tool_calls or ()}
    name = names.get(m.tool_call_id or "", "a function")
    return ChatMessage(role="tool", content=f"Result of {name} ({m.tool_call_id}): {m.text()}")


def _plan(body: ChatCompletionRequest) -> ToolPlan | None:
    for legacy, modern in (("functions", "tools"), ("function_call", "tool_choice")):
        if getattr(body, legacy) is not None:
            raise InvalidRequest(
                f"'{legacy}' is deprecated and not supported: send '{modern}'.", param=legacy
            )
    return plan_tools(body.tools, body.tool_choice, body.parallel_tool_calls)


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
    plan = _plan(body)
    requests = _requests(body, request_id, served, plan)
    if served.config.engine != EMBEDDED:
        plan = None  # the upstream makes and streams its own calls
    try:
        started = await start(
            request, manager, served, requests, stream=body.stream, user=body.user
        )
    except InvalidRequestError as exc:
        if plan is None or exc.param != "response_format":
            raise
        # The grammar came from the tools' schemas, not from a response_format.
        message = exc.message.replace("response_format.json_schema", "the tools' schemas")
        raise InvalidRequest(message, param="tools", code=exc.code) from None
    created = int(time.time())
    if body.stream:
        return EventSourceResponse(
            _stream(request, body, started, request_id, created, plan),
            headers={**SSE_HEADERS, **started.headers},
        )
    collected = await collect(request, started, [""] * body.n)
    choices = []
    for i, final in enumerate(collected.finals):
        assert final.finish_reason is not None
        text, reason = collected.texts[i], finish_reason(final.finish_reason)
        calls = merge_calls(collected.tool_calls[i]) or None
        if plan is not None and reason == "stop":
            calls = parse(text, plan)
        content = None if calls and (plan is not None or not text) else text
        choices.append(
            ChatChoice(
                index=i,
                message=ChatMessageOut(content=content, tool_calls=calls),
                logprobs=chat_logprobs(collected.logprobs[i]) if body.logprobs else None,
                finish_reason="tool_calls" if calls else reason,
            )
        )
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
    plan: ToolPlan | None,
) -> AsyncIterator[bytes]:
    chunks = ChatChunks(request_id, created, body.model, body.include_usage)
    held: dict[int, ToolStream] = {}
    if plan is not None:
        held = {i: ToolStream(plan) for i in range(body.n)}
    # Events ready together leave in one write (see Pending): the role chunks go with the
    # first delta, and a finish chunk with whatever follows it.
    pending = Pending()
    for i in range(body.n):
        pending.add(chunks.role(i))
    try:
        async for index, delta in started.streams.merged():
            text = held[index].feed(delta.text) if held else delta.text
            if text or (delta.logprobs and not held):
                logprobs = chat_logprobs(delta.logprobs) if body.logprobs and not held else None
                pending.add(chunks.content(index, text, logprobs))
            if delta.tool_calls:
                pending.add(chunks.tool_call_pieces(index, delta.tool_calls))
            if delta.finish_reason is not None:
                if held:
                    calls, rest = held[index].finish(finish_reason(delta.finish_reason))
                    if calls:
                        pending.add(chunks.tool_calls(index, calls))
                        pending.add(chunks.finish(index, "tool_calls"))
                        continue
                    if rest:
                        pending.add(chunks.content(index, rest, None))
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
