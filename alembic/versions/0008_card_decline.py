"""card_decline: card checks Stripe declined, counted towards the card-testing limit

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 12:00:00

A script holding a client secret our page was given (a SetupIntent's, or a first payment's
PaymentIntent's) can ask Stripe to check cards without passing through our page; Stripe
still tells us each decline (`setup_intent.setup_failed`, `payment_intent.payment_failed`).
Each one is a row here (one per event), counted per person over the card-testing window.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the table of declined card checks and its per-person index."""
    op.create_table(
        "card_decline",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("user_account.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event_id", sa.String(255), nullable=False, unique=True),
        sa.Column("declined_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_card_decline_user_declined", "card_decline", ["user_id", "declined_at"])


def downgrade() -> None:
    """Drop the table (the counts in it are forgotten)."""
    op.drop_index("ix_card_decline_user_declined", table_name="card_decline")
    op.drop_table("card_decline")
