"""What the ledger says a period cost, here and at each hosted reference: /cost-comparison and
`vllm-service cost report` read it.

Local cost is apportioned, not billed per request: the hardware costs its hourly price for every
hour of the period the ledger covers (from the later of the period's start and the ledger's
first row, to now), and that sum is shared out over the tokens served in it. Hosted costs are
the sum of each request's cost at the price version in effect that day (ledger_costs). Without a
hardware cost the local cost is unknown (None), never $0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Integer, case, cast, func, or_, select

from vllm_service.accounting.cost import HOURS_PER_MONTH, HardwareCost
from vllm_service.accounting.request_log import SHADOW_ROUTE
from vllm_service.storage import Database, ledger, ledger_costs

UNKNOWN_LOCAL = "set cost.hardware (hourly rent, or purchase price and power) to cost local tokens"


@dataclass
class ModelTotals:
    """One model's (or all models') requests, tokens and costs over the period."""

    requests: int = 0
    errors: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    local_cost_usd: float | None = None
    hosted_cost_usd: dict[str, float] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def savings(self) -> dict[str, dict[str, float | None]]:
        """Per reference: hosted minus local, in $ and as a share of hosted."""
        out: dict[str, dict[str, float | None]] = {}
        for ref, hosted in self.hosted_cost_usd.items():
            if self.local_cost_usd is None:
                out[ref] = {"usd": None, "percent": None}
                continue
            saved = hosted - self.local_cost_usd
            out[ref] = {"usd": saved, "percent": saved / hosted * 100 if hosted else None}
        return out

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["tokens"] = self.tokens
        body["cache_share"] = self.cache_hits / self.requests if self.requests else 0.0
        body["savings"] = self.savings()
        return body


@dataclass
class CostReport:
    """The ledger over one period, with projections, TCO, break-even and ROI."""

    since: float
    until: float
    #: Hours of the period the ledger covers (from its first row on).
    covered_hours: float
    hardware: HardwareCost
    overall: ModelTotals
    models: dict[str, ModelTotals]
    #: The most tokens generated in one minute of the period, per hour: the measured capacity
    #: (0 without traffic). Cache hits are left out: they are not the hardware's work.
    peak_tokens_per_hour: float = 0.0
    #: The quality shadow's own calls (reference and probe answers), per model: not traffic,
    #: so in none of the totals above.
    shadow: dict[str, dict[str, int]] = field(default_factory=dict)

    def cost_per_1k(self) -> dict[str, float | None]:
        """Local $ per 1K tokens: at the period's utilization (what it cost), and marginal at
        the measured capacity (what a fully busy machine would cost)."""
        o, per_hour = self.overall, self.hardware.per_hour
        return {
            "at_current_utilization": (
                o.local_cost_usd / o.tokens * 1000
                if o.local_cost_usd is not None and o.tokens
                else None
            ),
            "at_measured_capacity": (
                per_hour / self.peak_tokens_per_hour * 1000
                if per_hour > 0 and self.peak_tokens_per_hour > 0
                else None
            ),
        }

    def as_dict(self) -> dict[str, Any]:
        overall = self.overall
        body: dict[str, Any] = {
            "since": self.since,
            "until": self.until,
            "covered_hours": self.covered_hours,
            "hardware_per_hour_usd": self.hardware.per_hour,
            "overall": overall.as_dict(),
            "models": {name: totals.as_dict() for name, totals in self.models.items()},
            "projection": self.projection(),
            "tco_monthly": self.tco_monthly(),
            "break_even_tokens_per_month": self.break_even(),
            "roi_annual": self.roi(),
            "peak_tokens_per_hour": self.peak_tokens_per_hour,
            "local_cost_per_1k_usd": self.cost_per_1k(),
            "shadow_calls": self.shadow,
        }
        if overall.local_cost_usd is None:
            body["local_cost_unknown"] = UNKNOWN_LOCAL
        return body

    def _per_month(self, value: float) -> float:
        return value * HOURS_PER_MONTH / self.covered_hours if self.covered_hours > 0 else 0.0

    def projection(self) -> dict[str, Any]:
        """Monthly and annual figures at the period's rate."""
        o = self.overall
        monthly_tokens = self._per_month(o.tokens)
        hosted = {ref: self._per_month(v) for ref, v in o.hosted_cost_usd.items()}
        local = self.hardware.per_hour * HOURS_PER_MONTH if self.hardware.per_hour > 0 else None
        return {
            "monthly_tokens": monthly_tokens,
            "monthly_local_usd": local,
            "monthly_hosted_usd": hosted,
            "annual_local_usd": None if local is None else local * 12,
            "annual_hosted_usd": {ref: v * 12 for ref, v in hosted.items()},
        }

    def tco_monthly(self) -> dict[str, dict[str, float | None]]:
        """The monthly cost of ownership line by line, here and at each hosted reference (its
        list price for this period's tokens, projected to a month)."""
        hw = self.hardware
        known = hw.per_hour > 0
        hosted = self.projection()["monthly_hosted_usd"]

        def line(local: float) -> dict[str, float | None]:
            return {"local": local if known else None, **dict.fromkeys(hosted, 0.0)}

        processing: dict[str, float | None] = {"local": 0.0 if known else None, **hosted}
        total = {"local": hw.per_hour * HOURS_PER_MONTH if known else None, **hosted}
        return {
            "infrastructure": line(hw.infrastructure_per_hour * HOURS_PER_MONTH),
            "monitoring_ops": line(hw.ops_monthly),
            "development_time": line(hw.development_monthly),
            "token_processing": processing,
            "total": total,
        }

    def break_even(self) -> dict[str, float | None]:
        """Per reference: the tokens a month at which the hardware costs what the hosted API
        would charge for them (at this period's prompt/completion mix)."""
        o = self.overall
        local = self.hardware.per_hour * HOURS_PER_MONTH if self.hardware.per_hour > 0 else None
        out: dict[str, float | None] = {}
        for ref, hosted in o.hosted_cost_usd.items():
            per_token = hosted / o.tokens if o.tokens else 0.0
            out[ref] = local / per_token if local is not None and per_token > 0 else None
        return out

    def roi(self) -> dict[str, float | None]:
        """Per reference: a year's savings over the hardware's purchase price (owned only)."""
        price = self.hardware.purchase_price
        out: dict[str, float | None] = {}
        projection = self.projection()
        local = projection["annual_local_usd"]
        for ref, hosted in projection["annual_hosted_usd"].items():
            out[ref] = (hosted - local) / price if price > 0 and local is not None else None
        return out


