"""stripe_event.locked_by: which worker holds an event's lease

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the lease owner column."""
    with op.batch_alter_table("stripe_event") as batch_op:
        batch_op.add_column(sa.Column("locked_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Drop the lease owner column."""
    with op.batch_alter_table("stripe_event") as batch_op:
        batch_op.drop_column("locked_by")
