"""The prefix cache's second tier: KV of past prefixes kept in host RAM.

A slot holds one prefix-cache entry; with ``max_num_seqs`` slots the first tier keeps that many
conversations. When a slot's entry is about to be overwritten, its KV is copied out of llama.cpp
(``llama_state_seq_get_data``) into this tier; a later prompt that shares more of its beginning
with a saved entry than with any slot gets it copied back (``llama_state_seq_set_data``) instead
of computing it again. Restoring costs a memory copy (~22 KB per token for the bundled model):
hundreds of times less than prefilling the same tokens on a CPU.

Bounded by ``budget`` bytes, least recently used entries dropped first. An entry that another
entry extends is dropped: the longer one serves both. Each entry is its own anonymous memory
map, returned to the system when the entry is dropped: entries of megabytes allocated and freed
through malloc left the process ~1.6x the budget larger, its heap fragmented
(``benchmarks/host_cache_memory.py``). Touched by the scheduler thread only.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import mmap
from dataclasses import dataclass
from typing import Any

import llama_cpp

from vllm_service.engine.llamacpp.device import available_memory_bytes
from vllm_service.engine.llamacpp.options import (
    FALLBACK_PREFIX_CACHE_HOST_BYTES,
    MAX_AUTO_PREFIX_CACHE_HOST_BYTES,
    LlamaCppOptions,
)
from vllm_service.engine.llamacpp.sequence import common_prefix

logger = logging.getLogger(__name__)


def host_cache_budget(options: LlamaCppOptions) -> int:
    """The tier's bytes: as configured; unset, a quarter of the memory available now (a
    container's limit included), at most 8 GiB; none without prefix caching. Entries take
    memory as they come: an idle service holds none of it."""
    if not options.enable_prefix_caching:
        return 0
    if options.prefix_cache_host_bytes is not None:
        return int(options.prefix_cache_host_bytes)
    available = available_memory_bytes()
    if available is None:
        return FALLBACK_PREFIX_CACHE_HOST_BYTES
    return max(0, min(MAX_AUTO_PREFIX_CACHE_HOST_BYTES, available // 4))


@dataclass(eq=False, slots=True)
class HostEntry:
    key: int
    tokens: list[int]
    size: int
    memory: mmap.mmap
    data: Any  # a ctypes uint8 array over ``memory``

    @classmethod
    def allocate(cls, key: int, tokens: list[int], size: int) -> HostEntry:
        memory = mmap.mmap(-1, size)
        return cls(key, list(tokens), size, memory, (ctypes.c_uint8 * size).from_buffer(memory))

    def release(self) -> None:
        self.data = None  # the only view of the map: it must go before the map can close
        self.memory.close()


class HostCache:
    """KV states of past prefixes, in host RAM, within a byte budget (LRU)."""

    def __init__(self, ctx: Any, budget: int) -> None:
        self._ctx = ctx
        self.budget = budget
        self._entries: collections.OrderedDict[int, HostEntry] = collections.OrderedDict()
        self._next_key = 0
        self.bytes = 0
        self.saves = 0
        self.restores = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def best(self, tokens: list[int], limit: int) -> tuple[int, HostEntry | None]:
        """The entry sharing the longest prefix with ``tokens`` (at most ``limit``)."""
        best, found = 0, None
        for entry in self._entries.values():
            shared = min(common_prefix(entry.tokens, tokens), limit)
            if shared > best:
                best, found = shared, entry
        return best, found

    def save(self, seq_id: int, tokens: list[int], pinned: HostEntry | None = None) -> bool:
        """Copy the KV of ``seq_id`` (holding ``tokens``) into this tier; False if not kept.

        ``pinned`` (an entry about to be restored) is never dropped to make room."""
        if not self.enabled or not tokens:
            return False
        for key, entry in self._entries.items():
            if common_prefix(entry.tokens, tokens) == len(tokens):
                self._entries.move_to_end(key)  # already held, by it or a longer one
                return False
        size = int(llama_cpp.llama_state_seq_get_size(self._ctx, seq_id))
        room = self.budget - (pinned.size if pinned is not None else 0)
        if size == 0 or size > room:
            return False
        # Entries this one extends serve no prompt it does not: drop them first.
        for key, entry in list(self._entries.items()):
            extended = common_prefix(entry.tokens, tokens) == len(entry.tokens)
            if entry is not pinned and len(entry.tokens) <= len(tokens) and extended:
                self._drop(key)
        for key in [k for k, e in self._entries.items() if e is not pinned]:
            if self.bytes + size <= self.budget:
                break
            self._drop(key)
            self.evictions += 1
        entry = HostEntry.allocate(self._next_key, tokens, size)
        written = int(llama_cpp.llama_state_seq_get_data(self._ctx, entry.data, size, seq_id))
        if written == 0:
            entry.release()
            logger.warning("could not copy the KV of sequence %d to host memory", seq_id)
            return False
        self._entries[self._next_key] = entry
        self._next_key += 1
        self.bytes += size
        self.saves += 1
        return True

    def restore(self, entry: HostEntry, seq_id: int) -> bool:
        """Copy a saved entry's KV into ``seq_id`` (emptied first); False if llama.cpp refused."""
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx), seq_id, -1, -1)
        read = int(llama_cpp.llama_state_seq_set_data(self._ctx, entry.data, entry.size, seq_id))
        if read == 0:
            logger.warning("could not restore a host-memory prefix into sequence %d", seq_id)
            return False
        if entry.key in self._entries:
            self._entries.move_to_end(entry.key)
        self.restores += 1
        return True

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        entry.release()

    def clear(self) -> None:
        for key in list(self._entries):
            self._drop(key)
