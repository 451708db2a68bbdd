"""The continuous-batching scheduler: one thread owns the llama context and steps every sequence.

Each step builds one ``llama_batch``: the next token of every running sequence that is decoding,
then prompt chunks of sequences still prefilling, within ``max_num_batched_tokens``. One
``llama_decode`` runs it; every sequence whose last fed token produced logits is sampled with its
own sampler chain, and its delta is handed to its asyncio queue with ``call_soon_threadsafe``.

A sequence is simply "tokens known" (prompt + generated) and "tokens in the KV cache"; a step
feeds the difference. That makes both prefix caching and preemption plain:

* **Slots and prefix caching** (slots.py): a running sequence occupies one of
  ``max_num_seqs`` slots; when it ends, the slot keeps its KV as a prefix-cache entry, saved to
  the host-RAM tier (host_cache.py) before its slot is reused.
* **Preemption.** If ``llama_decode`` finds no room for a batch, the newest sequence's cells are
  dropped and it re-enters the waiting queue, to be recomputed later; running ones go on.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import llama_cpp

from vllm_service.engine.base import (
    EngineError,
    EngineUnavailableError,
    SchedulerStats,
)
from vllm_service.engine.llamacpp.batch import plan_batch, seq_runs, write_batch
from vllm_service.engine.llamacpp.model import LlamaModel
from vllm_service.engine.llamacpp.output import Outbox, OutputWriter, scored_prompt_delta
from vllm_service.engine.llamacpp.sampling import sample_step
from vllm_service.engine.llamacpp.sequence import Sequence
from vllm_service.engine.llamacpp.slots import SlotTable

logger = logging.getLogger(__name__)

#: Runs a callback on the event loop's thread (``loop.call_soon_threadsafe``).
Post = Callable[[Callable[[], None]], object]


class Scheduler:
    """Owns one llama context and the thread that drives it."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_threads: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        max_waiting_seqs: int,
        max_waiting_tokens: int,
        queue_timeout: float,
        post: Post,
        enable_prefix_caching: bool = True,
        prefix_cache_host_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._outbox = Outbox(post)
        self._budget = max_num_batched_tokens
        self._max_waiting = max_waiting_seqs
        self._max_waiting_tokens = max_waiting_tokens
        self._queue_timeout = queue_timeout
        self._clock = clock
        self._ctx: Any = model.new_context(
            n_slots=max_num_seqs,
            slot_cells=max_model_len,
            batch_tokens=max_num_batched_tokens,
            n_threads=n_threads,
        )
        self._n_vocab = model.n_vocab
        self._output = OutputWriter(model, self._ctx)
        self.kv_cells = int(llama_cpp.llama_n_ctx(self._ctx))
        self._batch = llama_cpp.llama_batch_init(max_num_batched_tokens, 0, 1)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        # Guarded by _lock: the hand-over from the event loop and the waiting queue.
        self._incoming: collections.deque[Sequence] = collections.deque()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._waiting_tokens = 0
        self._idle_slots = max_num_seqs
        self._stopping = False
        # The scheduler thread's own state.
        self._slots = SlotTable(
            self._ctx,
            max_num_seqs,
            prefix_caching=enable_prefix_caching,
            host_bytes=prefix_cache_host_bytes,
        )
        self._running: list[Sequence] = []
        self._steps = 0
        self._seq_runs = 0
        self._preemptions = 0
        self._submitted = 0
        self._completed = 0
        self._aborted = 0
        self._queue_timeouts = 0
        self._rejected = 0
        self._prompt_tokens = 0
        self._hit_tokens = 0
        self._host_hit_tokens = 0
        self._decode_time = 0.0
        self._sample_time = 0.0
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
            if queued - self._idle_slots >= self._max_waiting:
                self._rejected += 1
                raise EngineUnavailableError(
                    f"The engine is overloaded: {queued} requests are already waiting. "
                    "Retry shortly.",
                    retry_after=1.0,
                    overloaded=True,
                )
            if queued >= self._idle_slots and (
                self._waiting_tokens + len(seq.tokens) > self._max_waiting_tokens
            ):
                self._rejected += 1
                raise EngineUnavailableError(
                    f"The engine is overloaded: {self._waiting_tokens} prompt tokens are "
                    "already waiting. Retry shortly.",
                    retry_after=1.0,
                    overloaded=True,
                )
            self._waiting_tokens += len(seq.tokens)
            self._incoming.append(seq)
            self._submitted += 1
            self._wakeup.notify()

    def abort(self, seq: Sequence) -> None:
        """Stop a sequence at the next step and free its slot."""
        seq.aborted = True
        with self._wakeup:
            self._wakeup.notify()

    def stats(self) -> SchedulerStats:
        with self._lock:
            waiting = len(self._waiting) + len(self._incoming)
            waiting_tokens = self._waiting_tokens
            running = len(self._slots) - self._idle_slots
        return SchedulerStats(
            running=running,
            waiting=waiting,
            waiting_tokens=waiting_tokens,
            kv_cells_used=self._slots.kv_used,
            kv_cells_cached=self._slots.kv_cached,
            kv_cells_total=self.kv_cells,
            steps=self._steps,
            step_seq_runs=self._seq_runs,
            preemptions=self._preemptions,
            submitted=self._submitted,
            completed=self._completed,
            aborted=self._aborted,
            queue_timeouts=self._queue_timeouts,
            rejected=self._rejected,
            prompt_tokens=self._prompt_tokens,
            prefix_cache_hit_tokens=self._hit_tokens,
            prefix_cache_host_hit_tokens=self._host_hit_tokens,
            prefix_cache_copies=self._slots.copies,
            host_cache_bytes=self._slots.host.bytes,
            host_cache_entries=len(self._slots.host),
            host_cache_evictions=self._slots.host.evictions,
            decode_seconds=round(self._decode_time, 6),
            sample_seconds=round(self._sample_time, 6),
        )

    def stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join()
        self._slots.host.clear()
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        self._ctx = None

    # -- the scheduler thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._next_round():
                self._step()
                self._outbox.flush()
        except BaseException as exc:  # a crash must reach every waiting client, not vanish
            logger.exception("scheduler thread failed")
            self._fail_all(EngineError(f"engine failure: {exc}"))
        self._outbox.flush()

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
            self._release(seq, keep_cache=False)
            self._outbox.send(seq, error)
        return False

    def _fail_all(self, error: EngineError) -> None:
        with self._wakeup:
            pending = [*self._running, *self._waiting, *self._incoming]
            self._running, self._incoming = [], collections.deque()
            self._waiting = collections.deque()
            self._stopping = True
        for seq in pending:
            self._outbox.send(seq, error)
            seq.sampler.free()

    def _step(self) -> None:
        self._drop_aborted()
        self._expire_waiting()
        self._admit()
        if not self._running:
            self._slots.measure()
            return
        fed = self._fill_batch()
        if not fed:
            return
        started = time.perf_counter()
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        decoded = time.perf_counter()
        self._decode_time += decoded - started
        if rc != 0:
            self._decode_failed(rc, fed)
            return
        self._steps += 1
        self._seq_runs += seq_runs(fed)
        self._slots.decoded()
        for seq, count in fed:
            seq.n_past += count
        now = self._clock()
        sampled = []
        for seq, _ in fed:
            if seq.score_rows:
                self._output.score_prompt(seq)
            if seq.batch_index >= 0 and not seq.aborted:
                if seq.max_tokens == 0:  # only the prompt's scores were asked for
                    self._finish_unsampled(seq)
                else:
                    sampled.append(seq)
        samplers, rows = [s.sampler for s in sampled], [s.batch_index for s in sampled]
        tokens = sample_step(self._ctx, self._n_vocab, samplers, rows)
        for seq, token in zip(sampled, tokens, strict=True):
            self._accept(seq, token, now)
        self._sample_time += time.perf_counter() - decoded
        if not self._running or self._steps % 64 == 0:
            self._slots.measure()

    def _unqueue(self, dropped: list[Sequence]) -> None:
        """Take sequences out of the waiting queue (the caller holds ``_lock``)."""
        gone = set(map(id, dropped))
        self._waiting = collections.deque(s for s in self._waiting if id(s) not in gone)
        self._waiting_tokens -= sum(len(s.tokens) for s in dropped)

    def _drop_aborted(self) -> None:
        for seq in [s for s in self._running if s.aborted]:
            self._running.remove(seq)
            self._release(seq)
            self._aborted += 1
        if any(s.aborted for s in self._waiting):
            with self._lock:
                dropped = [s for s in self._waiting if s.aborted]
                self._unqueue(dropped)
            for seq in dropped:
                seq.sampler.free()
                self._aborted += 1

    def _expire_waiting(self) -> None:
        """Fail sequences that waited longer than the queue timeout for their first slot."""
        if not self._waiting:
            return
        deadline = self._clock() - self._queue_timeout
        if not any(s.submitted_at <= deadline for s in self._waiting):
            return
        with self._lock:
            expired = [
                s for s in self._waiting if s.submitted_at <= deadline and s.first_token_at is None
            ]
            self._unqueue(expired)
        for seq in expired:
            self._queue_timeouts += 1
            seq.sampler.free()
            self._outbox.send(
                seq,
                EngineUnavailableError(
                    f"The request waited more than {self._queue_timeout:g} s for a free "
                    "sequence slot. Retry shortly.",
                    retry_after=1.0,
                    overloaded=True,
                ),
            )

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or self._idle_slots == 0:
                    return
                seq = self._waiting.popleft()
                self._waiting_tokens -= len(seq.tokens)
                self._idle_slots -= 1
            self._place(seq)
            self._running.append(seq)

    def _place(self, seq: Sequence) -> None:
        """Give a sequence an idle slot, reusing the longest cached prefix of its tokens."""
        reuse, restored = self._slots.place(seq, self._running)
        if seq.scheduled_at is None:  # not a preempted sequence coming back
            seq.scheduled_at = self._clock()
            seq.cached_tokens = reuse
            self._prompt_tokens += len(seq.prompt)
            self._hit_tokens += reuse
            self._host_hit_tokens += restored

    def _fill_batch(self) -> list[tuple[Sequence, int]]:
        fed = plan_batch(self._running, self._budget)
        write_batch(self._batch, fed)
        return fed

    def _decode_failed(self, rc: int, fed: list[tuple[Sequence, int]]) -> None:
        if rc == 1 and len(self._running) > 1:
            # No KV room for this batch: recompute the newest sequence later.
            self._preempt(self._running[-1])
            return
        error = EngineError(f"llama_decode failed with status {rc}")
        for seq, _ in fed:
            if seq in self._running:
                self._running.remove(seq)
            self._release(seq, keep_cache=False)
            self._outbox.send(seq, error)

    def _preempt(self, seq: Sequence) -> None:
        if seq.first_token_at is None:  # its prompt is computed (and scored) again
            seq.prompt_scores.clear()
        seq.score_rows.clear()
        self._running.remove(seq)
        self._release(seq, keep_cache=False, finished=False)
        self._preemptions += 1
        with self._lock:
            self._waiting.appendleft(seq)
            self._waiting_tokens += len(seq.tokens)

    def _finish_unsampled(self, seq: Sequence) -> None:
        """End a sequence that asked for no completion (max_tokens 0): its prompt was scored."""
        seq.first_token_at = self._clock()
        self._running.remove(seq)
        self._release(seq)
        self._completed += 1
        self._outbox.send(seq, scored_prompt_delta(seq))

    def _accept(self, seq: Sequence, token: int, now: float) -> None:
        """Append a sampled token to its sequence and send its delta (or its end)."""
        delta = self._output.accept(seq, token, now)
        if delta.finish_reason is not None:
            self._running.remove(seq)
            self._release(seq)
            self._completed += 1
        self._outbox.send(seq, delta)

    def _release(self, seq: Sequence, *, keep_cache: bool = True, finished: bool = True) -> None:
        """Give back a sequence's slot, keeping its KV as a prefix-cache entry if asked."""
        if self._slots.release(seq, keep_cache=keep_cache):
            with self._lock:
                self._idle_slots += 1
        seq.n_past = 0
        if finished:
            seq.sampler.free()
