"""The upstream engine: any OpenAI-compatible server (vLLM, OpenAI, llama-server, Ollama, another
vllm-service) over one pooled async HTTP client, streaming passed through token by token.

The client is aiohttp: every proxied request and every streamed chunk pays for its HTTP client,
and aiohttp costs about a third of httpx2's CPU per request and per chunk on this path
(benchmarks/upstream_overhead.py); it runs on the event loop itself, with no thread of its own.

Every request is sent with ``stream: true`` (and usage asked for) whatever the client asked,
so that deltas flow as the upstream produces them; the API layer collects them for clients
that did not ask for a stream. Closing the iterator closes the upstream response, which the
upstream sees as a disconnect and aborts. Retries are not done here (nor by the HTTP client):
the manager's retry loop is the only one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from opentelemetry import propagate

from vllm_service.engine.base import (
    SAMPLING_KNOBS,
    ChatMessage,
    EngineError,
    EngineHealth,
    EngineState,
    EngineUnavailableError,
    GenerationRequest,
    InvalidRequestError,
    ModelCard,
    SamplingDefaults,
    TokenDelta,
    UpstreamProtocolError,
    choice_seed,
)
from vllm_service.engine.capabilities import Embeddings
from vllm_service.engine.options import SamplingDefaultsConfig, UpstreamOptions
from vllm_service.engine.upstream_stream import (
    MAX_EMBEDDINGS_BYTES,
    UpstreamStream,
    bounded_body,
    bounded_json,
    bounded_lines,
    parse_embeddings,
)

#: Longest Retry-After honoured from an upstream (seconds).
MAX_RETRY_AFTER = 30.0


#: The value at which an extension knob does nothing.
_EXTENSION_OFF: dict[str, float] = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


def _payload(req: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
    """The upstream route and JSON body for one sequence."""
    s = req.sampling
    if s.logprobs is not None:
        raise InvalidRequestError(
            "logprobs are not passed through upstream engines yet", param="logprobs"
        )
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if s.max_tokens is not None:
        body["max_tokens"] = s.max_tokens
    if s.seed is not None:
        # One upstream request per choice: the first keeps the client's seed, the others
        # derive theirs so that the choices differ.
        body["seed"] = s.seed if s.choice == 0 else choice_seed(s.seed, s.choice)
    if s.stop:
        body["stop"] = list(s.stop)
    if s.logit_bias:
        body["logit_bias"] = {str(t): b for t, b in s.logit_bias}
    # Knobs left unset (by the request and the config) are left out: the upstream's own
    # defaults apply. The extensions (vLLM, llama-server) go only where they change something,
    # so that a hosted API that does not know them is not sent them.
    for knob in SAMPLING_KNOBS:
        value = getattr(s, knob)
        if value is not None and _EXTENSION_OFF.get(knob) != value:
            body[knob] = value
    if s.ignore_eos:
        body["ignore_eos"] = True
    if req.messages is not None:
        body["messages"] = [_message(m) for m in req.messages]
        if req.tools_json is not None:
            body.update(json.loads(req.tools_json))
        if s.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": json.loads(s.json_schema)},
            }
        elif s.json_object:
            body["response_format"] = {"type": "json_object"}
        return "/chat/completions", body
    body["prompt"] = (
        list(req.prompt_token_ids) if req.prompt_token_ids is not None else (req.prompt or "")
    )
    return "/completions", body


def _message(m: ChatMessage) -> dict[str, Any]:
    """A chat message as OpenAI's API takes it, tool calls and tool results included."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls_json is not None:
        out["tool_calls"] = json.loads(m.tool_calls_json)
        out["content"] = m.content or None
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _error_message(response_text: str, status: int) -> str:
    """The message of an OpenAI error body (bounded); never the raw body of anything else."""
    try:
        error = json.loads(response_text)["error"]
        return str(error.get("message") or error)[:500]
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {status} with a body that is not an OpenAI error"


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


