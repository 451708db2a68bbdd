"""The continuous-batching scheduler: one thread owns the llama context and steps every sequence.

Each step builds one ``llama_batch``: the next token of every running sequence that is decoding,
then prompt chunks of sequences still prefilling, within ``max_num_batched_tokens``. One
``llama_decode`` runs it; every sequence whose last fed token produced logits is sampled with its
own sampler chain, and its delta is handed to its asyncio queue with ``call_soon_threadsafe``.

A sequence is simply "tokens known" (prompt + generated) and "tokens in the KV cache"; a step
feeds the difference. That makes preemption plain: when the KV cache is full, the newest
sequence's cells are dropped and it re-enters the waiting queue, to be recomputed later.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from vllm_service.engine.base import (
    EngineError,
    EngineUnavailableError,
    FinishReason,
    SamplingParams,
    TokenDelta,
    TokenLogprob,
    Usage,
)
from vllm_service.engine.llamacpp.model import LlamaModel
from vllm_service.engine.llamacpp.sampling import SamplerChain, token_logprob
from vllm_service.engine.llamacpp.text_output import TextOutput

logger = logging.getLogger(__name__)

Emit = Callable[[TokenDelta | BaseException], None]


@dataclass(eq=False)
class Sequence:
    """One sequence being generated; touched only by the scheduler thread once submitted."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    sampler: SamplerChain
    emit: Emit
    text: TextOutput
    tokens: list[int] = field(default_factory=list)
    n_past: int = 0
    seq_id: int = -1
    batch_index: int = -1
    finished: bool = False
    # Written by the event loop's thread, read by the scheduler's: a plain bool is enough.
    aborted: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - len(self.prompt)

    @property
    def pending(self) -> int:
        """Known tokens not yet in the KV cache."""
        return len(self.tokens) - self.n_past


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    running: int
    waiting: int
    kv_cells_used: int
    kv_cells_total: int
    steps: int
    preemptions: int
    aborted: int


