"""The cost ledger: one row per request the service answered or failed, in the database.

``record`` builds the row and appends it to the journal (accounting/journal.py) before the
response's last byte is sent; a background task moves journal rows into the database in
batches, retrying with jittered backoff while the database is slow or down (the journal grows,
bounded; nothing is dropped unless it fills). ``stop`` flushes what is left. Each row carries
the hosted-equivalent cost at every reference, at the price version in effect that day, and the
local cost at the current rolling rate (unknown, never $0, without a hardware cost).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from vllm_service.accounting.cost import HardwareCost, PriceTable
from vllm_service.accounting.journal import Journal, orphans, read_rows
from vllm_service.accounting.request_log import RequestRecord
from vllm_service.storage import Database, ledger, ledger_costs
from vllm_service.storage.retention import purge_audit

logger = logging.getLogger(__name__)

_LEDGER_COLUMNS = [c.name for c in ledger.columns]


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    url: str
    journal_dir: Path
    journal_max_bytes: int = 256 * 1024 * 1024
    fsync: bool = False
    batch_rows: int = 1000
    flush_interval: float = 0.2
    retention_days: float = 400.0
    hash_users: bool = False
    #: The audit trail's admin actions and content are purged after this many days.
    audit_retention_days: float = 400.0


class RollingRate:
    """Tokens served over the last ``window`` seconds: what an hour of hardware serves now."""

    def __init__(self, window: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._started = clock()
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._tokens = 0

    def add(self, tokens: int) -> None:
        now = self._clock()
        self._events.append((now, tokens))
        self._tokens += tokens
        while self._events and self._events[0][0] < now - self.window:
            self._tokens -= self._events.popleft()[1]

    def tokens_per_hour(self) -> float:
        span = max(1.0, min(self.window, self._clock() - self._started))
        return self._tokens * 3600.0 / span


class Ledger:
    """Journal first, database after; one row per request."""

    def __init__(
        self,
        settings: LedgerSettings,
        prices: PriceTable,
        hardware: HardwareCost,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.prices = prices
        self.hardware = hardware
        self.db = Database(settings.url)
        self.journal: Journal | None = None
        self.rate = RollingRate()
        self._wall = wall_clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        #: Rows committed to the database by this process, and failed write attempts.
        self.committed = 0
        self.write_errors = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Migrate the schema, replay journals that crashed processes left, start writing."""
        await self.db.upgrade()
        root = self.settings.journal_dir
        self.journal = Journal(
            root, max_bytes=self.settings.journal_max_bytes, fsync=self.settings.fsync
        )
        await self._recover(root)
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def stop(self, grace: float = 30.0) -> None:
        """Write every journal row that the database takes within ``grace`` seconds, then
        close; what it does not take stays in the journal for the next start."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(grace):
                    await self._task
            except TimeoutError:
                self._task.cancel()
                logger.error("ledger: the database did not take the journal within %ss", grace)
        if self.journal is not None:
            self.journal.close()
        await self.db.close()

    # -- the hot path ------------------------------------------------------------------------

    def local_cost(self, tokens: int) -> float | None:
        """The local cost of ``tokens`` at the current rolling rate; None without a hardware
        cost (unknown, never $0)."""
        if self.hardware.per_hour <= 0:
            return None
        per_hour = self.rate.tokens_per_hour()
        return self.hardware.per_hour * tokens / per_hour if per_hour > 0 else None

    def record(self, rec: RequestRecord) -> None:
        """Append the request's row to the journal (one write; the database comes later)."""
        if self.journal is None:
            return
        tokens = rec.prompt_tokens + rec.completion_tokens
        if rec.model is not None and rec.cache != "hit":
            self.rate.add(tokens)
        now = self._wall()
        day = datetime.fromtimestamp(now, UTC).date()
        hosted = {}
        if rec.model is not None and rec.status < 400:
            for price in self.prices.on(day):
                cost = price.cost(rec.prompt_tokens, rec.completion_tokens)
                hosted[price.name] = (price.version, cost)
        user = rec.user
        if user is not None and self.settings.hash_users:
            user = hashlib.sha256(user.encode()).hexdigest()[:32]
        row = {
            "id": os.urandom(16).hex(),
            "time": now,
            "request_id": rec.request_id,
            "route": rec.route,
            "model": rec.model,
            "deployment": rec.deployment,
            "engine": rec.engine,
            "device": rec.device,
            "key_id": rec.key_id,
            "user": user,
            "client": rec.client,
            "status": rec.status,
            "error_type": rec.error_type,
            "stream": rec.stream,
            "cache": rec.cache,
            "fallback": rec.fallback,
            "choices": rec.finished_choices,
            "prompt_tokens": rec.prompt_tokens,
            "completion_tokens": rec.completion_tokens,
            "cached_tokens": rec.cached_tokens,
            "usage_estimated": rec.usage.estimated,
            "latency_ms": None if rec.latency is None else rec.latency * 1e3,
            "ttft_ms": None if rec.ttft is None else rec.ttft * 1e3,
            "local_cost_usd": self.local_cost(tokens) if rec.model is not None else None,
            "hosted": hosted,
        }
        if not self.journal.append(row):
            logger.error("ledger: the journal is full; a row was dropped (database down?)")

    # -- the writer --------------------------------------------------------------------------

    async def _run(self) -> None:
        interval = self.settings.flush_interval
        last_purge = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            journal = self.journal
            assert journal is not None
            journal.seal()
            for path in journal.sealed():
                await self._commit(list(read_rows(path)))
                journal.committed(path)
            if time.monotonic() - last_purge > 3600:
                last_purge = time.monotonic()
                await self._purge_expired()
            if self._stopping and not journal.sealed() and not journal.bytes:
                return

    async def _recover(self, root: Path) -> None:
        """Replay the journals of processes that died before their rows were committed."""
        own = self.journal.dir if self.journal is not None else None
        for directory, fd in orphans(root):
            if directory == own:
                os.close(fd)
                continue
            files = [*sorted(directory.glob("sealed-*.jsonl")), directory / "active.jsonl"]
            rows = [row for f in files if f.exists() for row in read_rows(f)]
            if rows:
                logger.warning("ledger: replaying %d rows left by %s", len(rows), directory.name)
            await self._commit(rows)
            for f in files:
                f.unlink(missing_ok=True)
            (directory / "lock").unlink(missing_ok=True)
            os.close(fd)
            directory.rmdir()

    async def _commit(self, rows: list[dict[str, Any]]) -> None:
        """Insert rows in batches, ignoring ids already present; retry until the database
        takes them (the journal holds them meanwhile)."""
        size = self.settings.batch_rows
        for start in range(0, len(rows), size):
            batch = sorted(rows[start : start + size], key=lambda r: r["id"])
            delay = 0.05
            while True:
                try:
                    await self._insert(batch)
                    self.committed += len(batch)
                    break
                except (SQLAlchemyError, OSError) as exc:
                    self.write_errors += 1
                    logger.warning("ledger: write failed, retrying in %.2fs: %s", delay, exc)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, 5.0)

    async def _insert(self, batch: list[dict[str, Any]]) -> None:
        insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        rows = [{k: row.get(k) for k in _LEDGER_COLUMNS} for row in batch]
        costs = [
            {"ledger_id": row["id"], "reference": ref, "price_version": v, "cost_usd": cost}
            for row in batch
            for ref, (v, cost) in (row.get("hosted") or {}).items()
        ]
        # Sorted by id, so concurrent writers (replicas) lock rows in one order: no deadlock.
        async with self.db.engine.begin() as conn:
            await conn.execute(insert(ledger).on_conflict_do_nothing(index_elements=["id"]), rows)
            if costs:
                stmt = insert(ledger_costs).on_conflict_do_nothing(
                    index_elements=["ledger_id", "reference"]
                )
                await conn.execute(stmt, costs)

    async def _purge_expired(self) -> None:
        now = self._wall()
        try:
            await self.purge(now - self.settings.retention_days * 86400)
            await purge_audit(self.db, now - self.settings.audit_retention_days * 86400)
        except SQLAlchemyError as exc:
            logger.warning("ledger: retention purge failed: %s", exc)

    async def purge(self, before: float) -> int:
        """Delete rows older than ``before`` (seconds since the epoch); returns how many."""
        return await purge(self.db, before)


async def purge(db: Database, before: float) -> int:
    """Delete ledger rows older than ``before`` (seconds since the epoch); returns how many."""
    old = ledger.c.time < before
    async with db.engine.begin() as conn:
        ids = select(ledger.c.id).where(old)
        await conn.execute(delete(ledger_costs).where(ledger_costs.c.ledger_id.in_(ids)))
        result = await conn.execute(delete(ledger).where(old))
    return int(result.rowcount or 0)
