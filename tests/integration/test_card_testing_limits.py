"""Card testing: subscribe attempts and SetupIntents are limited per person and per address.

Run on the memory and Redis counter stores, through the API against the Stripe emulator.
"""

from __future__ import annotations

import os
import threading

import pytest
from fastapi.testclient import TestClient

from subscription_app import ratelimit
from subscription_app.api import create_api
from tests.integration.conftest import auth_headers, subscribe

BACKENDS = ["memory"] + (["redis"] if os.environ.get("TEST_REDIS_URL") else [])
LIMIT_MESSAGE = "Too many card attempts. Please wait"


@pytest.fixture(params=BACKENDS)
def card_limits(request, settings_env, db_engine, stripe_env):
    redis_url = os.environ.get("TEST_REDIS_URL") if request.param == "redis" else None
    settings_env(
        REDIS_URL=redis_url,
        RATE_LIMIT_CARD_ATTEMPTS_PER_ACCOUNT="3",
        RATE_LIMIT_CARD_ATTEMPTS_PER_ADDRESS="5",
        RATE_LIMIT_SETUP_INTENTS_PER_ACCOUNT="4",
        RATE_LIMIT_SETUP_INTENTS_PER_ADDRESS="6",
        RATE_LIMIT_CARD_WINDOW_SECONDS="3600",
    )
    ratelimit.reset()
    yield request.param
    ratelimit.reset()


def client(peer: str = "198.51.100.7") -> TestClient:
    return TestClient(create_api(), client=(peer, 5000), raise_server_exceptions=False)


def stripe_customers_with_subscription_attempts(stripe_client) -> int:
    return len(stripe_client.v1.subscriptions.list(params={"status": "all", "limit": 100}).data)


def assert_limited(response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["detail"].startswith(LIMIT_MESSAGE)
    assert 3500 < int(response.headers["Retry-After"]) <= 3600


def test_declined_cards_per_person_are_limited_and_stop_reaching_stripe(
    card_limits, make_payment_method, stripe_client
):
    api = client()
    headers = auth_headers(api, "tester@example.com")
    for _ in range(3):
        declined = subscribe(api, headers, make_payment_method("tok_chargeDeclined"))
        assert declined.status_code == 402
    reached_stripe = stripe_customers_with_subscription_attempts(stripe_client)
    # Even a good card waits now: the limit counts attempts, not the card.
    assert_limited(subscribe(api, headers, make_payment_method()))
    assert stripe_customers_with_subscription_attempts(stripe_client) == reached_stripe
    # Nor is a new card form (SetupIntent) handed out while no attempt is left.
    assert_limited(api.post("/api/v1/subscriptions/setup-intent", headers=headers))
    # Someone else from another address is not affected.
    other = client("203.0.113.99")
    assert (
        subscribe(
            other, auth_headers(other, "owner@example.com"), make_payment_method()
        ).status_code
        == 200
    )


def test_many_accounts_from_one_address_are_limited(card_limits, make_payment_method):
    api = client()
    codes = []
    for i in range(3):
        headers = auth_headers(api, f"mule{i}@example.com")
        for _ in range(2):
            codes.append(subscribe(api, headers, make_payment_method("tok_chargeDeclined")))
    assert [r.status_code for r in codes[:5]] == [402] * 5
    assert_limited(codes[5])


def test_a_malformed_payment_method_is_refused_without_counting(card_limits):
    api = client()
    headers = auth_headers(api, "typo@example.com")
    for _ in range(5):
        assert subscribe(api, headers, "not a payment method").status_code == 422
    setup = api.post("/api/v1/subscriptions/setup-intent", headers=headers)
    assert setup.status_code == 200  # nothing counted against the person


def test_parallel_attempts_cannot_overshoot_the_limit(card_limits, make_payment_method):
    api = client()
    headers = auth_headers(api, "racer@example.com")
    methods = [make_payment_method("tok_chargeDeclined") for _ in range(10)]
    start = threading.Barrier(len(methods))
    codes: list[int] = []

    def attempt(payment_method: str) -> None:
        with client() as own:
            start.wait()
            codes.append(subscribe(own, headers, payment_method).status_code)

    threads = [threading.Thread(target=attempt, args=(pm,)) for pm in methods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(429) == 7  # exactly 3 got past the limit of 3
    assert all(code in (402, 409) for code in codes if code != 429)


def test_setup_intents_are_limited_per_person_and_per_address(card_limits, stripe_client):
    api = client()
    headers = auth_headers(api, "collector@example.com")
    for _ in range(4):
        assert api.post("/api/v1/subscriptions/setup-intent", headers=headers).status_code == 200
    made = len(stripe_client.v1.setup_intents.list(params={"limit": 100}).data)
    assert_limited(api.post("/api/v1/subscriptions/setup-intent", headers=headers))
    assert len(stripe_client.v1.setup_intents.list(params={"limit": 100}).data) == made
    # A second account from the same address gets what the address has left (the refused
    # request above did not count there), no more.
    second = auth_headers(api, "collector2@example.com")
    for _ in range(2):
        assert api.post("/api/v1/subscriptions/setup-intent", headers=second).status_code == 200
    assert_limited(api.post("/api/v1/subscriptions/setup-intent", headers=second))


def test_a_person_over_their_limit_does_not_spend_the_addresss_budget(
    card_limits, make_payment_method
):
    api = client()
    headers = auth_headers(api, "stubborn@example.com")
    for _ in range(3):
        subscribe(api, headers, make_payment_method("tok_chargeDeclined"))
    for _ in range(5):  # refused for the person, and not counted against the address
        assert_limited(subscribe(api, headers, make_payment_method()))
    neighbour = auth_headers(api, "neighbour@example.com")  # same address (a shared NAT)
    assert subscribe(api, neighbour, make_payment_method()).status_code == 200
