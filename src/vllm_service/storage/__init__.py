"""The database: what must outlive a process (the cost ledger; keys and the audit trail next).

SQLite by default (one file, WAL mode), PostgreSQL by URL for replicas; SQLAlchemy 2 async
(aiosqlite, asyncpg); the schema is migrated by Alembic at start or by `vllm-service db upgrade`.
"""

from vllm_service.storage.database import Database, DatabaseError
from vllm_service.storage.tables import (
    admin_audit,
    api_keys,
    audit_content,
    ledger,
    ledger_costs,
    metadata,
)

__all__ = [
    "Database",
    "DatabaseError",
    "admin_audit",
    "api_keys",
    "audit_content",
    "ledger",
    "ledger_costs",
    "metadata",
]
