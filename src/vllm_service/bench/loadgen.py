"""Load generation against an OpenAI-compatible endpoint: closed loop or open loop, streaming.

* Closed loop: ``concurrency`` clients, each sending its next request when the last one ended.
* Open loop: requests start at arrival times drawn for ``rate`` requests per second, Poisson
  (exponential gaps) or constant, whether earlier ones have finished or not.

Every request streams; the time of each content chunk is recorded, which is what TTFT and the
inter-token latencies are made of. Failures are recorded by type, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2
import numpy as np
import numpy.typing as npt

from vllm_service.bench.workloads import BenchRequest

#: Ask a vllm-service to report where a request's time went (see api/timing.py).
TIMING_HEADER = "x-vllm-service-timing"


@dataclass
class Endpoint:
    """An OpenAI-compatible server to measure."""

    name: str
    base_url: str  # the API root, ending in /v1
    model: str
    api_key: str = "unused"
    chat: bool = True

    @property
    def path(self) -> str:
        return "/chat/completions" if self.chat else "/completions"


@dataclass
class RequestSample:
    """What happened to one request; times in seconds, relative to the run's start."""

    index: int
    start: float
    ttft: float | None = None
    latency: float | None = None
    #: Gaps between consecutive content chunks.
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    #: The service's own breakdown (milliseconds by phase), when it reports one.
    server_timing: dict[str, float] = field(default_factory=dict)
    cache: str | None = None
    repeat: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency is not None

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (vLLM's TPOT)."""
        if not self.ok or self.ttft is None or self.output_tokens < 2:
            return None
        assert self.latency is not None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def parse_server_timing(value: str) -> dict[str, float]:
    """``queue;dur=1.5, decode;dur=20`` → {"queue": 1.5, "decode": 20.0}."""
    out: dict[str, float] = {}
    for part in value.split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(number)
    return out


def _chunk_text(chunk: dict[str, Any]) -> str:
    text = ""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text += delta.get("content") or ""
        else:
            text += choice.get("text") or ""
    return text


async def send(
    http: httpx2.AsyncClient,
    endpoint: Endpoint,
    request: BenchRequest,
    sample: RequestSample,
    *,
    clock: Callable[[], float],
    ignore_eos: bool,
) -> RequestSample:
    """Stream one request and fill ``sample``; errors end up in ``sample.error``."""
    body = request.body(endpoint.model, ignore_eos=ignore_eos)
    headers = {"Authorization": f"Bearer {endpoint.api_key}", TIMING_HEADER: "true"}
    last: float | None = None
    chunks = 0
    try:
        async with http.stream(
            "POST", endpoint.base_url + endpoint.path, json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                await response.aread()
                sample.error = f"http_{response.status_code}"
                return sample
            sample.cache = response.headers.get("x-cache")
            async for line in response.aiter_lines():
                if line.startswith(": server-timing "):
                    sample.server_timing = parse_server_timing(line[len(": server-timing ") :])
                    continue
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    sample.error = "stream_error"
                    return sample
                if _chunk_text(chunk):
                    now = clock()
                    chunks += 1
                    if last is None:
                        sample.ttft = now - sample.start
                    else:
                        sample.itl.append(now - last)
                    last = now
                usage = chunk.get("usage")
                if usage:
                    sample.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    sample.output_tokens = int(usage.get("completion_tokens") or 0)
    except httpx2.TimeoutException:
        sample.error = "timeout"
        return sample
    except httpx2.HTTPError as exc:
        sample.error = type(exc).__name__
        return sample
    except (json.JSONDecodeError, UnicodeDecodeError):
        sample.error = "malformed_response"
        return sample
    sample.latency = clock() - sample.start
    if not sample.output_tokens:
        sample.output_tokens = chunks
    if sample.ttft is None:
        sample.ttft = sample.latency  # an empty answer: its first (and only) event ends it
    return sample


Arrivals = Literal["poisson", "constant"]


def arrival_times(rate: float, count: int, kind: Arrivals, seed: int) -> npt.NDArray[np.float64]:
    """Start times (seconds from 0) of ``count`` requests arriving at ``rate`` per second."""
    if kind == "constant":
        return np.arange(count, dtype=np.float64) / rate
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=count)
    return np.concatenate(([0.0], np.cumsum(gaps[:-1])))


@dataclass
class RunResult:
    """The samples of one load point and the wall time they took."""

    samples: list[RequestSample]
    duration: float
    concurrency: int | None = None
    rate: float | None = None


class LoadGenerator:
    """Drives one endpoint with a workload's requests."""

    def __init__(
        self,
        endpoint: Endpoint,
        requests: Iterator[BenchRequest],
        *,
        ignore_eos: bool = False,
        timeout: float = 600.0,
        on_done: Callable[[RequestSample], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.endpoint = endpoint
        self._requests = requests
        self._ignore_eos = ignore_eos
        self._timeout = timeout
        self._on_done = on_done
        self._clock = clock

    def _client(self, connections: int) -> httpx2.AsyncClient:
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx2.AsyncClient(timeout=self._timeout, limits=limits)

    async def _one(
        self, http: httpx2.AsyncClient, index: int, start_of_run: float
    ) -> RequestSample:
        request = next(self._requests)
        sample = RequestSample(index=index, start=0.0, repeat=request.repeat_of is not None)

        def clock() -> float:
            return self._clock() - start_of_run

        sample.start = clock()
        await send(http, self.endpoint, request, sample, clock=clock, ignore_eos=self._ignore_eos)
        if self._on_done is not None:
            self._on_done(sample)
        return sample

    async def warm_up(self, count: int, concurrency: int) -> None:
        """Send ``count`` requests that are not measured (connections, caches, JIT)."""
        if count <= 0:
            return
        async with self._client(concurrency) as http:
            pending = list(range(count))

            async def worker() -> None:
                while pending:
                    pending.pop()
                    await send(
                        http,
                        self.endpoint,
                        next(self._requests),
                        RequestSample(index=-1, start=0.0),
                        clock=self._clock,
                        ignore_eos=self._ignore_eos,
                    )

            await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))

    async def closed_loop(
        self, concurrency: int, *, requests: int | None, duration: float | None
    ) -> RunResult:
        """``concurrency`` clients back to back, for ``requests`` requests or ``duration`` s."""
        samples: list[RequestSample] = []
        counter = 0
        async with self._client(concurrency) as http:
            start = self._clock()

            def more() -> bool:
                if requests is not None and counter >= requests:
                    return False
                return duration is None or self._clock() - start < duration

            async def worker() -> None:
                nonlocal counter
                while more():
                    index = counter
                    counter += 1
                    samples.append(await self._one(http, index, start))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = self._clock() - start
        samples.sort(key=lambda s: s.index)
        return RunResult(samples, elapsed, concurrency=concurrency)

    async def open_loop(
        self,
        rate: float,
        *,
        requests: int | None,
        duration: float | None,
        arrivals: Arrivals = "poisson",
        seed: int = 0,
        max_connections: int = 1024,
    ) -> RunResult:
        """Requests starting at ``rate`` per second, whatever is still running."""
        count = requests if requests is not None else int(rate * (duration or 0)) + 1
        times = arrival_times(rate, count, arrivals, seed)
        if duration is not None:
            times = times[times < duration]
        async with self._client(max_connections) as http:
            start = self._clock()

            async def at(index: int, when: float) -> RequestSample:
                await asyncio.sleep(max(0.0, when - (self._clock() - start)))
                return await self._one(http, index, start)

            samples = list(await asyncio.gather(*(at(i, t) for i, t in enumerate(times))))
            elapsed = self._clock() - start
        return RunResult(samples, elapsed, rate=rate)
