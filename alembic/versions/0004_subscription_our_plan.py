"""subscription.our_plan: other prices are recorded, not shown or counted as our plan

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status IN ('active', 'incomplete', 'past_due', 'paused', 'trialing', 'unpaid')"
OPEN_OURS = "our_plan AND " + OPEN


def upgrade() -> None:
    """Add the flag (every existing row was made by our subscribe flow) and narrow the index."""
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.add_column(
            sa.Column("our_plan", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    op.drop_index("uq_subscription_one_open_per_user", table_name="subscription")
    op.create_index(
        "uq_subscription_one_open_per_user",
        "subscription",
        ["user_id"],
        unique=True,
        sqlite_where=sa.text(OPEN_OURS),
        postgresql_where=sa.text(OPEN_OURS),
    )


def downgrade() -> None:
    """Back to one open row per person whatever the price (fails if a person has two)."""
    op.drop_index("uq_subscription_one_open_per_user", table_name="subscription")
    op.create_index(
        "uq_subscription_one_open_per_user",
        "subscription",
        ["user_id"],
        unique=True,
        sqlite_where=sa.text(OPEN),
        postgresql_where=sa.text(OPEN),
    )
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.drop_column("our_plan")
