"""Retention: what the database drops once it is older than it may be kept."""

from __future__ import annotations

from sqlalchemy import delete

from vllm_service.storage.database import Database
from vllm_service.storage.tables import admin_audit, audit_content


async def purge_audit(db: Database, before: float) -> None:
    """Drop admin actions and kept content older than ``before`` (seconds since the epoch)."""
    async with db.engine.begin() as conn:
        await conn.execute(delete(admin_audit).where(admin_audit.c.time < before))
        await conn.execute(delete(audit_content).where(audit_content.c.time < before))
