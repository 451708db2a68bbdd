"""The audit trail of admin actions: who changed what, when, from where. Requests themselves
are audited by the cost ledger's rows (key id, route, model, status, tokens, cost)."""

from __future__ import annotations

import json
import time

from sqlalchemy import select

from vllm_service.auth.redact import redact
from vllm_service.storage import Database, admin_audit, audit_content, ledger


async def record_action(
    db: Database,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    detail: dict[str, object] | None = None,
    client: str | None = None,
) -> None:
    """Append one admin action (never a key or a secret in ``detail``)."""
    values = {
        "time": time.time(),
        "actor": actor,
        "action": action,
        "target": target,
        "detail": json.dumps(detail or {}, sort_keys=True)[:4096],
        "client": client,
    }
    async with db.engine.begin() as conn:
        await conn.execute(admin_audit.insert().values(**values))


async def record_content(
    db: Database,
    *,
    request_id: str,
    key_id: str | None,
    route: str,
    model: str | None,
    prompt: str,
    completion: str,
) -> None:
    """Keep a request's prompt and answer, redacted (audit.log_content)."""
    values = {
        "time": time.time(),
        "request_id": request_id,
        "key_id": key_id,
        "route": route,
        "model": model,
        "prompt": redact(prompt),
        "completion": redact(completion),
    }
    async with db.engine.begin() as conn:
        await conn.execute(audit_content.insert().values(**values))


async def content_since(db: Database, since: float) -> list[dict[str, object]]:
    query = select(audit_content).where(audit_content.c.time >= since).order_by(audit_content.c.id)
    async with db.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def actions_since(db: Database, since: float) -> list[dict[str, object]]:
    """Admin actions since a time, oldest first."""
    query = select(admin_audit).where(admin_audit.c.time >= since).order_by(admin_audit.c.id)
    async with db.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings().all()]


#: What the audit export shows of each request (from the ledger).
REQUEST_COLUMNS = (
    "time",
    "request_id",
    "key_id",
    "client",
    "route",
    "model",
    "status",
    "error_type",
    "prompt_tokens",
    "completion_tokens",
    "local_cost_usd",
)


async def requests_since(db: Database, since: float) -> list[dict[str, object]]:
    """Every request since a time (who called what, with what result and cost), oldest first."""
    columns = [ledger.c[name] for name in REQUEST_COLUMNS]
    query = select(*columns).where(ledger.c.time >= since).order_by(ledger.c.time)
    async with db.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings().all()]
