"""Shared test setup.

The app's settings are read from the environment, so this module pins a known test
environment before anything imports the app: no `.env` file, no Stripe keys from the
developer's shell, fresh secrets.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

for _name in list(os.environ):
    if _name.startswith(("STRIPE_", "APP_")) or _name in {"DATABASE_URL", "REDIS_URL", "SMTP_URL"}:
        del os.environ[_name]

from devtools.liveapp import free_port  # noqa: E402, F401  (re-exported for tests)
from subscription_app import crypto  # noqa: E402
from subscription_app.settings import Settings, get_settings  # noqa: E402

Settings.model_config["env_file"] = None  # never read a developer's .env in tests
os.environ.update(
    APP_ENV="development",
    APP_SECRET_KEY=secrets.token_urlsafe(48),
    APP_ENCRYPTION_KEYS=crypto.generate_key(),
    APP_BLIND_INDEX_KEY=crypto.generate_key(),
    DATABASE_URL="sqlite:///:memory:",
)
get_settings.cache_clear()

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
_STRIPE_FIXTURES = Path(__file__).parent / "fixtures" / "stripe_fixtures3.json"


def stripe_fixture(name: str) -> dict:
    """A fresh copy of Stripe's own published example object `name` (see tests/fixtures)."""
    return json.loads(_STRIPE_FIXTURES.read_text())["resources"][name]


def legacy_v1(plaintext: str, key: bytes) -> str:
    """A ciphertext as the first release made it: no purpose, the key id as associated data."""
    kid = crypto.key_id(key)
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), kid.encode())
    return f"v1.{kid}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def _backends() -> list:
    params = [pytest.param("sqlite", id="sqlite")]
    if TEST_DATABASE_URL:
        params.append(pytest.param("postgresql", id="postgresql"))
    return params


@pytest.fixture
def empty_database_url(request, tmp_path) -> Iterator[str]:
    """URL of an empty database of the backend named by `request.param`.

    PostgreSQL gets a fresh schema (dropped afterwards) in TEST_DATABASE_URL's database.
    """
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    from devtools.pgschema import fresh_schema

    with fresh_schema(TEST_DATABASE_URL) as url:
        yield url


def pytest_generate_tests(metafunc) -> None:
    """Run every test that asks for a database once per available backend."""
    if "empty_database_url" in metafunc.fixturenames:
        metafunc.parametrize("empty_database_url", _backends(), indirect=True)


@pytest.fixture
def db_engine(empty_database_url, monkeypatch):
    """A migrated database, installed as the app's engine for the test."""
    from subscription_app import db
    from subscription_app.migrate import upgrade

    upgrade(empty_database_url)
    engine = db.make_engine(empty_database_url)
    monkeypatch.setattr(db, "get_engine", lambda: engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(db_engine):
    """A database session on the migrated test database."""
    from sqlmodel import Session

    # Expire on commit/rollback, so a read after `session.rollback()` sees what other
    # connections (the app under test) committed.
    with Session(db_engine) as s:
        yield s
        s.rollback()


@pytest.fixture
def settings_env(monkeypatch):
    """Set environment variables for one test and re-read the settings."""

    def _apply(**values: str | None) -> Settings:
        for key, value in values.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        return get_settings()

    yield _apply
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    """Every test starts with empty rate-limit counters."""
    from subscription_app import ratelimit

    ratelimit.reset()
    yield
