"""The Alembic migrations apply to an empty SQLite and an empty PostgreSQL database."""

import pytest
import sqlalchemy as sa

from subscription_app import db
from subscription_app.migrate import downgrade, upgrade

EXPECTED_TABLES = {
    "user_account",
    "auth_session",
    "billing_customer",
    "subscription",
    "stripe_event",
    "notification",
    "app_lock",
    "outbox_email",
    "card_decline",
    "alembic_version",
}


def test_migrations_apply_to_an_empty_database_and_round_trip(empty_database_url):
    engine = db.make_engine(empty_database_url)
    assert EXPECTED_TABLES.isdisjoint(sa.inspect(engine).get_table_names())

    upgrade(empty_database_url)
    assert set(sa.inspect(engine).get_table_names()) >= EXPECTED_TABLES
    columns = {c["name"] for c in sa.inspect(engine).get_columns("subscription")}
    assert {
        "stripe_customer_id_enc",
        "stripe_subscription_id_enc",
        "stripe_subscription_id_hash",
        "price_id",
        "status",
        "started_at",
        "current_period_end",
        "cancel_at_period_end",
        "cancel_at",
        "canceled_at",
        "stripe_updated_at",
        "payment_retrying",
    } <= columns
    # Claims read an index of pending events only (0006), however many are done.
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("stripe_event")}
    assert "ix_stripe_event_pending" in indexes
    assert "ix_stripe_event_due" not in indexes

    downgrade(empty_database_url)
    remaining = set(sa.inspect(engine).get_table_names())
    assert (EXPECTED_TABLES - {"alembic_version"}) & remaining == set()
    upgrade(empty_database_url)  # and back up again
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0010"
    engine.dispose()


@pytest.mark.parametrize(
    "status",
    [
        "active",
        "past_due",
        "canceled",
        "incomplete",
        "incomplete_expired",
        "trialing",
        "unpaid",
        "paused",
    ],
)
def test_every_stripe_status_is_storable(db_engine, status):
    _insert_subscription(db_engine, status)


def test_unknown_status_is_refused_by_the_database(db_engine):
    with pytest.raises(sa.exc.IntegrityError):
        _insert_subscription(db_engine, "bogus")


def _insert_subscription(engine, status: str) -> None:
    with engine.begin() as conn:
        user_id = conn.execute(
            sa.text(
                "INSERT INTO user_account (email, password_hash, created_at) "
                "VALUES (:e, 'h', CURRENT_TIMESTAMP) RETURNING id"
            ),
            {"e": f"{status}@example.com"},
        ).scalar()
        conn.execute(
            sa.text(
                "INSERT INTO subscription (user_id, stripe_customer_id_enc, "
                "stripe_customer_id_hash, stripe_subscription_id_enc, "
                "stripe_subscription_id_hash, price_id, status, cancel_at_period_end, "
                "created_at, updated_at) VALUES (:u, 'c', 'ch', 's', :sh, 'price_1', :st, "
                ":f, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"u": user_id, "sh": f"hash-{status}", "st": status, "f": False},
        )


def test_the_migrations_build_exactly_the_models_schema(empty_database_url):
    """Alembic's own comparison finds nothing to add: a column, table or index put on a model
    without a migration (or a migration that differs from its model) fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import subscription_app.models  # noqa: F401 - registers every table on SQLModel.metadata

    upgrade(empty_database_url)
    engine = db.make_engine(empty_database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)  # compares column types too
        differences = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert differences == []
