"""The continuous-batching scheduler: one thread owns the llama context and steps every sequence.

Each step builds one ``llama_batch``: the next token of every running sequence that is decoding,
then prompt chunks of sequences still prefilling, within ``max_num_batched_tokens``. One
``llama_decode`` runs it; every sequence whose last fed token produced logits is sampled with its
own sampler chain, and its delta is handed to its asyncio queue with ``call_soon_threadsafe``.

A sequence is simply "tokens known" (prompt + generated) and "tokens in the KV cache"; a step
feeds the difference. That makes both prefix caching and preemption plain:

* **Slots.** There are ``max_num_seqs`` slots, each a ``seq_id`` with its own KV stream of
  ``max_model_len`` cells. A running sequence occupies one. When it ends, its slot keeps the
  KV of the tokens it computed, as a prefix-cache entry, until the slot is reused.
* **Prefix caching.** A new sequence goes to the idle slot whose cached tokens share the longest
  prefix with its prompt; the cells past that prefix are dropped and only the rest is computed.
  When a *running* sequence shares a longer prefix, its stream is copied
  (``llama_memory_seq_cp``) into an idle slot instead. Idle slots that match nothing are reused
  least recently used first: that is the cache's LRU bound.
* **Preemption.** If ``llama_decode`` finds no room for a batch, the newest sequence's cells are
  dropped and it re-enters the waiting queue, to be recomputed later; running ones go on.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from vllm_service.engine.base import (
    EngineError,
    EngineUnavailableError,
    FinishReason,
    PromptTokenLogprob,
    SamplingParams,
    SchedulerStats,
    Timing,
    TokenDelta,
    TokenLogprob,
    Usage,
)
from vllm_service.engine.llamacpp.model import LlamaModel
from vllm_service.engine.llamacpp.sampling import SamplerChain, token_logprob
from vllm_service.engine.llamacpp.text_output import TextOutput

logger = logging.getLogger(__name__)

#: Hands one item to a request's reader; called on the event loop's thread.
Deliver = Callable[[TokenDelta | BaseException], None]
#: Runs a callback on the event loop's thread (``loop.call_soon_threadsafe``).
Post = Callable[[Callable[[], None]], object]

#: Copying a running sequence's KV stream costs a copy of the whole stream; below this many
#: shared tokens recomputing them is cheaper.
MIN_COPY_PREFIX = 32


def common_prefix(a: Seq[int], b: Seq[int]) -> int:
    """Length of the longest common prefix of two token lists (slice compares run in C)."""
    hi = min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    lo = 0  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(eq=False)
class Sequence:
    """One sequence being generated; touched only by the scheduler thread once submitted."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    sampler: SamplerChain
    deliver: Deliver
    text: TextOutput
    tokens: list[int] = field(default_factory=list)
    n_past: int = 0
    slot: Slot | None = None
    batch_index: int = -1
    # Written by the event loop's thread, read by the scheduler's: a plain bool is enough.
    aborted: bool = False
    cached_tokens: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float = 0.0
    inter_token_times: list[float] = field(default_factory=list)
    #: Prompt scoring: batch rows whose logits score the next prompt token, and the scores.
    score_rows: list[tuple[int, int]] = field(default_factory=list)
    prompt_scores: list[PromptTokenLogprob] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)

    @property
    def scoring(self) -> bool:
        return self.params.prompt_logprobs is not None

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - len(self.prompt)

    @property
    def pending(self) -> int:
        """Known tokens not yet in the KV cache."""
        return len(self.tokens) - self.n_past

    def timing(self) -> Timing:
        scheduled = self.scheduled_at if self.scheduled_at is not None else self.submitted_at
        first = self.first_token_at if self.first_token_at is not None else scheduled
        return Timing(
            queue_time=scheduled - self.submitted_at,
            time_to_first_token=first - self.submitted_at,
            inter_token_times=tuple(self.inter_token_times),
            submitted_at=self.submitted_at,
        )


