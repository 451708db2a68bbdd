"""POST /v1/completions: the legacy completions API, prompt scoring (echo + logprobs)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse

from vllm_service.api.answers import CompletionChoice, CompletionResponse
from vllm_service.api.encoders import (
    SYSTEM_FINGERPRINT,
    CompletionChunks,
    Pending,
    completion_logprobs,
    finish_reason,
)
from vllm_service.api.errors import InvalidRequest
from vllm_service.api.protocol import CompletionRequest
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
from vllm_service.config import ServerConfig
from vllm_service.engine import GenerationRequest

router = APIRouter(prefix="/v1", tags=["openai"])


def _check(body: CompletionRequest, server: ServerConfig) -> list[str | list[int]]:
    """The request's prompts, once what this server cannot do is refused."""
    check_common(body, server)
    if body.suffix:
        raise InvalidRequest("'suffix' is not supported by this server.", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise InvalidRequest(
            "'best_of' other than 'n' is not supported by this server.", param="best_of"
        )
    prompts = body.prompts()
    if body.echo and not all(isinstance(p, str) for p in prompts):
        raise InvalidRequest("'echo' needs text prompts, not token ids.", param="echo")
    if body.max_tokens == 0 and not body.echo:
        raise InvalidRequest(
            "'max_tokens' 0 needs 'echo': true (it returns the prompt, scored with 'logprobs', "
            "without generating).",
            param="max_tokens",
        )
    if len(prompts) * body.n > server.max_n:
        raise InvalidRequest(
            f"prompts x n may be at most {server.max_n}, got {len(prompts) * body.n}.",
            param="n",
        )
    return prompts


def _requests(
    body: CompletionRequest, prompts: list[str | list[int]], request_id: str
) -> list[GenerationRequest]:
    """One engine sequence per choice: every prompt's n choices together."""
    return [
        GenerationRequest(
            request_id=f"{request_id}-{p_index}-{i}",
            prompt=prompt if isinstance(prompt, str) else None,
            prompt_token_ids=None if isinstance(prompt, str) else tuple(prompt),
            sampling=sampling(
                body,
                max_tokens=body.max_tokens,
                logprobs=body.logprobs,
                choice=i,
                # echo with logprobs scores the prompt, as vLLM and OpenAI's legacy API do
                # (what evaluation harnesses use for log-likelihoods).
                prompt_logprobs=body.logprobs if body.echo else None,
            ),
        )
        for p_index, prompt in enumerate(prompts)
        for i in range(body.n)
    ]


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={**ERROR_RESPONSES, **SSE_RESPONSE},
)
@requires(Permission.INFERENCE)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    manager: Manager,
    server: Server,
) -> Response:
    prompts = _check(body, server)
    served = resolve_model(request, manager, body.model, body.user)
    request_id = new_id("cmpl")
    requests = _requests(body, prompts, request_id)
    started = await start(
        request,
        manager,
        served,
        requests,
        stream=body.stream,
        choices_per_prompt=body.n,
        user=body.user,
    )
    created = int(time.time())
    echo = [str(prompts[k // body.n]) if body.echo else "" for k in range(len(requests))]
    if body.stream:
        return EventSourceResponse(
            _stream(request, body, started, request_id, created, echo),
            headers={**SSE_HEADERS, **started.headers},
        )
    collected = await collect(request, started, list(echo))
    choices = []
    for k, final in enumerate(collected.finals):
        logprobs = None
        if body.logprobs is not None:
            prompt_lps = collected.prompt_logprobs[k]
            logprobs = completion_logprobs(collected.logprobs[k], len(echo[k]), prompt_lps)
        reason = final.finish_reason
        choices.append(
            CompletionChoice(
                index=k,
                text=collected.texts[k],
                logprobs=logprobs,
                finish_reason=finish_reason(reason) if reason is not None else None,
            )
        )
    answer = CompletionResponse(
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
    body: CompletionRequest,
    started: Started,
    request_id: str,
    created: int,
    echo: list[str],
) -> AsyncIterator[bytes]:
    chunks = CompletionChunks(request_id, created, body.model, body.include_usage)
    offsets = [len(e) for e in echo]
    pending = Pending()  # as in chat's stream
    # With logprobs, the echoed prompt goes out with its scores, which come with the choice's
    # first delta; without, at once.
    scored = body.logprobs is not None
    echo_due = [bool(text) and scored for text in echo]
    for k, text in enumerate(echo):
        if text and not scored:
            pending.add(chunks.text(k, text))
    try:
        async for index, delta in started.streams.merged():
            if echo_due[index]:
                echo_due[index] = False
                prompt_lps = completion_logprobs([], 0, delta.prompt_logprobs)
                pending.add(chunks.text(index, echo[index], prompt_lps))
            logprobs = None
            if scored:
                logprobs = completion_logprobs(delta.logprobs, offsets[index])
            offsets[index] += len(delta.text)
            pending.add(chunks.text(index, delta.text, logprobs, delta.finish_reason))
            if delta.finish_reason is None:
                yield pending.take()
    except Exception as exc:
        pending.add(stream_failed(request, exc))
        yield pending.take()
        return
    usage = None
    if body.include_usage:
        usage = chunks.usage(usage_info(started.usage), cost_info(request, started.usage))
    yield stream_end(pending, started, usage)
