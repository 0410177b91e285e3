"""Login and registration are rate-limited per account and per client address."""

import os
import threading

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
        RATE_LIMIT_ACCOUNT_FAILURE_CEILING="8",
        RATE_LIMIT_ATTEMPTS_PER_ADDRESS="12",
        RATE_LIMIT_REGISTRATIONS_PER_ACCOUNT="3",
        RATE_LIMIT_WINDOW_SECONDS="600",
    )
    ratelimit.reset()
    yield request.param
    ratelimit.reset()


def client(peer="198.51.100.1"):
    return TestClient(create_api(), client=(peer, 5000), raise_server_exceptions=False)


def login(api, email, password="s3cret-pass"):
    return api.post("/api/v1/auth/login", json={"email": email, "password": password})


def register(api, email="victim@example.com"):
    body = {"email": email, "password": "s3cret-pass"}
    assert api.post("/api/v1/auth/register", json=body).status_code == 201


def test_failed_logins_per_account_and_address_are_limited(limits):
    api = client()
    register(api)
    for _ in range(5):
        assert login(api, "victim@example.com", "wrong-guess").status_code == 401
    blocked = login(api, "victim@example.com")  # even the right password waits now, here
    assert blocked.status_code == 429
    assert blocked.json()["detail"].startswith("Too many attempts. Please wait")
    assert 0 < int(blocked.headers["Retry-After"]) <= 600
    # The owner, from their own address, is not locked out by a stranger's guesses.
    assert login(client("203.0.113.50"), "victim@example.com").status_code == 200
    assert login(api, "someone-else@example.com").status_code == 401


def test_full_width_spelling_counts_against_the_same_account(limits):
    api = client()
    register(api)
    for _ in range(5):
        response = login(api, "victim@\uff45xample.com", "wrong-guess")  # full-width "e"
        assert response.status_code == 401
    assert login(api, "victim@example.com", "wrong-guess").status_code == 429
    assert login(api, "VICTIM@example.com").status_code == 429


def test_parallel_guesses_cannot_overshoot_the_limit(limits):
    register(client())
    start = threading.Barrier(40)
    codes: list[int] = []

    def guess(i: int) -> None:
        with client() as api:
            start.wait()
            codes.append(login(api, "victim@example.com", f"guess-{i}").status_code)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(codes) == 40
    assert codes.count(401) == 5  # only five were checked against the password
    # The rest were refused: over the limit (429), or, past the 25 that may wait for a
    # password check, told the server is busy (503) without being checked or counted.
    assert codes.count(429) + codes.count(503) == 35


def test_parallel_counting_itself_cannot_overshoot_the_limit(limits):
    """The count alone, 40 threads at once and no password check to take turns at (the
    login path counts inside one): exactly the limit gets through."""
    start = threading.Barrier(40)
    allowed: list[bool] = []

    def attempt() -> None:
        start.wait()
        try:
            ratelimit.before_login(account="victim@example.com", client_address="198.51.100.1")
        except ratelimit.RateLimited:
            allowed.append(False)
        else:
            allowed.append(True)

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(allowed) == 40
    assert allowed.count(True) == 5


def test_guessing_from_many_addresses_slows_the_account_but_never_locks_the_owner_out(limits):
    register(client())
    for i in range(8):  # the ceiling, spread over many addresses
        assert login(client(f"192.0.2.{i}"), "victim@example.com", "wrong").status_code == 401
    owner = client("203.0.113.7")
    first = login(owner, "victim@example.com")
    assert first.status_code == 200  # one attempt per few seconds still goes through
    slowed = login(client("192.0.2.99"), "victim@example.com", "wrong")
    assert slowed.status_code == 429
    assert int(slowed.headers["Retry-After"]) <= ratelimit.ACCOUNT_SLOW_SECONDS


def test_attackers_taking_every_slow_slot_do_not_keep_the_owner_out_where_they_log_in(limits):
    register(client())
    home = client("203.0.113.7")
    assert login(home, "victim@example.com").status_code == 200  # the owner's usual address
    for i in range(8):  # the ceiling, spread over many addresses
        assert login(client(f"192.0.2.{i}"), "victim@example.com", "wrong").status_code == 401
    # An attacker takes the account's one slot of these few seconds ...
    assert login(client("192.0.2.98"), "victim@example.com", "wrong").status_code == 401
    assert login(client("192.0.2.99"), "victim@example.com", "wrong").status_code == 429
    # ... and the owner, at home, gets in all the same; a new address still waits its turn.
    assert login(home, "victim@example.com").status_code == 200
    assert login(client("198.51.100.77"), "victim@example.com").status_code == 429


