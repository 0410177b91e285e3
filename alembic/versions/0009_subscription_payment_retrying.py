"""subscription.payment_retrying: whether Stripe will retry a past-due payment

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 03:00:00

A past-due subscription whose retries are used up (the merchant's setting leaves it past
due) or that the merchant collects by hand has an open invoice Stripe will not try again.
The dashboard's warning says so instead of promising a retry. Null when not past due or not
known; filled in as each subscription is next synced.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable column."""
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.add_column(sa.Column("payment_retrying", sa.Boolean(), nullable=True))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.drop_column("payment_retrying")
