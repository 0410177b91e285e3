"""One open subscription per person; app_lock leases; subscription.activated

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status IN ('active', 'incomplete', 'past_due', 'paused', 'trialing', 'unpaid')"
UPDATE_ACTIVATED = (
    "UPDATE subscription SET activated = TRUE WHERE status IN "
    "('active', 'past_due', 'paused', 'trialing', 'unpaid', 'canceled')"
)
USERS_WITH_TWO_OPEN = (
    "SELECT user_id FROM subscription WHERE status IN "
    "('active', 'incomplete', 'past_due', 'paused', 'trialing', 'unpaid') "
    "GROUP BY user_id HAVING COUNT(*) > 1"
)


def upgrade() -> None:
    """Add the lock table, the activated flag and the one-open-subscription index."""
    op.create_table(
        "app_lock",
        sa.Column("name", sa.String(length=128), primary_key=True),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.add_column(
            sa.Column("activated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Until now failed first attempts were deleted, so every stored live or ended row was real.
    op.execute(UPDATE_ACTIVATED)
    duplicates = op.get_bind().execute(sa.text(USERS_WITH_TWO_OPEN)).all()
    if duplicates:
        raise RuntimeError(
            f"{len(duplicates)} user(s) have more than one open subscription row. Check them in "
            "the Stripe dashboard, cancel the extra ones there, and let the webhooks update "
            "the rows before migrating."
        )
    op.create_index(
        "uq_subscription_one_open_per_user",
        "subscription",
        ["user_id"],
        unique=True,
        sqlite_where=sa.text(OPEN),
        postgresql_where=sa.text(OPEN),
    )


def downgrade() -> None:
    """Drop what upgrade added."""
    op.drop_index("uq_subscription_one_open_per_user", table_name="subscription")
    with op.batch_alter_table("subscription") as batch_op:
        batch_op.drop_column("activated")
    op.drop_table("app_lock")