def test_a_day_long_attack_slows_the_account_further_but_not_where_the_owner_logs_in(
    limits, settings_env
):
    """The 10-minute ceiling starts afresh each window: past the day's ceiling one guess a
    minute, not one every few seconds, from addresses the owner has not logged in from."""
    settings_env(RATE_LIMIT_ACCOUNT_DAILY_FAILURE_CEILING="6")
    register(client())
    home = client("203.0.113.7")
    assert login(home, "victim@example.com").status_code == 200
    for i in range(6):  # the day's ceiling (below the window's, to reach it now)
        assert login(client(f"192.0.2.{i}"), "victim@example.com", "wrong").status_code == 401
    assert login(client("192.0.2.98"), "victim@example.com", "wrong").status_code == 401
    slowed = login(client("192.0.2.99"), "victim@example.com", "wrong")
    assert slowed.status_code == 429
    assert int(slowed.headers["Retry-After"]) > ratelimit.ACCOUNT_SLOW_SECONDS
    assert int(slowed.headers["Retry-After"]) <= ratelimit.ACCOUNT_SLOWER_SECONDS
    assert login(home, "victim@example.com").status_code == 200  # the owner, at home


def test_attempts_per_address_are_limited(limits):
    noisy, quiet = client("198.51.100.2"), client("198.51.100.3")
    for i in range(12):
        assert login(noisy, f"user{i}@example.com").status_code == 401
    assert login(noisy, "user-new@example.com").status_code == 429
    assert login(quiet, "user-new@example.com").status_code == 401


def test_an_ipv6_client_is_counted_by_its_64_not_by_each_address_it_takes(limits):
    # Password spraying: one guess per account, a fresh address of the same /64 each time.
    for i in range(12):
        answer = login(client(f"2001:db8:1:2::{i + 1:x}"), f"user{i}@example.com")
        assert answer.status_code == 401
    assert login(client("2001:db8:1:2:ffff::9"), "user-new@example.com").status_code == 429
    assert login(client("2001:db8:1:3::1"), "user-new@example.com").status_code == 401


def test_an_ipv6_party_taking_a_fresh_64_each_time_is_counted_by_its_56(limits):
    # A home connection's /56 (256 /64s) allows 4 times one address's attempts, a /48
    # (a free tunnel: 65,536 /64s) 16 times: not 12 attempts for every /64 it holds.
    for i in range(48):
        answer = login(client(f"2001:db8:7:{i:x}::1"), f"spray{i}@example.com")
        assert answer.status_code == 401, i
    assert login(client("2001:db8:7:ff::1"), "spray-new@example.com").status_code == 429
    assert login(client("2001:db8:7:100::1"), "spray-new@example.com").status_code == 401


def test_others_in_the_owners_56_do_not_keep_the_owner_out_where_they_log_in(limits):
    home = client("2001:db8:9:1::1")
    register(home, "owner56@example.com")
    assert login(home, "owner56@example.com").status_code == 200  # known there from now on
    for i in range(2, 50):  # strangers elsewhere in the /56 spend its allowance
        login(client(f"2001:db8:9:{i:x}::1"), f"stranger{i}@example.com")
    assert login(client("2001:db8:9:ff::1"), "stranger@example.com").status_code == 429
    assert login(home, "owner56@example.com").status_code == 200


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


def test_a_forged_leftmost_forwarded_hop_does_not_escape_the_address_limit(limits, settings_env):
    settings_env(TRUSTED_PROXIES="10.0.0.1")
    proxy = client("10.0.0.1")
    codes = [
        proxy.post(
            "/api/v1/auth/login",
            json={"email": f"f{i}@example.com", "password": "wrong-pass"},
            # A new forged address each time; our proxy appends the real one last.
            headers={"X-Forwarded-For": f"198.18.0.{i}, 192.0.2.20"},
        ).status_code
        for i in range(13)
    ]
    assert codes[:12] == [401] * 12
    assert codes[12] == 429
