"""The engine's connections: PostgreSQL never waits minutes for a server that does not answer."""

import pytest
from sqlalchemy import event

from subscription_app import db


class _Stop(Exception):
    """Raised instead of connecting: the test only looks at what the driver would get."""


def _driver_arguments(url: str) -> dict:
    engine = db.make_engine(url)
    seen: dict = {}

    @event.listens_for(engine, "do_connect")
    def _capture(_dialect, _record, _args, kwargs):
        seen.update(kwargs)
        raise _Stop

    with pytest.raises(_Stop):
        engine.connect()
    engine.dispose()
    return seen


def test_postgresql_connections_time_out():
    arguments = _driver_arguments("postgresql+psycopg://app@127.0.0.1:5432/app")
    assert arguments["connect_timeout"] == db.CONNECT_TIMEOUT_SECONDS


def test_a_url_s_own_connect_timeout_wins():
    arguments = _driver_arguments("postgresql+psycopg://app@127.0.0.1:5432/app?connect_timeout=3")
    assert arguments["connect_timeout"] == "3"


def test_libpq_s_own_variable_wins(monkeypatch):
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    arguments = _driver_arguments("postgresql+psycopg://app@127.0.0.1:5432/app")
    assert "connect_timeout" not in arguments
