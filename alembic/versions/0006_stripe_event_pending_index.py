"""stripe_event: index only the events still to process, in the order they are claimed

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 20:00:00

The inbox keeps every processed event (an audit trail of what Stripe told us), so after a
while nearly all rows are done. The old index on (status, next_attempt_at) held all of them;
this partial index holds only pending rows, in claim order (`billing.inbox.claim`), so a
claim reads a handful of entries however large the table grows, and finishing an event
removes it from the index instead of moving it.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    """Replace the due-events index with a partial index of pending events."""
    op.create_index(
        "ix_stripe_event_pending",
        "stripe_event",
        ["stripe_created_at", "id"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.drop_index("ix_stripe_event_due", table_name="stripe_event")


def downgrade() -> None:
    """Back to the index of (status, next_attempt_at)."""
    op.create_index("ix_stripe_event_due", "stripe_event", ["status", "next_attempt_at"])
    op.drop_index("ix_stripe_event_pending", table_name="stripe_event")
