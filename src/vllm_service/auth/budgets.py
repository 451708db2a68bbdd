"""Per-key budgets in dollars per day or month (UTC), counted from the cost ledger.

A request is admitted while what the key spent in the period (the ledger's rows; each costs its
local cost, or, without a hardware cost, its hosted-equivalent at the first reference) plus
what its requests in flight have reserved stays under the budget. The ledger's sums are cached
for a second per key, so replicas agree within that second plus their in-flight reservations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import func, select

from vllm_service.storage import Database, ledger, ledger_costs


def period_start(period: str, now: float) -> float:
    """The start (epoch seconds) of the UTC day or month holding ``now``."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = day.replace(day=1) if period == "month" else day
    return start.timestamp()


class Budgets:
    """What keys spent, from the ledger, plus what their requests in flight reserved."""

    def __init__(
        self, db: Database, reference: str | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        #: Without a hardware cost, requests cost their hosted-equivalent at this reference.
        self.reference = reference
        self._clock = clock
        self._spent: dict[tuple[str, float], tuple[float, float]] = {}
        self.reserved: dict[str, float] = {}

    async def spent(self, key_id: str, period: str) -> float:
        now = self._clock()
        start = period_start(period, now)
        cached = self._spent.get((key_id, start))
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        where = [ledger.c.key_id == key_id, ledger.c.time >= start]
        local = select(func.sum(ledger.c.local_cost_usd)).where(*where)
        hosted = (
            select(func.sum(ledger_costs.c.cost_usd))
            .join(ledger, ledger.c.id == ledger_costs.c.ledger_id)
            .where(*where, ledger.c.local_cost_usd.is_(None))
            .where(ledger_costs.c.reference == self.reference)
        )
        async with self.db.engine.connect() as conn:
            total = float((await conn.execute(local)).scalar() or 0.0)
            if self.reference is not None:
                total += float((await conn.execute(hosted)).scalar() or 0.0)
        self._spent[(key_id, start)] = (now, total)
        return total

    def reserve(self, key_id: str, usd: float) -> None:
        self.reserved[key_id] = self.reserved.get(key_id, 0.0) + usd

    def release(self, key_id: str, usd: float) -> None:
        self.reserved[key_id] = max(0.0, self.reserved.get(key_id, 0.0) - usd)