async def cost_report(
    db: Database,
    hardware: HardwareCost,
    *,
    since: float,
    until: float,
    model: str | None = None,
    by: str = "model",
) -> CostReport:
    """Read the ledger over [since, until), grouped by model or by API key (``by``)."""
    where = [ledger.c.time >= since, ledger.c.time < until]
    if model is not None:
        where.append(ledger.c.model == model)
    shadow = await _shadow_calls(db, list(where))
    where.append(ledger.c.route != SHADOW_ROUTE)
    group = ledger.c.key_id if by == "key" else ledger.c.model
    totals = (
        select(
            group,
            func.count(),
            func.sum(case((ledger.c.status >= 400, 1), else_=0)),
            func.sum(case((ledger.c.cache == "hit", 1), else_=0)),
            func.sum(ledger.c.prompt_tokens),
            func.sum(ledger.c.completion_tokens),
            func.sum(ledger.c.cached_tokens),
            func.min(ledger.c.time),
        )
        .where(*where)
        .group_by(group)
    )
    hosted = (
        select(group, ledger_costs.c.reference, func.sum(ledger_costs.c.cost_usd))
        .join(ledger_costs, ledger_costs.c.ledger_id == ledger.c.id)
        .where(*where)
        .group_by(group, ledger_costs.c.reference)
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(totals)).all()
        costs = (await conn.execute(hosted)).all()
    models: dict[str, ModelTotals] = {}
    overall = ModelTotals()
    first = until
    for name, n, errors, hits, prompt, completion, cached, earliest in rows:
        t = ModelTotals(n, errors or 0, hits or 0, prompt or 0, completion or 0, cached or 0)
        models[name or "(none)"] = t
        for attr in ("requests", "errors", "cache_hits", "prompt_tokens", "completion_tokens"):
            setattr(overall, attr, getattr(overall, attr) + getattr(t, attr))
        overall.cached_tokens += t.cached_tokens
        first = min(first, earliest)
    for name, ref, cost in costs:
        totals_of = models.setdefault(name or "(none)", ModelTotals())
        totals_of.hosted_cost_usd[ref] = float(cost or 0.0)
        overall.hosted_cost_usd[ref] = overall.hosted_cost_usd.get(ref, 0.0) + float(cost or 0.0)
    covered = max(0.0, until - max(since, first)) / 3600.0
    if hardware.per_hour > 0:
        period_cost = hardware.per_hour * covered
        overall.local_cost_usd = period_cost
        for t in models.values():
            share = t.tokens / overall.tokens if overall.tokens else 0.0
            t.local_cost_usd = period_cost * share
    peak = await _peak_tokens_per_minute(db, where)
    return CostReport(since, until, covered, hardware, overall, models, peak * 60.0, shadow)


async def _shadow_calls(db: Database, where: list[Any]) -> dict[str, dict[str, int]]:
    """Requests and tokens of the quality shadow's calls, per model."""
    query = (
        select(
            ledger.c.model,
            func.count(),
            func.sum(ledger.c.prompt_tokens),
            func.sum(ledger.c.completion_tokens),
        )
        .where(*where, ledger.c.route == SHADOW_ROUTE)
        .group_by(ledger.c.model)
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {
        name or "(none)": {"requests": n, "prompt_tokens": p or 0, "completion_tokens": c or 0}
        for name, n, p, c in rows
    }


async def _peak_tokens_per_minute(db: Database, where: list[Any]) -> float:
    """The most tokens generated (not replayed from the cache) in one minute."""
    scaled = ledger.c.time / 60
    # Whole minutes: floor() on PostgreSQL; SQLite's integer cast truncates (times are > 0).
    minute = func.floor(scaled) if db.dialect == "postgresql" else cast(scaled, Integer)
    tokens = func.sum(ledger.c.prompt_tokens + ledger.c.completion_tokens).label("tokens")
    per_minute = (
        select(tokens)
        .where(
            *where, ledger.c.status < 400, or_(ledger.c.cache.is_(None), ledger.c.cache != "hit")
        )
        .group_by(minute)
        .order_by(tokens.desc())
        .limit(1)
    )
    async with db.engine.connect() as conn:
        peak = (await conn.execute(per_minute)).scalar()
    return float(peak or 0)
