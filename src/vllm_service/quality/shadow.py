"""Live shadow scoring: after a client has its answer, the same request goes to a reference
model and the answer is scored against the reference's.

Nothing here is on the client's path: the API offers a finished answer (``offer`` only puts it
on a bounded queue), and workers call the reference through the manager, score in a thread
and feed the QualityMonitor. Sampling is a share of eligible answers (``sample_rate``) with a
ceiling in starts per second; a full queue drops the job (counted). A reference that fails or
times out is counted and never reaches the client. While the quality gate holds a model (its
traffic goes to its fallbacks), a sampled request also probes the model's own deployments, so
that the gate sees it recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from vllm_service.accounting.ledger import Ledger
from vllm_service.accounting.request_log import SHADOW_ROUTE, RequestRecord
from vllm_service.config.quality import ShadowConfig
from vllm_service.engine import EngineError, GenerationRequest
from vllm_service.manager import ModelManager, UnknownModelError
from vllm_service.quality.dimensions import Case
from vllm_service.quality.evaluator import Evaluator, QualityScore
from vllm_service.quality.monitor import QualityMonitor

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowJob:
    model: str
    request: GenerationRequest
    #: The answer the client got, or None when it came from elsewhere (a held model's
    #: fallback): then the model itself is probed.
    answer: str | None
    finish_reason: str | None
    prompt: str
    json_requested: bool
    #: Called with the score once there is one (A/B tests record it per arm).
    on_score: Callable[[QualityScore], None] | None = None


class _Bucket:
    """At most ``rate`` takes per second, bursts of one second's worth."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate, self.clock = rate, clock
        self.tokens, self.stamp = max(1.0, rate), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Shadow:
    def __init__(
        self,
        config: ShadowConfig,
        manager: ModelManager,
        evaluator: Evaluator,
        monitor: QualityMonitor,
        *,
        ledger: Ledger | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        #: Where shadow calls are journaled, marked as such (never billed as traffic).
        self.ledger = ledger
        self.manager = manager
        self.evaluator = evaluator
        self.monitor = monitor
        self._rng = rng or random.Random()
        self._bucket = _Bucket(config.max_per_second, clock)
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=config.max_pending)
        self._workers: list[asyncio.Task[None]] = []

    def watches(self, model: str) -> bool:
        if model == self.config.reference_model:
            return False
        return not self.config.models or model in self.config.models

    def sampled(self, model: str) -> bool:
        """Whether this request is shadowed: decided before it is served (its text is kept)."""
        if not self.watches(model):
            return False
        if self._rng.random() >= self.config.sample_rate:
            self.monitor.count(model, "sampled_out")
            return False
        return True

    def offer(self, job: ShadowJob) -> None:
        """Queue a finished answer for scoring; never blocks, never raises."""
        if not self._bucket.take():
            self.monitor.count(job.model, "rate_limited")
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.monitor.count(job.model, "dropped")

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"quality-shadow-{i}")
            for i in range(self.config.concurrency)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def idle(self) -> None:
        """Until every queued job is done (tests, and a graceful stop)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._run(job)
            except Exception:  # a shadow job must never stop the worker
                logger.exception("shadow scoring of %s failed", job.model)
                self.monitor.count(job.model, "error")
            finally:
                self._queue.task_done()

    async def _run(self, job: ShadowJob) -> None:
        reference_name = self.config.reference_model
        if reference_name is None:
            self.monitor.count(job.model, "skipped")
            return
        sampling = dataclasses.replace(
            job.request.sampling,
            max_tokens=min(job.request.sampling.max_tokens or self.config.max_tokens,
                           self.config.max_tokens),
        )  # fmt: skip
        request = dataclasses.replace(job.request, sampling=sampling)
        reference = await self._ask(reference_name, request, job.model, "reference")
        if reference is None:
            self.monitor.count(job.model, "reference_failed")
            return
        answer, finish = job.answer, job.finish_reason
        if answer is None:
            probed = await self._ask(job.model, request, job.model, "probe", probe=True)
            if probed is None:
                self.monitor.count(job.model, "probe_failed")
                return
            answer, finish = probed
        case = Case(
            prompt=job.prompt,
            answer=answer,
            reference=reference[0],
            finish_reason=finish,
            reference_finish_reason=reference[1],
            json_requested=job.json_requested,
        )
        score = await asyncio.to_thread(self.evaluator.score, case)
        self.monitor.add(job.model, score)
        self.monitor.count(job.model, "scored")
        if job.on_score is not None:
            job.on_score(score)

    async def _ask(
        self,
        model: str,
        request: GenerationRequest,
        watched: str,
        kind: str,
        *,
        probe: bool = False,
    ) -> tuple[str, str | None] | None:
        """The model's whole answer and finish reason, or None when it failed."""
        rec = RequestRecord(
            request_id=f"{kind}-{os.urandom(12).hex()}",
            route=SHADOW_ROUTE,
            method="POST",
            started=time.monotonic(),
            model=model,
        )
        try:
            served = self.manager.resolve(model)
            async with asyncio.timeout(self.config.timeout):
                answer = await self.manager.answer(served, request, probe=probe)
                rec.deployment, rec.engine = answer.route.deployment, answer.route.engine
                rec.cache = answer.route.cache
                parts, finish = [], None
                async for delta in answer:
                    parts.append(delta.text)
                    if delta.finish_reason is not None:
                        finish = delta.finish_reason
                        if delta.usage is not None:
                            rec.usage.add(0, delta.usage)
        except (EngineError, UnknownModelError, TimeoutError) as exc:
            logger.warning("shadow %s call to %s failed: %s", kind, model, exc)
            rec.status, rec.error_type = 503, type(exc).__name__
            self._journal(rec)
            return None
        rec.status = 200
        self.monitor.spend(watched, kind, rec.prompt_tokens, rec.completion_tokens)
        self._journal(rec)
        return "".join(parts), finish

    def _journal(self, rec: RequestRecord) -> None:
        rec.latency = time.monotonic() - rec.started
        if self.ledger is None:
            return
        try:
            self.ledger.record(rec)
        except Exception:  # accounting must never break scoring
            logger.exception("could not journal shadow call %s", rec.request_id)
