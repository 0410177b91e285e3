"""Database engine and sessions (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlmodel import Session, create_engine

from subscription_app.settings import get_settings

# How long to wait for PostgreSQL to accept a connection, instead of psycopg's default of
# 130 s: a request (a webhook delivery, which Stripe then retries) against a server that does
# not answer fails in seconds instead of hanging for minutes.
CONNECT_TIMEOUT_SECONDS = 10


def connect_timeout(url: URL) -> dict[str, int]:
    """The connect timeout to give PostgreSQL's driver, unless the operator set one.

    The URL's `connect_timeout`, or libpq's PGCONNECT_TIMEOUT variable (which an explicit
    argument would override), wins.
    """
    if "connect_timeout" in url.query or os.environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_SECONDS}


def make_engine(url: str) -> Engine:
    """Create an engine for `url` with the settings each backend needs to be safe here."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            # WAL lets the web worker read while the webhook processor writes; foreign keys
            # are off by default in SQLite.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # Safe with WAL (no corruption; survives app crashes), one fsync less per commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args=connect_timeout(make_url(url)),
    )


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine for DATABASE_URL."""
    return make_engine(get_settings().sqlalchemy_url)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with Session(get_engine(), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
