"""What chat and completions share: request checks, sampling, starting the choices, headers,
collecting a whole answer. Each endpoint turns its body into GenerationRequests, starts them
here, and encodes the deltas in its own response shape (api/encoders.py)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response
from opentelemetry import trace
from pydantic import BaseModel

from vllm_service.accounting.cost import PriceTable
from vllm_service.accounting.ledger import Ledger
from vllm_service.accounting.usage import UsageTally
from vllm_service.api.answers import CostInfo, PromptTokensDetails, UsageInfo
from vllm_service.api.auth import admit, principal_of
from vllm_service.api.choices import ChoiceStreams
from vllm_service.api.disconnect import until_disconnected
from vllm_service.api.encoders import DONE, Pending, stream_error, stream_failure
from vllm_service.api.errors import APIError, InvalidRequest, ModelNotFound
from vllm_service.api.observe import record_of
from vllm_service.api.protocol import SamplingFields
from vllm_service.api.quality import ab_route, watch
from vllm_service.api.timing import ServerTiming, wants_timing
from vllm_service.auth.audit import record_content
from vllm_service.config import ServerConfig
from vllm_service.engine import GenerationRequest, SamplingParams, TokenDelta
from vllm_service.engine.base import PromptTokenLogprob, TokenLogprob, ToolCallDelta
from vllm_service.manager import (
    CACHE_DEPLOYMENT,
    CacheControl,
    ModelManager,
    Route,
    ServedModel,
    UnknownModelError,
)
from vllm_service.storage import Database

logger = logging.getLogger(__name__)

#: Which deployment served a response, and whether it was a fallback model's.
DEPLOYMENT_HEADER = "x-vllm-service-deployment"
FALLBACK_HEADER = "x-vllm-service-fallback"
#: hit, miss or bypass (not cacheable, or the client sent Cache-Control: no-store).
CACHE_HEADER = "x-cache"
#: The cache key(s) of the response's choices, for DELETE /admin/cache/{key}.
CACHE_KEY_HEADER = "x-cache-key"
CACHE_HITS = frozenset({"hit", "semantic_hit", "stale_hit"})
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


async def get_server_config(request: Request) -> ServerConfig:
    config: ServerConfig = request.app.state.server_config
    return config


Manager = Annotated[ModelManager, Depends(get_manager)]
Server = Annotated[ServerConfig, Depends(get_server_config)]


def resolve_model(
    request: Request, manager: ModelManager, model: str, user: str | None = None
) -> ServedModel:
    """The served model a request names (an A/B test's name: the caller's arm); 404 for a
    model the caller's key may not use (the same answer as a model that does not exist: no
    existence leak)."""
    model = ab_route(request, model, user)
    tracer: trace.Tracer = request.app.state.tracer
    with tracer.start_as_current_span("vllm.route", attributes={"vllm.requested_model": model}):
        try:
            served = manager.resolve(model)
        except UnknownModelError:
            raise ModelNotFound(model) from None
    if not principal_of(request).may_use(served.config.name):
        raise ModelNotFound(model)
    return served


def check_common(body: SamplingFields, server: ServerConfig) -> None:
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


def sampling(
    body: SamplingFields,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    choice: int,
    json_object: bool = False,
    json_schema: str | None = None,
    prompt_logprobs: int | None = None,
    json_optional: bool = False,
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
        json_optional=json_optional,
        ignore_eos=body.ignore_eos,
        prompt_logprobs=prompt_logprobs,
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(16).hex()}"


@dataclass(frozen=True, slots=True)
class Served:
    """How a whole response was served, summed up over its choices' routes."""

    deployment: str
    fallback: bool
    #: hit (every choice from the cache), bypass (some not cacheable) or miss.
    cache: str
    cache_keys: tuple[str, ...]

    @classmethod
    def of(cls, routes: list[Route]) -> Served:
        outcomes = {r.cache for r in routes}
        cache = "bypass" if "bypass" in outcomes else "miss"
        if outcomes <= CACHE_HITS:
            cache = "hit"
        keys = tuple(dict.fromkeys(r.cache_key for r in routes if r.cache_key is not None))
        deployment = routes[0].deployment if routes else CACHE_DEPLOYMENT
        return cls(deployment, any(r.fallback for r in routes), cache, keys)

    def headers(self) -> dict[str, str]:
        headers = {
            DEPLOYMENT_HEADER: self.deployment,
            FALLBACK_HEADER: "true" if self.fallback else "false",
            CACHE_HEADER: self.cache,
        }
        if self.cache_keys:
            headers[CACHE_KEY_HEADER] = ", ".join(self.cache_keys)
        return headers


