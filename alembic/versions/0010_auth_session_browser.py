"""auth_session.browser_id: logins that took turns in one browser's cookie

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 03:20:00

Two tabs of one browser, each logged in on its own, hold two logins, and the cookie names only
the newer. A login whose cookie replaced another's joins its group, and logging out ends the
whole group, so no tab of the browser keeps acting. Null: a group of its own.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable, indexed column."""
    with op.batch_alter_table("auth_session") as batch_op:
        batch_op.add_column(sa.Column("browser_id", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_auth_session_browser_id", ["browser_id"])


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("auth_session") as batch_op:
        batch_op.drop_index("ix_auth_session_browser_id")
        batch_op.drop_column("browser_id")
