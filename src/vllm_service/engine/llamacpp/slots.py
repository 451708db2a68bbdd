"""The slots: one ``seq_id`` and KV stream each, running a sequence or holding a cached prefix.

A new sequence is placed where it saves the most prefill without throwing away more cached
work than it reuses:

- it continues in the idle slot whose cached tokens share the longest prefix with its prompt
  when that entry is (nearly) all shared: a returning conversation, a repeated prompt;
- when the best entry shares only its beginning (a system prompt that many conversations
  start with), that entry is kept: the shared prefix is copied (``llama_memory_seq_cp``) into
  the spare slot (an empty one, else the least recently used entry), or recomputed there when
  it is too short to be worth a copy. Before, the new prompt overwrote the entry it matched, so
  with a shared system prompt the cache kept about one conversation;
- when a *running* sequence shares a longer prefix, its stream is copied into the spare slot;
- when an entry of the host-RAM tier (host_cache.py) shares 8+ more tokens than any of those,
  it is copied back into the spare slot.

An entry about to lose 32+ of its tokens (its slot taken for other work) is first saved to the
host-RAM tier, when there is one.

Where the new work may go anywhere (nothing matched, a copy, a restore), it goes next to the
running sequences: llama.cpp (one KV stream per slot) runs a batch as one forward pass per
run of *consecutive* seq_ids, so four sequences in slots 2, 7, 11 and 15 cost four passes of
the weights per step where slots 6-9 cost one (measured: a 4-sequence decode step took 46 ms
with the slots scattered after other traffic, 29 ms adjacent). A conversation continuing in an
idle slot away from the running ones is moved next to them by a copy (~8 ms, once) rather than
split off every step. Among equally placed slots, empty ones go first, then the least recently
used: that is the prefix cache's LRU bound. Touched by the scheduler thread only.
"""

from __future__ import annotations

from typing import Any

import llama_cpp

from vllm_service.engine.llamacpp.host_cache import HostCache, HostEntry
from vllm_service.engine.llamacpp.sequence import Sequence, Slot, common_prefix

#: Copying a KV stream costs a copy of the whole stream; below this many shared tokens
#: recomputing them is cheaper. Measured with the bundled model on 2 CPU threads (2048-cell
#: streams): a copy added 8 ms to the next decode, recomputing 24 tokens took 78 ms, so the
#: break-even is ~3 tokens. (At 32 a chat template's own ~24-token system prompt was
#: recomputed by every request.)
MIN_COPY_PREFIX = 8
#: A cache entry that a new prompt matches only in part is kept (the new one goes elsewhere):
#: always while an empty slot is left, then when at least this many of its tokens would be
#: lost (the least recently used entry makes room instead).
MIN_KEPT_TOKENS = 32