@dataclass
class Started:
    """A response whose every choice has its first delta: it can start."""

    streams: ChoiceStreams
    headers: dict[str, str]
    #: The collector of its Server-Timing value, when the client asked for one.
    timing: ServerTiming | None

    @property
    def usage(self) -> UsageTally:
        return self.streams.usage


async def start(
    request: Request,
    manager: ModelManager,
    served: ServedModel,
    requests: list[GenerationRequest],
    *,
    stream: bool,
    choices_per_prompt: int | None = None,
    user: str | None = None,
) -> Started:
    """Start every choice; an engine refusal raised here becomes an OpenAI error body (the
    app's EngineError handler), before any byte of the response is sent."""
    rec = record_of(request)
    usage = UsageTally(choices_per_prompt=choices_per_prompt)
    if rec is not None:
        rec.model, rec.device, rec.stream = served.config.name, manager.device(served), stream
        rec.user = user
        rec.usage = usage
    limit_headers = await admit(request, *_reservation(requests))
    control = CacheControl.from_header(request.headers.get("cache-control"))
    group = object()
    timing = None
    if wants_timing(request):
        timing = ServerTiming(rec.started if rec is not None else time.monotonic())

    def on_final(choice: int, delta: TokenDelta) -> None:
        if rec is not None:
            rec.add_final(delta)
        if timing is not None:
            timing.add_final(delta)

    starts = [manager.answer(served, r, control, group) for r in requests]
    streams = await until_disconnected(
        request,
        ChoiceStreams.start(starts, usage, on_final if rec or timing else None),
    )
    _keep_content(request, requests, streams)
    watch(request, manager, served, requests, streams)
    summary = Served.of(streams.routes)
    if timing is not None:
        timing.routes = streams.routes
    if rec is not None:
        # Every choice has its first token now: the response can start.
        rec.ttft = time.monotonic() - rec.started
        rec.deployment, rec.fallback = summary.deployment, summary.fallback
        rec.cache = summary.cache
        rec.engine = next((r.engine for r in streams.routes if r.engine is not None), None)
    return Started(streams, {**summary.headers(), **limit_headers}, timing)


def _keep_content(
    request: Request, requests: list[GenerationRequest], streams: ChoiceStreams
) -> None:
    """With audit.log_content: keep the prompt and the answer (redacted) once it ends."""
    db: Database | None = request.app.state.audit_db
    rec = record_of(request)
    if db is None or rec is None or not request.app.state.audit_content:
        return
    streams.keep_text()
    prompts: dict[str, None] = {}
    for r in requests:
        if r.messages is not None:
            text = "\n".join(f"{m.role}: {m.content}" for m in r.messages)
        else:
            text = r.prompt if r.prompt is not None else str(list(r.prompt_token_ids or ()))
        prompts[text] = None

    async def write() -> None:
        answers = ["".join(t) for t in streams.texts or []]
        await record_content(
            db,
            request_id=rec.request_id,
            key_id=rec.key_id,
            route=rec.route,
            model=rec.model,
            prompt="\n---\n".join(prompts),
            completion="\n---\n".join(answers),
        )

    rec.finishers.append(write)


def _reservation(requests: list[GenerationRequest]) -> tuple[int, int]:
    """(prompt characters, max_tokens) of a request's choices, for its key's token limit."""
    chars = 0
    for r in requests:
        if r.messages is not None:
            chars += sum(len(m.content) for m in r.messages)
        elif r.prompt_token_ids is not None:
            chars += 4 * len(r.prompt_token_ids)
        else:
            chars += len(r.prompt or "")
    return chars, sum(r.sampling.max_tokens or 0 for r in requests)


