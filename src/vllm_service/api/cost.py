"""GET /cost-comparison: what the ledger says the service cost, next to the hosted APIs."""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from vllm_service.accounting.cost_report import cost_report
from vllm_service.accounting.ledger import Ledger
from vllm_service.api.errors import APIError, InvalidRequest
from vllm_service.api.responses import ERROR_RESPONSES
from vllm_service.api.serving import Manager
from vllm_service.auth import Permission, requires

router = APIRouter(tags=["cost"])


class Savings(BaseModel):
    usd: float | None
    percent: float | None


class Totals(BaseModel):
    """One model's (or all models') traffic and cost over the period."""

    requests: int
    errors: int
    cache_hits: int
    cache_share: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    tokens: int
    local_cost_usd: float | None = Field(description="null: no hardware cost configured.")
    hosted_cost_usd: dict[str, float] = Field(description="Per hosted reference.")
    savings: dict[str, Savings]


class Projection(BaseModel):
    monthly_tokens: float
    monthly_local_usd: float | None
    monthly_hosted_usd: dict[str, float]
    annual_local_usd: float | None
    annual_hosted_usd: dict[str, float]


class CostPer1K(BaseModel):
    at_current_utilization: float | None
    at_measured_capacity: float | None


class CostComparison(BaseModel):
    """The ledger over a period: here against each hosted reference (docs/cost.md)."""

    object: Literal["cost_comparison"] = "cost_comparison"
    period: str | None
    references: list[str]
    since: float
    until: float
    covered_hours: float
    hardware_per_hour_usd: float
    overall: Totals
    models: dict[str, Totals]
    projection: Projection
    tco_monthly: dict[str, dict[str, float | None]] = Field(
        description="Lines (infrastructure, monitoring_ops, development_time, token_processing, "
        "total): local and per reference, $ a month."
    )
    break_even_tokens_per_month: dict[str, float | None]
    roi_annual: dict[str, float | None]
    peak_tokens_per_hour: float
    local_cost_per_1k_usd: CostPer1K
    local_cost_unknown: str | None = None
    shadow_calls: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Per model, the quality shadow's own calls (requests, prompt and "
        "completion tokens): not traffic, so in none of the totals.",
    )


#: The named periods, in seconds.
PERIODS = {"hour": 3600.0, "day": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}


def parse_since(value: str) -> float:
    """Seconds since the epoch, from an ISO 8601 time or a number of seconds."""
    try:
        since = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRequest(
                "'since' must be an ISO 8601 time or seconds since the epoch.", param="since"
            ) from None
        since = parsed.timestamp()
    if not math.isfinite(since) or since < 0 or since > time.time():
        raise InvalidRequest("'since' must be a time in the past.", param="since")
    return since


@router.get(
    "/cost-comparison",
    response_model=CostComparison,
    responses={400: ERROR_RESPONSES[400], 503: ERROR_RESPONSES[503]},
)
@requires(Permission.READ_METRICS)
async def cost_comparison(
    request: Request,
    manager: Manager,
    period: Annotated[str | None, Query(description="hour, day, 7d or 30d (default day).")] = None,
    since: Annotated[
        str | None, Query(description="Instead of a period: from this time (ISO 8601 or epoch).")
    ] = None,
    model: Annotated[str | None, Query(description="One served model only.")] = None,
) -> CostComparison:
    """Requests, tokens, local and hosted-equivalent cost, savings, projections, TCO,
    break-even and ROI over a period, per model and overall, from the ledger."""
    ledger: Ledger | None = request.app.state.ledger
    if ledger is None:
        raise APIError(503, "The cost ledger is off (ledger.enabled).", code="ledger_off")
    if period is not None and since is not None:
        raise InvalidRequest("Give 'period' or 'since', not both.", param="since")
    now = time.time()
    if since is not None:
        start = parse_since(since)
    else:
        if (period or "day") not in PERIODS:
            names = ", ".join(PERIODS)
            raise InvalidRequest(f"'period' must be one of {names}.", param="period")
        start = now - PERIODS[period or "day"]
    if model is not None and all(model not in s.config.all_names for s in manager.served):
        raise InvalidRequest(f"The model '{model}' is not served here.", param="model")
    if model is not None:
        model = manager.resolve(model).config.name
    report = await cost_report(ledger.db, ledger.hardware, since=start, until=now, model=model)
    return CostComparison.model_validate(
        {
            "period": (period or "day") if since is None else None,
            "references": ledger.prices.references,
            **report.as_dict(),
        }
    )