class Scheduler:
    """Owns one llama context and the thread that drives it."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_threads: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        kv_cells: int,
        max_waiting_seqs: int,
    ) -> None:
        self._model = model
        self._max_num_seqs = max_num_seqs
        self._budget = max_num_batched_tokens
        self._max_waiting = max_waiting_seqs
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = kv_cells
        params.n_batch = max_num_batched_tokens
        params.n_ubatch = max_num_batched_tokens
        params.n_seq_max = max_num_seqs
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        # One KV stream per sequence (kv_cells / max_num_seqs cells each). Measured here: with
        # a unified buffer a sequence's greedy output changes with what runs beside it; with
        # per-sequence streams it is the same alone and in a batch of 16.
        params.kv_unified = False
        params.no_perf = True
        self._ctx: Any = llama_cpp.llama_init_from_model(model.handle, params)
        if not self._ctx:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self._memory: Any = llama_cpp.llama_get_memory(self._ctx)
        self.kv_cells = int(llama_cpp.llama_n_ctx(self._ctx))
        self._batch = llama_cpp.llama_batch_init(max_num_batched_tokens, 0, 1)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._incoming: collections.deque[Sequence] = collections.deque()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._free_ids = list(range(max_num_seqs - 1, -1, -1))
        self._stopping = False
        self._steps = 0
        self._preemptions = 0
        self._aborted = 0
        self._thread = threading.Thread(target=self._run, name="llamacpp-scheduler", daemon=True)

    # -- called from the event loop ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence; refuses at once when the waiting queue is full."""
        with self._wakeup:
            if self._stopping:
                raise EngineError("the engine is shutting down")
            # Sequences that will wait: those queued beyond the slots free right now.
            queued = len(self._incoming) + len(self._waiting)
            if queued - len(self._free_ids) >= self._max_waiting:
                raise EngineUnavailableError(
                    f"The engine is overloaded: {queued} requests are already waiting. "
                    "Retry shortly.",
                    retry_after=1.0,
                )
            self._incoming.append(seq)
            self._wakeup.notify()

    def abort(self, seq: Sequence) -> None:
        """Stop a sequence at the next step and free its slot and KV cells."""
        seq.aborted = True
        with self._wakeup:
            self._wakeup.notify()

    def stats(self) -> SchedulerStats:
        with self._lock:
            waiting = len(self._waiting) + len(self._incoming)
            running = list(self._running)
        return SchedulerStats(
            running=len(running),
            waiting=waiting,
            kv_cells_used=sum(s.n_past for s in running),
            kv_cells_total=self.kv_cells,
            steps=self._steps,
            preemptions=self._preemptions,
            aborted=self._aborted,
        )

    def stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        self._ctx = None

    # -- the scheduler thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._next_round():
                self._step()
        except BaseException as exc:  # a crash must reach every waiting client, not vanish
            logger.exception("scheduler thread failed")
            self._fail_all(EngineError(f"engine failure: {exc}"))

    def _next_round(self) -> bool:
        """Wait for work; move new sequences in. False once stopping."""
        with self._wakeup:
            while not (self._stopping or self._incoming or self._waiting or self._running):
                self._wakeup.wait()
            if self._stopping:
                pending = [*self._running, *self._waiting, *self._incoming]
                self._running, self._incoming = [], collections.deque()
                self._waiting = collections.deque()
            else:
                self._waiting.extend(self._incoming)
                self._incoming.clear()
                pending = []
        if not self._stopping:
            return True
        error = EngineError("the engine is shutting down")
        for seq in pending:
            self._release(seq)
            self._send(seq, error)
        return False

    def _fail_all(self, error: EngineError) -> None:
        with self._wakeup:
            pending = [*self._running, *self._waiting, *self._incoming]
            self._running, self._incoming = [], collections.deque()
            self._waiting = collections.deque()
            self._stopping = True
        for seq in pending:
            self._send(seq, error)
            seq.sampler.free()

    def _step(self) -> None:
        self._drop_aborted()
        self._admit()
        if not self._running:
            return
        self._make_room()
        fed = self._fill_batch()
        if not fed:
            return
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:
            self._decode_failed(rc, fed)
            return
        self._steps += 1
        for seq, count in fed:
            seq.n_past += count
        for seq, _ in fed:
            if seq.batch_index >= 0 and not seq.aborted:
                self._sample(seq)

    def _drop_aborted(self) -> None:
        for seq in [s for s in self._running if s.aborted]:
            self._running.remove(seq)
            self._release(seq)
            self._aborted += 1
        if any(s.aborted for s in self._waiting):
            with self._lock:
                dropped = [s for s in self._waiting if s.aborted]
                self._waiting = collections.deque(s for s in self._waiting if not s.aborted)
            for seq in dropped:
                seq.sampler.free()
                self._aborted += 1

    def _admit(self) -> None:
        with self._lock:
            while self._waiting and self._free_ids:
                seq = self._waiting.popleft()
                seq.seq_id = self._free_ids.pop()
                self._running.append(seq)

    def _kv_used(self) -> int:
        return sum(s.n_past for s in self._running)

    def _make_room(self) -> None:
        """Preempt the newest sequences until one step's tokens fit the KV cache."""
        while len(self._running) > 1:
            decode_tokens = sum(1 for s in self._running if s.pending == 1)
            if self._kv_used() + decode_tokens <= self.kv_cells:
                return
            self._preempt(self._running[-1])

    def _preempt(self, seq: Sequence) -> None:
        self._running.remove(seq)
        llama_cpp.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
        self._free_ids.append(seq.seq_id)
        seq.seq_id = -1
        seq.n_past = 0
        self._preemptions += 1
        with self._lock:
            self._waiting.appendleft(seq)

    def _fill_batch(self) -> list[tuple[Sequence, int]]:
        batch = self._batch
        n = 0
        fed: list[tuple[Sequence, int]] = []
        free_cells = self.kv_cells - self._kv_used()
        # Decoding sequences first: one token each keeps every stream moving every step.
        ordered = [s for s in self._running if s.pending == 1] + [
            s for s in self._running if s.pending > 1
        ]
        for seq in ordered:
            room = min(self._budget - n, free_cells)
            if room <= 0:
                break
            count = min(seq.pending, room)
            start = seq.n_past
            for offset in range(count):
                batch.token[n] = seq.tokens[start + offset]
                batch.pos[n] = start + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.seq_id
                batch.logits[n] = 0
                n += 1
            free_cells -= count
            if count == seq.pending:
                batch.logits[n - 1] = 1
                seq.batch_index = n - 1
            else:
                seq.batch_index = -1
            fed.append((seq, count))
        batch.n_tokens = n
        return fed

    def _decode_failed(self, rc: int, fed: list[tuple[Sequence, int]]) -> None:
        if rc == 1 and len(self._running) > 1:
            # No KV slot for this batch: make room by recomputing the newest sequence later.
            self._preempt(self._running[-1])
            return
        error = EngineError(f"llama_decode failed with status {rc}")
        for seq, _ in fed:
            if seq in self._running:
                self._running.remove(seq)
            self._release(seq)
            self._send(seq, error)

    def _sample(self, seq: Sequence) -> None:
        token = seq.sampler.sample(self._ctx, seq.batch_index)
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        logprobs: tuple[TokenLogprob, ...] = ()
        if seq.params.logprobs is not None:
            logprobs = (
                token_logprob(self._model, self._ctx, seq.batch_index, token, seq.params.logprobs),
            )
        seq.tokens.append(token)
        finish: FinishReason | None = None
        if self._model.is_end_of_generation(token):
            text = seq.text.finish()
            finish = FinishReason.STOP
        else:
            step = seq.text.push(self._model.piece(token))
            text = step.text
            if step.stopped:
                finish = FinishReason.STOP
            elif seq.n_generated >= seq.max_tokens:
                text += seq.text.finish()
                finish = FinishReason.LENGTH
        if finish is None:
            self._send(seq, TokenDelta(text=text, token_ids=(token,), logprobs=logprobs))
            return
        usage = Usage(prompt_tokens=len(seq.prompt), completion_tokens=seq.n_generated)
        self._running.remove(seq)
        self._release(seq)
        self._send(
            seq,
            TokenDelta(
                text=text,
                token_ids=(token,),
                logprobs=logprobs,
                finish_reason=finish,
                usage=usage,
            ),
        )

    def _release(self, seq: Sequence) -> None:
        """Free a sequence's KV cells, slot and sampler; safe to call twice."""
        if seq.seq_id >= 0:
            llama_cpp.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
            self._free_ids.append(seq.seq_id)
            seq.seq_id = -1
        seq.n_past = 0
        seq.finished = True
        seq.sampler.free()

    @staticmethod
    def _send(seq: Sequence, item: TokenDelta | BaseException) -> None:
        try:
            seq.emit(item)
        except RuntimeError:
            # The event loop is gone (shutdown); nobody is left to read this.
            seq.aborted = True