def stream_failed(request: Request, exc: BaseException) -> bytes:
    """The error event that ends a broken stream; the request's record keeps its type (the
    status was 200 already)."""
    api = stream_failure(exc)
    rec = record_of(request)
    if rec is not None:
        rec.error_type = api.type
    return stream_error(api)


def stream_end(pending: Pending, started: Started, usage: bytes | None) -> bytes:
    """The pending events, then the usage chunk (if asked for), the Server-Timing comment (if
    asked for; SSE clients ignore comments) and [DONE], as one write."""
    if usage is not None:
        pending.add(usage)
    if started.timing is not None:
        pending.add(f": server-timing {started.timing.value()}\n\n".encode())
    pending.add(DONE)
    return pending.take()


#: The answer's cost (non-streamed answers; a stream's is in its usage chunk).
COST_HEADER = "x-vllm-service-cost"


def cost_info(request: Request, tally: UsageTally) -> CostInfo | None:
    """What the answer cost here (at the rolling rate) and at each hosted reference; None
    when cost.response_cost_info is off."""
    if not request.app.state.response_cost_info:
        return None
    prices: PriceTable = request.app.state.prices
    ledger: Ledger | None = request.app.state.ledger
    tokens = tally.prompt_tokens + tally.completion_tokens
    local = ledger.local_cost(tokens) if ledger is not None else None
    today = datetime.now(UTC).date()
    hosted = {
        p.name: p.cost(tally.prompt_tokens, tally.completion_tokens) for p in prices.on(today)
    }
    return CostInfo(
        tokens=tokens,
        local_cost_usd=local,
        hosted_cost_usd=hosted,
        savings_usd={ref: None if local is None else cost - local for ref, cost in hosted.items()},
    )


def cost_header(info: CostInfo | None, headers: dict[str, str]) -> None:
    """The answer's cost as a header: local=<usd or unknown>, then <reference>=<usd>."""
    if info is None:
        return
    local = "unknown" if info.local_cost_usd is None else f"{info.local_cost_usd:.8f}"
    parts = [f"local={local}", *(f"{ref}={usd:.8f}" for ref, usd in info.hosted_cost_usd.items())]
    headers[COST_HEADER] = ", ".join(parts)


def usage_info(tally: UsageTally) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        total_tokens=tally.prompt_tokens + tally.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=tally.cached_tokens),
    )


def json_response(model: BaseModel, headers: dict[str, str]) -> Response:
    # Serialized here, not by FastAPI: its response_model step would validate the model again.
    return Response(model.model_dump_json(), media_type="application/json", headers=headers)


@dataclass
class Collected:
    """Every choice run to its end: text (after the given prefixes), logprobs, final delta."""

    texts: list[str]
    logprobs: list[list[TokenLogprob]]
    prompt_logprobs: list[tuple[PromptTokenLogprob, ...]]
    finals: list[TokenDelta]
    #: Pieces of the tool calls each choice made (an upstream's, passed through).
    tool_calls: list[list[ToolCallDelta]]


async def collect(request: Request, started: Started, texts: list[str]) -> Collected:
    """Run every choice to its end (cancelled if the client leaves)."""
    collected = await until_disconnected(request, _collect(started.streams, texts))
    if started.timing is not None:
        started.headers["Server-Timing"] = started.timing.value()
    return collected


async def _collect(streams: ChoiceStreams, texts: list[str]) -> Collected:
    lps: list[list[TokenLogprob]] = [[] for _ in texts]
    prompt_lps: list[tuple[PromptTokenLogprob, ...]] = [() for _ in texts]
    finals: list[TokenDelta | None] = [None] * len(texts)
    calls: list[list[ToolCallDelta]] = [[] for _ in texts]
    async for index, delta in streams.merged():
        texts[index] += delta.text
        lps[index].extend(delta.logprobs)
        calls[index].extend(delta.tool_calls)
        if delta.prompt_logprobs:
            prompt_lps[index] = delta.prompt_logprobs
        if delta.finish_reason is not None:
            finals[index] = delta
    done = [f for f in finals if f is not None]
    if len(done) != len(finals):
        raise APIError(500, "A choice ended without a finish reason.")
    return Collected(texts, lps, prompt_lps, done, calls)
