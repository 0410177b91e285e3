"""The intake writer's own PostgreSQL connection is opened as the engine's are."""

import asyncio

import psycopg
import pytest

from subscription_app import db
from subscription_app.billing import intake


class _Stop(Exception):
    """Raised instead of connecting: the test only looks at what the driver would get."""


@pytest.mark.parametrize(
    ("query", "expected"), [("", db.CONNECT_TIMEOUT_SECONDS), ("?connect_timeout=3", "3")]
)
def test_the_writer_connection_times_out_like_the_engine_s(monkeypatch, query, expected):
    engine = db.make_engine(f"postgresql+psycopg://app@127.0.0.1:5432/app{query}")
    monkeypatch.setattr(db, "get_engine", lambda: engine)
    seen: dict = {}

    async def connect(*_args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", connect)
    with pytest.raises(_Stop):
        asyncio.run(intake._AsyncHeld().open())
    assert seen["connect_timeout"] == expected
    assert seen["autocommit"] is True
    engine.dispose()