class SlotTable:
    """Every slot of one llama context, and the prefix cache they make up."""

    def __init__(
        self, ctx: Any, n_slots: int, *, prefix_caching: bool, host_bytes: int = 0
    ) -> None:
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        self.prefix_caching = prefix_caching
        self.host = HostCache(ctx, host_bytes if prefix_caching else 0)
        #: Slots a stream copy was queued into: llama.cpp performs it at the next decode, so
        #: until then their KV must not be saved.
        self._copied: set[int] = set()
        self._uses = 0
        #: Running sequences' streams copied into an idle slot to share their prefix.
        self.copies = 0
        #: Cells llama.cpp holds, and of those the ones only cached (idle slots).
        self.kv_used = 0
        self.kv_cached = 0

    def __len__(self) -> int:
        return len(self.slots)

    def place(self, seq: Sequence, running: list[Sequence]) -> tuple[int, int]:
        """Give ``seq`` an idle slot; returns how many of its tokens' KV it already holds, and
        how many of those came back from the host-RAM tier."""
        idle = [s for s in self.slots if s.seq is None]
        # At least the last known token is computed: its logits are what gets sampled. A
        # prompt being scored is computed whole: every position's logits are needed.
        limit = 0 if seq.scoring else len(seq.tokens) - 1
        # Beside the running sequences; then empty, else least recently used.
        spare = min(idle, key=lambda s: (self._runs_added(s), bool(s.cached), s.last_used))
        slot, reuse, source = spare, 0, None
        saved: HostEntry | None = None
        if self.prefix_caching and limit > 0:
            slot, reuse, source = self._choose(seq, idle, spare, running, limit)
            shared, entry = self.host.best(seq.tokens, limit)
            if shared >= reuse + MIN_COPY_PREFIX:
                slot, reuse, source, saved = spare, shared, None, entry
        # The slot's own entry, unless the new work continues it, is about to be lost.
        kept = reuse if source is None and saved is None else 0
        if len(slot.cached) - kept >= MIN_KEPT_TOKENS and slot.seq_id not in self._copied:
            self.host.save(slot.seq_id, slot.cached, pinned=saved)
        restored = 0
        if saved is not None:
            restored = reuse if self.host.restore(saved, slot.seq_id) else 0
            reuse = restored
        elif source is not None:
            llama_cpp.llama_memory_seq_cp(self._memory, source.seq_id, slot.seq_id, -1, -1)
            self._copied.add(slot.seq_id)
            self.copies += 1
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, reuse, -1):
            # A model whose memory cannot be cut mid-sequence: start from nothing.
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            reuse = restored = 0
        self._uses += 1
        slot.seq, slot.cached, slot.last_used = seq, [], self._uses
        seq.slot = slot
        seq.n_past = reuse
        return reuse, restored

    def _choose(
        self, seq: Sequence, idle: list[Slot], spare: Slot, running: list[Sequence], limit: int
    ) -> tuple[Slot, int, Slot | None]:
        """Where a sequence goes among the slots: (slot, tokens reused, slot to copy from)."""
        slot, reuse, source = spare, 0, None
        matches = [(min(common_prefix(s.cached, seq.tokens), limit), s) for s in idle]
        best, best_slot = max(matches, key=lambda m: (m[0], m[1].last_used))
        # Tokens of the matched entry a new prompt would overwrite: worth keeping when an
        # empty slot can take the new one, or when they outweigh the LRU entry's place.
        lost = len(best_slot.cached) - best
        keep = lost > 0 if not spare.cached else lost >= MIN_KEPT_TOKENS
        # Continuing in place would split the batch into one more forward pass per step.
        stray = self._runs_added(best_slot) > self._runs_added(spare)
        if (
            best > 0
            and (best_slot is spare or not keep)
            and not (stray and best >= MIN_COPY_PREFIX)
        ):
            slot, reuse = best_slot, best  # continue where it left off
        elif best >= MIN_COPY_PREFIX:
            reuse, source = best, best_slot  # share its prefix, keep the entry
        for other in running:
            shared = min(common_prefix(other.tokens[: other.n_past], seq.tokens), limit)
            if shared >= MIN_COPY_PREFIX and shared > reuse:
                slot, reuse, source = spare, shared, other.slot
        return slot, reuse, source

    def _runs_added(self, slot: Slot) -> int:
        """How many more runs of consecutive running seq_ids there would be with ``slot``
        running too: 1 alone, 0 beside one run, -1 joining two. Only compared between slots:
        when nothing runs, every slot scores 1 and the other keys decide."""
        slots = self.slots
        i = slot.seq_id
        left = i > 0 and slots[i - 1].seq is not None
        right = i + 1 < len(slots) and slots[i + 1].seq is not None
        return 1 - left - right

    def decoded(self) -> None:
        """A decode ran: llama.cpp has performed the stream copies queued before it."""
        self._copied.clear()

    def release(self, seq: Sequence, *, keep_cache: bool) -> bool:
        """Free a sequence's slot, its KV kept as a prefix-cache entry if asked; False if it
        had none."""
        slot = seq.slot
        if slot is None:
            return False
        if keep_cache and self.prefix_caching:
            slot.cached = seq.tokens[: seq.n_past]
        else:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached = []
        slot.seq = None
        seq.slot = None
        return True

    def measure(self) -> None:
        """Count the cells llama.cpp really holds (the leak check), and those only cached."""
        used = cached = 0
        for slot in self.slots:
            top = llama_cpp.llama_memory_seq_pos_max(self._memory, slot.seq_id)
            if top >= 0:
                cells = top - llama_cpp.llama_memory_seq_pos_min(self._memory, slot.seq_id) + 1
                used += cells
                if slot.seq is None:
                    cached += cells
        self.kv_used, self.kv_cached = used, cached
