"""GET /cost-comparison: what the ledger says the service cost, next to the hosted APIs."""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from vllm_service.accounting.cost_report import cost_report
from vllm_service.accounting.ledger import Ledger
from vllm_service.api.errors import APIError, InvalidRequest
from vllm_service.api.responses import ERROR_RESPONSES
from vllm_service.api.serving import Manager

router = APIRouter(tags=["cost"])

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
    responses={400: ERROR_RESPONSES[400], 503: ERROR_RESPONSES[503]},
)
async def cost_comparison(
    request: Request,
    manager: Manager,
    period: Annotated[str | None, Query(description="hour, day, 7d or 30d (default day).")] = None,
    since: Annotated[
        str | None, Query(description="Instead of a period: from this time (ISO 8601 or epoch).")
    ] = None,
    model: Annotated[str | None, Query(description="One served model only.")] = None,
) -> JSONResponse:
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
    body: dict[str, Any] = {
        "object": "cost_comparison",
        "period": (period or "day") if since is None else None,
        "references": ledger.prices.references,
        **report.as_dict(),
    }
    return JSONResponse(body)