@dataclass(eq=False)
class Slot:
    """One ``seq_id`` and its KV stream: a running sequence, or a prefix-cache entry."""

    seq_id: int
    #: Tokens whose KV the stream holds while the slot is idle.
    cached: list[int] = field(default_factory=list)
    seq: Sequence | None = None
    last_used: int = 0

    def kv_tokens(self) -> list[int]:
        if self.seq is not None:
            return self.seq.tokens[: self.seq.n_past]
        return self.cached


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._post = post
        # Deltas of one step, handed to the event loop in one callback (one wake-up per step
        # instead of one per sequence).
        self._outbox: list[tuple[Sequence, TokenDelta | BaseException]] = []
        self._budget = max_num_batched_tokens
        self._max_waiting = max_waiting_seqs
        self._max_waiting_tokens = max_waiting_tokens
        self._queue_timeout = queue_timeout
        self._prefix_caching = enable_prefix_caching
        self._clock = clock
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = max_model_len * max_num_seqs
        params.n_batch = max_num_batched_tokens
        params.n_ubatch = max_num_batched_tokens
        params.n_seq_max = max_num_seqs
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        # One KV stream per slot (max_model_len cells each). Measured here: with a unified
        # buffer a sequence's greedy output changes with what runs beside it; with per-slot
        # streams it is the same alone and in a batch of 16. It also means a sequence that
        # passed the context-length check always has room: KV exhaustion cannot happen.
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
        # Guarded by _lock: the hand-over from the event loop and the waiting queue.
        self._incoming: collections.deque[Sequence] = collections.deque()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._waiting_tokens = 0
        self._idle_slots = max_num_seqs
        self._stopping = False
        # The scheduler thread's own state.
        self._slots = [Slot(seq_id=i) for i in range(max_num_seqs)]
        self._running: list[Sequence] = []
        self._uses = 0
        self._kv_used = 0
        self._kv_cached = 0
        self._steps = 0
        self._preemptions = 0
        self._submitted = 0
        self._completed = 0
        self._aborted = 0
        self._queue_timeouts = 0
        self._rejected = 0
        self._prompt_tokens = 0
        self._hit_tokens = 0
        self._copies = 0
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
            kv_cells_used=self._kv_used,
            kv_cells_cached=self._kv_cached,
            kv_cells_total=self.kv_cells,
            steps=self._steps,
            preemptions=self._preemptions,
            submitted=self._submitted,
            completed=self._completed,
            aborted=self._aborted,
            queue_timeouts=self._queue_timeouts,
            rejected=self._rejected,
            prompt_tokens=self._prompt_tokens,
            prefix_cache_hit_tokens=self._hit_tokens,
            prefix_cache_copies=self._copies,
            decode_seconds=round(self._decode_time, 6),
            sample_seconds=round(self._sample_time, 6),
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
                self._flush()
        except BaseException as exc:  # a crash must reach every waiting client, not vanish
            logger.exception("scheduler thread failed")
            self._fail_all(EngineError(f"engine failure: {exc}"))
        self._flush()

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
        self._expire_waiting()
        self._admit()
        if not self._running:
            self._measure_kv()
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
        for seq, count in fed:
            seq.n_past += count
        now = self._clock()
        for seq, _ in fed:
            if seq.score_rows:
                self._score_prompt(seq)
            if seq.batch_index >= 0 and not seq.aborted:
                if seq.max_tokens == 0:  # only the prompt's scores were asked for
                    self._finish_unsampled(seq)
                    continue
                self._accept(seq, seq.sampler.sample(self._ctx, seq.batch_index), now)
        self._sample_time += time.perf_counter() - decoded
        if not self._running or self._steps % 64 == 0:
            self._measure_kv()

    def _measure_kv(self) -> None:
        """Count the cells llama.cpp really holds (the leak check), and those only cached."""
        used = cached = 0
        for slot in self._slots:
            top = llama_cpp.llama_memory_seq_pos_max(self._memory, slot.seq_id)
            if top >= 0:
                cells = top - llama_cpp.llama_memory_seq_pos_min(self._memory, slot.seq_id) + 1
                used += cells
                if slot.seq is None:
                    cached += cells
        self._kv_used, self._kv_cached = used, cached

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
            self._send(
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
        idle = [s for s in self._slots if s.seq is None]
        # At least the last known token is computed: its logits are what gets sampled. A
        # prompt being scored is computed whole: every position's logits are needed.
        limit = 0 if seq.scoring else len(seq.tokens) - 1
        reuse = 0
        slot = min(idle, key=lambda s: (bool(s.cached), s.last_used))  # empty, else LRU
        source: Slot | None = None
        if self._prefix_caching and limit > 0:
            matches = [(min(common_prefix(s.kv_tokens(), seq.tokens), limit), s) for s in idle]
            best, best_slot = max(matches, key=lambda m: (m[0], m[1].last_used))
            if best > 0:
                reuse, slot = best, best_slot
            for other in self._running:
                shared = min(common_prefix(other.tokens[: other.n_past], seq.tokens), limit)
                if shared >= MIN_COPY_PREFIX and shared > reuse:
                    reuse, source = shared, other.slot
        if source is not None:
            # Copying into the least useful idle slot keeps the better cached entries.
            slot = min(idle, key=lambda s: (bool(s.cached), s.last_used))
            llama_cpp.llama_memory_seq_cp(self._memory, source.seq_id, slot.seq_id, -1, -1)
            self._copies += 1
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, reuse, -1):
            # A model whose memory cannot be cut mid-sequence: start from nothing.
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            reuse = 0
        self._uses += 1
        slot.seq, slot.cached, slot.last_used = seq, [], self._uses
        seq.slot = slot
        seq.n_past = reuse
        if seq.scheduled_at is None:  # not a preempted sequence coming back
            seq.scheduled_at = self._clock()
            seq.cached_tokens = reuse
            self._prompt_tokens += len(seq.prompt)
            self._hit_tokens += reuse

    def _fill_batch(self) -> list[tuple[Sequence, int]]:
        # Decoding sequences are served first: one token each keeps every stream moving.
        # Prompt chunks take what is left of the budget.
        room = self._budget
        fed: list[tuple[Sequence, int]] = []
        for seq in [s for s in self._running if s.pending == 1] + [
            s for s in self._running if s.pending > 1
        ]:
            if room <= 0:
                break
            count = min(seq.pending, room)
            fed.append((seq, count))
            room -= count
        # The batch is written in seq_id order. With one KV stream per sequence llama.cpp
        # splits a batch into micro-batches of *consecutive* seq_ids; out of order, each
        # sequence would become its own forward pass (measured: 16 decode tokens took 2x as
        # long shuffled as sorted).
        fed.sort(key=lambda item: item[0].slot.seq_id if item[0].slot else -1)
        batch = self._batch
        n = 0
        for seq, count in fed:
            assert seq.slot is not None
            seq_id = seq.slot.seq_id
            start = seq.n_past
            scores = seq.scoring and start < len(seq.prompt)
            for offset in range(count):
                batch.token[n] = seq.tokens[start + offset]
                batch.pos[n] = start + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = 1 if scores else 0
                if scores:
                    seq.score_rows.append((n, start + offset))
                n += 1
            if count == seq.pending:
                batch.logits[n - 1] = 1
                seq.batch_index = n - 1
            else:
                seq.batch_index = -1
        batch.n_tokens = n
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
            self._send(seq, error)

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

    def _score_prompt(self, seq: Sequence) -> None:
        """Each scored row's logits give the log-probability of the prompt token after it."""
        n_top = seq.params.prompt_logprobs or 0
        if not seq.prompt_scores:
            first = self._model.token_text(seq.prompt[0])
            seq.prompt_scores.append(PromptTokenLogprob(token=first, logprob=None))
        for row, position in seq.score_rows:
            if position + 1 < len(seq.prompt):
                lp = token_logprob(self._model, self._ctx, row, seq.prompt[position + 1], n_top)
                seq.prompt_scores.append(PromptTokenLogprob(lp.token, lp.logprob, lp.top))
        seq.score_rows.clear()

    def _finish_unsampled(self, seq: Sequence) -> None:
        """End a sequence that asked for no completion (max_tokens 0): its prompt was scored."""
        seq.first_token_at = self._clock()
        self._running.remove(seq)
        self._release(seq)
        self._completed += 1
        usage = Usage(prompt_tokens=len(seq.prompt), completion_tokens=0)
        self._send(
            seq,
            TokenDelta(
                text="",
                finish_reason=FinishReason.LENGTH,
                usage=usage,
                timing=seq.timing(),
                prompt_logprobs=tuple(seq.prompt_scores),
            ),
        )

    def _accept(self, seq: Sequence, token: int, now: float) -> None:
        """Append a sampled token to its sequence and send its delta (or its end)."""
        scores: tuple[PromptTokenLogprob, ...] = ()
        if seq.first_token_at is None:
            seq.first_token_at = now
            scores = tuple(seq.prompt_scores)
        else:
            seq.inter_token_times.append(now - seq.last_token_at)
        seq.last_token_at = now
        logprobs: tuple[TokenLogprob, ...] = ()
        if seq.params.logprobs is not None:
            logprobs = (
                token_logprob(self._model, self._ctx, seq.batch_index, token, seq.params.logprobs),
            )
        seq.tokens.append(token)
        finish: FinishReason | None = None
        if self._model.is_end_of_generation(token) and not seq.params.ignore_eos:
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
            delta = TokenDelta(
                text=text, token_ids=(token,), logprobs=logprobs, prompt_logprobs=scores
            )
            self._send(seq, delta)
            return
        usage = Usage(
            prompt_tokens=len(seq.prompt),
            completion_tokens=seq.n_generated,
            cached_tokens=seq.cached_tokens,
        )
        self._running.remove(seq)
        self._release(seq)
        self._completed += 1
        self._send(
            seq,
            TokenDelta(
                text=text,
                token_ids=(token,),
                logprobs=logprobs,
                finish_reason=finish,
                usage=usage,
                timing=seq.timing(),
                prompt_logprobs=scores,
            ),
        )

    def _release(self, seq: Sequence, *, keep_cache: bool = True, finished: bool = True) -> None:
        """Give back a sequence's slot, keeping its KV as a prefix-cache entry if asked."""
        slot = seq.slot
        if slot is not None:
            if keep_cache and self._prefix_caching:
                slot.cached = seq.tokens[: seq.n_past]
            else:
                llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                slot.cached = []
            slot.seq = None
            seq.slot = None
            with self._lock:
                self._idle_slots += 1
        seq.n_past = 0
        if finished:
            seq.sampler.free()

    def _send(self, seq: Sequence, item: TokenDelta | BaseException) -> None:
        self._outbox.append((seq, item))

    def _flush(self) -> None:
        """Hand this step's deltas to the event loop, in order, in one callback."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []

        def deliver() -> None:
            for seq, item in outbox:
                seq.deliver(item)

        try:
            self._post(deliver)
        except RuntimeError:
            # The event loop is gone (shutdown); nobody is left to read these.
            for seq, _ in outbox:
                seq.aborted = True
