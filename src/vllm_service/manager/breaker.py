"""A circuit breaker per deployment, for asyncio.

closed ──(failure_threshold consecutive failures)──▶ open
open ──(recovery_timeout elapsed)──▶ half-open
half-open ──(a probe succeeds)──▶ closed
half-open ──(a probe fails, or outlives probe_timeout)──▶ open

* Failures are what the deployment is to blame for: connection errors, timeouts, 5xx. The
  caller decides; a 4xx is the client's fault and counts as a success (the deployment
  answered), a cancelled call (the client went away) counts as nothing.
* Half-open admits at most ``half_open_max_calls`` probes until it closes or reopens; the
  check and the count happen without an ``await`` between them, so 50 concurrent callers
  cannot slip more through.
* A probe that never reports is a failure once ``probe_timeout`` has passed: the next caller
  sees it, so a hanging probe cannot wedge half-open.
* Time comes from an injectable monotonic clock.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpenError(Exception):
    """The breaker refuses calls now; ``retry_after`` seconds until it may admit one."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open; retry in {retry_after:.1f} s")
        self.name = name
        self.retry_after = retry_after


Transition = Callable[[str, BreakerState, BreakerState], None]


@dataclass(eq=False)
class Permit:
    """One admitted call; report its outcome exactly once (later reports are ignored)."""

    breaker: CircuitBreaker
    probe: bool
    started: float
    #: The half-open period a probe belongs to; its answer counts only in that period.
    period: int = 0
    done: bool = False

    def success(self) -> None:
        self.breaker._report(self, failed=False)

    def failure(self) -> None:
        self.breaker._report(self, failed=True)

    def release(self) -> None:
        """Neither success nor failure (the caller gave up): frees a probe's place."""
        self.breaker._release(self)


@dataclass(eq=False)
class CircuitBreaker:
    name: str
    failure_threshold: int = 5
    recovery_timeout: float = 30.0
    half_open_max_calls: int = 3
    probe_timeout: float = 30.0
    clock: Callable[[], float] = time.monotonic
    on_transition: Transition | None = None
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    #: How many times it opened (for metrics).
    opened_total: int = 0
    _probes: list[Permit] = field(default_factory=list)
    _probes_admitted: int = 0
    _period: int = 0

    def acquire(self) -> Permit:
        """Admit one call or raise BreakerOpenError at once."""
        now = self.clock()
        if self.state is BreakerState.OPEN:
            wait = self.opened_at + self.recovery_timeout - now
            if wait > 0:
                raise BreakerOpenError(self.name, wait)
            self._move(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._expire_probes(now):
                raise BreakerOpenError(self.name, self.recovery_timeout)
            if self._probes_admitted >= self.half_open_max_calls:
                raise BreakerOpenError(self.name, self._probe_wait(now))
            self._probes_admitted += 1
            permit = Permit(self, probe=True, started=now, period=self._period)
            self._probes.append(permit)
            return permit
        return Permit(self, probe=False, started=now)

    # -- internals ------------------------------------------------------------------------

    def _probe_wait(self, now: float) -> float:
        oldest = min((p.started for p in self._probes), default=now)
        return max(0.0, oldest + self.probe_timeout - now)

    def _expire_probes(self, now: float) -> bool:
        """Count a probe that outlived probe_timeout as failed; True if that reopened."""
        for permit in list(self._probes):
            if now - permit.started >= self.probe_timeout:
                self._report(permit, failed=True)
                return True
        return False

    def _report(self, permit: Permit, *, failed: bool) -> None:
        if permit.done:
            return
        permit.done = True
        if permit.probe:
            if permit in self._probes:
                self._probes.remove(permit)
            if self.state is not BreakerState.HALF_OPEN or permit.period != self._period:
                return  # a late answer from a probe of an earlier half-open period
            if failed:
                self._open()
            else:
                self._move(BreakerState.CLOSED)
            return
        if failed:
            self.consecutive_failures += 1
            if (
                self.state is BreakerState.CLOSED
                and self.consecutive_failures >= self.failure_threshold
            ):
                self._open()
        elif self.state is BreakerState.CLOSED:
            self.consecutive_failures = 0

    def _release(self, permit: Permit) -> None:
        if permit.done:
            return
        permit.done = True
        if permit.probe and permit in self._probes:
            self._probes.remove(permit)
            if self.state is BreakerState.HALF_OPEN and permit.period == self._period:
                self._probes_admitted -= 1

    def _open(self) -> None:
        self.opened_at = self.clock()
        self.opened_total += 1
        self._move(BreakerState.OPEN)

    def _move(self, new: BreakerState) -> None:
        old = self.state
        self.state = new
        self._probes.clear()
        self._probes_admitted = 0
        if new is BreakerState.HALF_OPEN:
            self._period += 1
        if new is BreakerState.CLOSED:
            self.consecutive_failures = 0
        if old is not new and self.on_transition is not None:
            self.on_transition(self.name, old, new)
