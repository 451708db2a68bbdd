"""The ledger records the client's address (the audit trail of requests).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger", sa.Column("client", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("client")
