"""Login and registration are rate-limited per account and per client address."""

import os

import pytest
from fastapi.testclient import TestClient

from subscription_app import ratelimit
from subscription_app.api import create_api

BACKENDS = ["memory"] + (["redis"] if os.environ.get("TEST_REDIS_URL") else [])


@pytest.fixture(params=BACKENDS)
def limits(request, settings_env, db_engine):
    redis_url = os.environ.get("TEST_REDIS_URL") if request.param == "redis" else None
    settings_env(
        REDIS_URL=redis_url,
        RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT="5",
        RATE_LIMIT_ATTEMPTS_PER_ADDRESS="12",
        RATE_LIMIT_REGISTRATIONS_PER_ACCOUNT="3",
        RATE_LIMIT_WINDOW_SECONDS="600",
    )
    ratelimit.counter().clear()
    yield request.param
    ratelimit.counter().clear()


def client(peer="198.51.100.1"):
    return TestClient(create_api(), client=(peer, 5000), raise_server_exceptions=False)


def login(api, email, password="s3cret-pass"):
    return api.post("/api/v1/auth/login", json={"email": email, "password": password})


def test_failed_logins_per_account_are_limited(limits):
    api = client()
    assert (
        api.post(
            "/api/v1/auth/register", json={"email": "victim@example.com", "password": "s3cret-pass"}
        ).status_code
        == 201
    )
    for _ in range(5):
        assert login(api, "victim@example.com", "wrong-guess").status_code == 401
    blocked = login(api, "victim@example.com")  # even the right password waits now
    assert blocked.status_code == 429
    assert blocked.json()["detail"].startswith("Too many attempts. Please wait")
    assert 0 < int(blocked.headers["Retry-After"]) <= 600
    # From another address, the account is still protected; other accounts are not affected.
    assert login(client("203.0.113.50"), "victim@example.com").status_code == 429
    assert login(api, "someone-else@example.com").status_code == 401


def test_attempts_per_address_are_limited(limits):
    noisy, quiet = client("198.51.100.2"), client("198.51.100.3")
    for i in range(12):
        assert login(noisy, f"user{i}@example.com").status_code == 401
    assert login(noisy, "user-new@example.com").status_code == 429
    assert login(quiet, "user-new@example.com").status_code == 401


def test_registrations_per_account_are_limited(limits):
    api = client("198.51.100.4")
    body = {"email": "spam@example.com", "password": "s3cret-pass"}
    assert api.post("/api/v1/auth/register", json=body).status_code == 201
    assert api.post("/api/v1/auth/register", json=body).status_code == 409
    assert api.post("/api/v1/auth/register", json=body).status_code == 409
    limited = api.post("/api/v1/auth/register", json=body)
    assert limited.status_code == 429
    assert "Too many attempts" in limited.json()["detail"]


def test_forwarded_for_counts_only_through_a_trusted_proxy(limits, settings_env):
    settings_env(TRUSTED_PROXIES="10.0.0.1")
    proxy = client("10.0.0.1")
    for i in range(12):
        proxy.post(
            "/api/v1/auth/login",
            json={"email": f"p{i}@example.com", "password": "wrong-pass"},
            headers={"X-Forwarded-For": "192.0.2.10"},
        )
    behind_same = proxy.post(
        "/api/v1/auth/login",
        json={"email": "x@example.com", "password": "wrong-pass"},
        headers={"X-Forwarded-For": "192.0.2.10"},
    )
    behind_other = proxy.post(
        "/api/v1/auth/login",
        json={"email": "x@example.com", "password": "wrong-pass"},
        headers={"X-Forwarded-For": "192.0.2.11"},
    )
    assert behind_same.status_code == 429
    assert behind_other.status_code == 401
