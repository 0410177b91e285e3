"""subscription.cancel_at: when a subscription set to end will end

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 09:00:00

Since API version 2025-09-30 new subscriptions bill in flexible mode, where the customer
portal's "cancel at end of period" sets `cancel_at` (with `cancel_at_period_end` false).
Both mean the subscription is set to end; `cancel_at` says when.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable column (filled in as each subscription is next synced)."""
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.add_column(sa.Column("cancel_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.drop_column("cancel_at")