class UpstreamEngine:
    """Serves a model by forwarding to an OpenAI-compatible server."""

    def __init__(
        self,
        name: str,
        options: UpstreamOptions,
        defaults: SamplingDefaultsConfig | None = None,
    ) -> None:
        self.name = name
        self.options = options
        #: Only the configured ones: a knob neither the request nor the config sets is left
        #: out of the upstream request, and the upstream applies its own default.
        self.sampling_defaults = SamplingDefaults.layered(
            ("config", (defaults or SamplingDefaultsConfig()).model_dump())
        )
        self._base_url = options.base_url.rstrip("/")
        self._client: aiohttp.ClientSession | None = None
        self._state: EngineState = "starting"
        self._created = int(time.time())
        self._requests = 0
        self._failures = 0

    async def start(self) -> None:
        o = self.options
        headers = dict(o.headers)
        if o.api_key_env:
            key = os.environ.get(o.api_key_env)
            if not key:
                self._state = "failed"
                raise EngineError(f"environment variable {o.api_key_env} (the API key) is unset")
            headers["Authorization"] = f"Bearer {key}"
        self._client = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                total=o.total_timeout, connect=o.connect_timeout, sock_read=o.read_timeout
            ),
            connector=aiohttp.TCPConnector(limit=o.max_connections),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._state = "ready"

    async def stop(self) -> None:
        self._state = "stopping"
        if self._client is not None:
            await self._client.close()
            self._client = None

    def models(self) -> list[ModelCard]:
        return [
            ModelCard(
                owned_by="upstream",
                created=self._created,
                max_model_len=self.options.max_model_len,
                sampling_defaults=self.sampling_defaults,
            )
        ]

    async def health(self) -> EngineHealth:
        return EngineHealth(
            state=self._state,
            device="upstream",
            info={
                "base_url": self.options.base_url,
                "upstream_model": self.options.model,
                "requests": self._requests,
                "failures": self._failures,
            },
        )

    async def generate(self, req: GenerationRequest) -> AsyncIterator[TokenDelta]:
        client = self._client
        if client is None or self._state != "ready":
            raise EngineUnavailableError("the upstream engine is not started", retry_after=1.0)
        sampling = self.sampling_defaults.fill(req.sampling)
        path, body = _payload(dataclasses.replace(req, sampling=sampling), self.options.model)
        self._requests += 1
        stream = UpstreamStream(req)
        headers = {"content-type": "application/json"}
        # The W3C trace context of the request (when tracing is on) goes upstream with it.
        propagate.inject(headers)
        try:
            async with client.post(
                self._base_url + path,
                data=json.dumps(body).encode(),
                headers=headers,
                # The key goes to the configured host only: never follow a redirect elsewhere.
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    body_text = await bounded_body(response)
                    raise self._status_error(response.status, body_text, response.headers)
                async for line in bounded_lines(response):
                    for delta in stream.feed(line):
                        yield delta
            final = stream.final()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from exc
        except UpstreamProtocolError:
            self._failures += 1
            raise
        yield final

    async def embed(
        self, texts: list[str], *, dimensions: int | None, max_total_tokens: int
    ) -> Embeddings:
        """The upstream's /embeddings (its model counts and bounds the tokens)."""
        client = self._client
        if client is None or self._state != "ready":
            raise EngineUnavailableError("the upstream engine is not started", retry_after=1.0)
        body: dict[str, Any] = {"model": self.options.model, "input": texts}
        if dimensions is not None:
            body["dimensions"] = dimensions
        self._requests += 1
        try:
            async with client.post(
                self._base_url + "/embeddings", json=body, allow_redirects=False
            ) as response:
                if response.status != 200:
                    text = await bounded_body(response)
                    raise self._status_error(response.status, text, response.headers)
                raw = await bounded_json(response, MAX_EMBEDDINGS_BYTES)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from exc
        return parse_embeddings(raw, len(texts))

    def _transport_error(self, exc: Exception) -> EngineError:
        """A failure to reach the upstream or read it, counted against it."""
        self._failures += 1
        if isinstance(exc, TimeoutError):
            return EngineUnavailableError("the upstream timed out", retry_after=1.0)
        return EngineUnavailableError(f"the upstream is unreachable: {exc}", retry_after=1.0)

    def _status_error(self, status: int, text: str, headers: Mapping[str, str]) -> EngineError:
        message = _error_message(text, status)
        if status == 429 or (status == 503 and "retry-after" in headers):
            # Busy (rate limit, full queue), not broken.
            return EngineUnavailableError(
                f"the upstream answered {status}: {message}",
                retry_after=_retry_after(headers),
                overloaded=True,
            )
        if status == 408 or status >= 500:
            self._failures += 1
            return EngineUnavailableError(
                f"the upstream answered {status}: {message}", retry_after=_retry_after(headers)
            )
        if status in (400, 413, 422):
            return InvalidRequestError(message)
        # 401, 403, 404...: the upstream is misconfigured (key, model, path), not the client's
        # request wrong: a bad gateway, counted against the deployment.
        self._failures += 1
        return UpstreamProtocolError(f"the upstream answered {status}: {message}")
