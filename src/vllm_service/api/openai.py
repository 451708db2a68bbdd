"""The OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, format_sse_event
from opentelemetry import trace
from pydantic import BaseModel

from vllm_service import __version__
from vllm_service.accounting.usage import UsageTally
from vllm_service.api.choices import ChoiceStreams
from vllm_service.api.disconnect import until_disconnected
from vllm_service.api.errors import (
    APIError,
    InvalidRequest,
    ModelNotFound,
    error_body,
    from_engine_error,
)
from vllm_service.api.observe import record_of
from vllm_service.api.protocol import (
    UNSUPPORTED_CHAT_PARAMS,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelList,
    ModelObject,
    PromptTokensDetails,
    SamplingDefaultOut,
    SamplingFields,
    TokenLogprobOut,
    TopLogprobOut,
    UsageInfo,
)
from vllm_service.api.timing import ServerTiming, wants_timing
from vllm_service.config import ServerConfig
from vllm_service.engine import EngineError, GenerationRequest, SamplingParams, TokenDelta
from vllm_service.engine.base import ChatMessage, PromptTokenLogprob, TokenLogprob
from vllm_service.manager import CacheControl, ModelManager, Route, ServedModel, UnknownModelError

logger = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = f"vllm-service-{__version__}"
#: Which deployment served a response, and whether it was a fallback model's.
DEPLOYMENT_HEADER = "x-vllm-service-deployment"
FALLBACK_HEADER = "x-vllm-service-fallback"
#: hit, miss or bypass (not cacheable, or the client sent Cache-Control: no-store).
CACHE_HEADER = "x-cache"
#: The cache key(s) of the response's choices, for DELETE /admin/cache/{key}.
CACHE_KEY_HEADER = "x-cache-key"
CACHE_HITS = {"hit", "semantic_hit", "stale_hit"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    500: {"model": ErrorResponse, "description": "Engine failure"},
    503: {"model": ErrorResponse, "description": "Engine not ready or overloaded"},
}
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
}


async def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


async def get_server_config(request: Request) -> ServerConfig:
    config: ServerConfig = request.app.state.server_config
    return config


Manager = Annotated[ModelManager, Depends(get_manager)]
Server = Annotated[ServerConfig, Depends(get_server_config)]

router = APIRouter(prefix="/v1", tags=["openai"])


# -- shared request handling -----------------------------------------------------------------


def resolve_model(request: Request, manager: ModelManager, model: str) -> ServedModel:
    tracer: trace.Tracer = request.app.state.tracer
    with tracer.start_as_current_span("vllm.route", attributes={"vllm.requested_model": model}):
        try:
            return manager.resolve(model)
        except UnknownModelError:
            raise ModelNotFound(model) from None


def _check_common(body: SamplingFields, server: ServerConfig) -> None:
    if body.model_extra and logger.isEnabledFor(logging.DEBUG):
        logger.debug("ignored request fields: %s", ", ".join(sorted(body.model_extra)))
    if body.n > server.max_n:
        raise InvalidRequest(
            f"Invalid value for 'n': at most {server.max_n} choices are allowed, got {body.n}.",
            param="n",
            code="invalid_value",
        )
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
        )


def _sampling(
    body: SamplingFields,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    choice: int,
    json_object: bool = False,
    json_schema: str | None = None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    # Knobs left out stay None: the engine applies the model's recommended values.
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=None if body.top_k is None else max(0, body.top_k),
        min_p=body.min_p,
        seed=body.seed,
        choice=choice,
        stop=body.stop_list(),
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=body.logit_bias_pairs(),
        logprobs=logprobs,
        json_object=json_object,
        json_schema=json_schema,
        ignore_eos=body.ignore_eos,
        prompt_logprobs=prompt_logprobs,
    )


def _route_headers(routes: list[Route]) -> dict[str, str]:
    """Which deployment served the response, whether a fallback did, and the cache outcome."""
    headers = {}
    first = routes[0]
    if first.deployment is not None:
        headers[DEPLOYMENT_HEADER] = first.deployment
        headers[FALLBACK_HEADER] = "true" if any(r.fallback for r in routes) else "false"
    outcomes = {r.cache for r in routes}
    if outcomes <= CACHE_HITS:
        headers[CACHE_HEADER] = "hit"
    elif "bypass" in outcomes:
        headers[CACHE_HEADER] = "bypass"
    else:
        headers[CACHE_HEADER] = "miss"
    keys = [r.cache_key for r in routes if r.cache_key is not None]
    if keys:
        headers[CACHE_KEY_HEADER] = ", ".join(dict.fromkeys(keys))
    return headers


async def _start(
    request: Request,
    manager: ModelManager,
    served: ServedModel,
    requests: list[GenerationRequest],
    *,
    stream: bool,
    choices_per_prompt: int | None = None,
) -> tuple[ChoiceStreams, dict[str, str], ServerTiming | None]:
    """Start every choice; returns the streams, the routing headers of the response, and the
    collector of its Server-Timing value when the client asked for one."""
    # An engine refusal raised here becomes an OpenAI error body in the app's EngineError
    # handler, before any byte of the response is sent.
    rec = record_of(request)
    if rec is not None:
        rec.model, rec.device, rec.stream = served.config.name, manager.device(served), stream
        rec.usage.choices_per_prompt = choices_per_prompt
    control = CacheControl.from_header(request.headers.get("cache-control"))
    group = object()
    routes = [Route(group=group) for _ in requests]
    timing = None
    if wants_timing(request):
        timing = ServerTiming(routes, rec.started if rec is not None else time.monotonic())

    def on_final(choice: int, delta: TokenDelta) -> None:
        if rec is not None:
            rec.add_final(choice, delta)
        if timing is not None:
            timing.add_final(delta)

    pairs = zip(requests, routes, strict=True)
    streams = ChoiceStreams(
        [manager.generate(served, r, route, control) for r, route in pairs],
        on_final=on_final if rec is not None or timing is not None else None,
    )
    await until_disconnected(request, streams.prime())
    headers = _route_headers(routes)
    if rec is not None:
        # Every choice has its first token now: the response can start.
        rec.ttft = time.monotonic() - rec.started
        rec.deployment = headers.get(DEPLOYMENT_HEADER)
        rec.fallback = headers.get(FALLBACK_HEADER) == "true"
        rec.cache = headers[CACHE_HEADER]
    return streams, headers, timing


def _usage(tally: UsageTally) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        total_tokens=tally.prompt_tokens + tally.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=tally.cached_tokens),
    )


def _sse(data: dict[str, Any] | str) -> bytes:
    return format_sse_event(data_str=data if isinstance(data, str) else json.dumps(data))


def _stream_error(exc: BaseException) -> bytes:
    api = from_engine_error(exc) if isinstance(exc, EngineError) else None
    if api is None:
        logger.exception("stream failed", exc_info=exc)
        api = APIError(500, "The server had an error while streaming the response.")
    return _sse(error_body(api.message, api.type, api.param, api.code))


def _new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(16).hex()}"


def _json(model: BaseModel, headers: dict[str, str]) -> Response:
    # Serialized here, not by FastAPI: its response_model step would validate the model again.
    return Response(model.model_dump_json(), media_type="application/json", headers=headers)


class _Pending:
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


def _stream_end(pending: _Pending, usage: bytes | None, timing: ServerTiming | None) -> bytes:
    """The pending events, then the usage chunk (if asked for), the Server-Timing comment (if
    asked for; SSE clients ignore comments) and [DONE], as one write."""
    if usage is not None:
        pending.add(usage)
    if timing is not None:
        pending.add(f": server-timing {timing.value()}\n\n".encode())
    pending.add(_sse("[DONE]"))
    return pending.take()


class _ChunkEncoder:
    """Encodes one streamed response's chunks as SSE events, OpenAI's shape."""

    def __init__(
        self, request_id: str, obj: str, created: int, model: str, include_usage: bool
    ) -> None:
        self._head = {"id": request_id, "object": obj, "created": created, "model": model}
        self._include_usage = include_usage

    def __call__(self, choices: list[dict[str, Any]], usage: UsageInfo | None = None) -> bytes:
        data: dict[str, Any] = {
            **self._head,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self._include_usage:
            data["usage"] = usage.model_dump() if usage is not None else None
        return _sse(data)


@dataclass
class _Collected:
    """Every choice run to its end: text (after the given prefixes), logprobs, final delta."""

    texts: list[str]
    logprobs: list[list[TokenLogprob]]
    prompt_logprobs: list[tuple[PromptTokenLogprob, ...]]
    finals: list[TokenDelta]


async def _collect(streams: ChoiceStreams, texts: list[str]) -> _Collected:
    """Run every choice to its end: text (after ``texts``' prefixes), logprobs, final delta."""
    lps: list[list[TokenLogprob]] = [[] for _ in texts]
    prompt_lps: list[tuple[PromptTokenLogprob, ...]] = [() for _ in texts]
    finals: list[TokenDelta | None] = [None] * len(texts)
    async for index, delta in streams.merged():
        texts[index] += delta.text
        lps[index].extend(delta.logprobs)
        if delta.prompt_logprobs:
            prompt_lps[index] = delta.prompt_logprobs
        if delta.finish_reason is not None:
            finals[index] = delta
    done = [f for f in finals if f is not None]
    if len(done) != len(finals):
        raise APIError(500, "A choice ended without a finish reason.")
    return _Collected(texts, lps, prompt_lps, done)


# -- /v1/models -------------------------------------------------------------------------------


def _model_objects(manager: ModelManager) -> list[ModelObject]:
    """Every name a model answers to (its own and its aliases), as OpenAI lists models."""
    data: list[ModelObject] = []
    for served in manager.served:
        for card in served.engine.models():
            for name in served.config.all_names:
                data.append(
                    ModelObject(
                        id=name,
                        created=card.created,
                        owned_by=card.owned_by,
                        root=served.config.name,
                        max_model_len=card.max_model_len,
                        sampling_defaults={
                            knob: SamplingDefaultOut(value=d.value, source=d.source)
                            for knob, d in card.sampling_defaults.values
                        },
                    )
                )
    return data


@router.get("/models", response_model=ModelList)
async def list_models(manager: Manager) -> ModelList:
    return ModelList(data=_model_objects(manager))


@router.get(
    "/models/{model_id:path}",
    response_model=ModelObject,
    responses={404: ERROR_RESPONSES[404]},
)
async def retrieve_model(model_id: str, manager: Manager) -> ModelObject:
    """One model by its name or alias (OpenAI's models.retrieve); ids may contain '/'."""
    for model in _model_objects(manager):
        if model.id == model_id:
            return model
    raise ModelNotFound(model_id)


# -- /v1/chat/completions ---------------------------------------------------------------------


def _response_format(body: ChatCompletionRequest) -> tuple[bool, str | None]:
    """(JSON mode?, JSON schema text) of a chat request."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return False, None
    if fmt.type == "json_object":
        return True, None
    assert fmt.json_schema is not None
    return False, json.dumps(fmt.json_schema.json_schema or {"type": "object"})


def _chat_logprobs(items: list[TokenLogprob]) -> ChoiceLogprobs:
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


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERROR_RESPONSES, **_SSE_DOC},
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    manager: Manager,
    server: Server,
) -> Response:
    _check_common(body, server)
    extra = body.model_extra or {}
    for name in UNSUPPORTED_CHAT_PARAMS:
        if extra.get(name) is not None:
            raise InvalidRequest(f"'{name}' is not supported by this server.", param=name)
    served = resolve_model(request, manager, body.model)
    messages = tuple(ChatMessage(role=m.role, content=m.text()) for m in body.messages)
    json_object, json_schema = _response_format(body)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    request_id = _new_id("chatcmpl")
    requests = [
        GenerationRequest(
            request_id=f"{request_id}-{i}",
            messages=messages,
            sampling=_sampling(
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
    streams, route_headers, timing = await _start(
        request, manager, served, requests, stream=body.stream
    )
    created = int(time.time())
    if body.stream:
        return EventSourceResponse(
            _chat_stream(body, streams, request_id, created, timing),
            headers={**SSE_HEADERS, **route_headers},
        )
    collected = await until_disconnected(request, _collect(streams, [""] * body.n))
    texts, lps, finals = collected.texts, collected.logprobs, collected.finals
    if timing is not None:
        route_headers["Server-Timing"] = timing.value()
    choices = []
    tally = UsageTally()
    for i, final in enumerate(finals):
        assert final.usage is not None
        assert final.finish_reason is not None
        tally.add(i, final.usage)
        choices.append(
            ChatChoice(
                index=i,
                message=ChatMessageOut(content=texts[i]),
                logprobs=_chat_logprobs(lps[i]) if body.logprobs else None,
                finish_reason=final.finish_reason.value,
            )
        )
    answer = ChatCompletionResponse(
        id=request_id,
        created=created,
        model=body.model,
        choices=choices,
        usage=_usage(tally),
        system_fingerprint=SYSTEM_FINGERPRINT,
    )
    return _json(answer, route_headers)


async def _chat_stream(
    body: ChatCompletionRequest,
    streams: ChoiceStreams,
    request_id: str,
    created: int,
    timing: ServerTiming | None,
) -> AsyncIterator[bytes]:
    include_usage = body.include_usage

    chunk = _ChunkEncoder(request_id, "chat.completion.chunk", created, body.model, include_usage)

    # Events ready together leave in one write (see _Pending): the role chunks go with the
    # first delta, and a finish chunk with whatever follows it.
    pending = _Pending()
    for i in range(body.n):
        pending.add(
            chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
        )
    tally = UsageTally()
    try:
        async for index, delta in streams.merged():
            logprobs = _chat_logprobs(list(delta.logprobs)).model_dump() if body.logprobs else None
            if delta.text or delta.logprobs:
                pending.add(
                    chunk(
                        [
                            {
                                "index": index,
                                "delta": {"content": delta.text},
                                "logprobs": logprobs,
                                "finish_reason": None,
                            }
                        ]
                    )
                )
            if delta.finish_reason is None:
                if pending:
                    yield pending.take()
                continue
            if delta.usage is not None:
                tally.add(index, delta.usage)
            pending.add(
                chunk(
                    [
                        {
                            "index": index,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": delta.finish_reason.value,
                        }
                    ]
                )
            )
    except Exception as exc:
        pending.add(_stream_error(exc))
        yield pending.take()
        return
    usage = chunk([], _usage(tally)) if include_usage else None
    yield _stream_end(pending, usage, timing)


# -- /v1/completions --------------------------------------------------------------------------


def _completion_logprobs(
    items: list[TokenLogprob], offset: int, prompt: tuple[PromptTokenLogprob, ...] = ()
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


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={**ERROR_RESPONSES, **_SSE_DOC},
)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    manager: Manager,
    server: Server,
) -> Response:
    _check_common(body, server)
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
    served = resolve_model(request, manager, body.model)
    request_id = _new_id("cmpl")
    requests = []
    for p_index, prompt in enumerate(prompts):
        for i in range(body.n):
            requests.append(
                GenerationRequest(
                    request_id=f"{request_id}-{p_index}-{i}",
                    prompt=prompt if isinstance(prompt, str) else None,
                    prompt_token_ids=None if isinstance(prompt, str) else tuple(prompt),
                    sampling=_sampling(
                        body,
                        max_tokens=body.max_tokens,
                        logprobs=body.logprobs,
                        choice=i,
                        # echo with logprobs scores the prompt, as vLLM and OpenAI's legacy
                        # API do (what evaluation harnesses use for log-likelihoods).
                        prompt_logprobs=body.logprobs if body.echo else None,
                    ),
                )
            )
    streams, route_headers, timing = await _start(
        request, manager, served, requests, stream=body.stream, choices_per_prompt=body.n
    )
    created = int(time.time())
    echo = [str(prompts[k // body.n]) if body.echo else "" for k in range(len(requests))]
    if body.stream:
        return EventSourceResponse(
            _completion_stream(body, streams, request_id, created, echo, body.n, timing),
            headers={**SSE_HEADERS, **route_headers},
        )
    collected = await until_disconnected(request, _collect(streams, list(echo)))
    texts, lps, finals = collected.texts, collected.logprobs, collected.finals
    if timing is not None:
        route_headers["Server-Timing"] = timing.value()
    choices = []
    tally = UsageTally(choices_per_prompt=body.n)
    for k, final in enumerate(finals):
        assert final.usage is not None
        assert final.finish_reason is not None
        tally.add(k, final.usage)
        choices.append(
            CompletionChoice(
                index=k,
                text=texts[k],
                logprobs=(
                    _completion_logprobs(lps[k], len(echo[k]), collected.prompt_logprobs[k])
                    if body.logprobs is not None
                    else None
                ),
                finish_reason=final.finish_reason.value,
            )
        )
    answer = CompletionResponse(
        id=request_id,
        created=created,
        model=body.model,
        choices=choices,
        usage=_usage(tally),
        system_fingerprint=SYSTEM_FINGERPRINT,
    )
    return _json(answer, route_headers)


async def _completion_stream(
    body: CompletionRequest,
    streams: ChoiceStreams,
    request_id: str,
    created: int,
    echo: list[str],
    n: int,
    timing: ServerTiming | None,
) -> AsyncIterator[bytes]:
    include_usage = body.include_usage
    offsets = [len(e) for e in echo]

    chunk = _ChunkEncoder(request_id, "text_completion", created, body.model, include_usage)

    pending = _Pending()  # as in _chat_stream
    # With logprobs, the echoed prompt goes out with its scores, which come with the choice's
    # first delta; without, at once.
    scored = body.logprobs is not None
    echo_due = [bool(text) and scored for text in echo]
    for k, text in enumerate(echo):
        if text and not scored:
            pending.add(
                chunk([{"index": k, "text": text, "logprobs": None, "finish_reason": None}])
            )
    tally = UsageTally(choices_per_prompt=n)
    try:
        async for index, delta in streams.merged():
            if echo_due[index]:
                echo_due[index] = False
                prompt_lps = _completion_logprobs([], 0, delta.prompt_logprobs).model_dump()
                echoed = {"index": index, "text": echo[index], "logprobs": prompt_lps}
                pending.add(chunk([{**echoed, "finish_reason": None}]))
            logprobs = None
            if body.logprobs is not None:
                logprobs = _completion_logprobs(list(delta.logprobs), offsets[index]).model_dump()
            offsets[index] += len(delta.text)
            finish = delta.finish_reason.value if delta.finish_reason is not None else None
            if delta.usage is not None:
                tally.add(index, delta.usage)
            pending.add(
                chunk(
                    [
                        {
                            "index": index,
                            "text": delta.text,
                            "logprobs": logprobs,
                            "finish_reason": finish,
                        }
                    ]
                )
            )
            if finish is None:
                yield pending.take()
    except Exception as exc:
        pending.add(_stream_error(exc))
        yield pending.take()
        return
    usage = chunk([], _usage(tally)) if include_usage else None
    yield _stream_end(pending, usage, timing)
