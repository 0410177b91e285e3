"""The production shape: several backend workers sharing state through Redis, on PostgreSQL.

Generated only where TEST_DATABASE_URL and TEST_REDIS_URL are set (`.ci/run` sets both when
the servers answer); the rest of the suite covers SQLite and one worker.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import httpx
import pytest
import redis
import sqlalchemy as sa
import stripe
from playwright.sync_api import Browser, expect

from devtools.liveapp import start_live_app
from devtools.pgschema import fresh_schema
from subscription_app.settings import Settings
from tests.e2e.conftest import (
    PASSWORD,
    path_is,
    register,
    stripe_subscriptions_for,
    subscribe_with_card,
    unique_email,
)

pytestmark = pytest.mark.e2e
DATABASE, REDIS = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")


def pytest_generate_tests(metafunc):
    """Only where both servers are available."""
    if "production_stack" in metafunc.fixturenames:
        params = ["postgresql+redis"] if DATABASE and REDIS else []
        metafunc.parametrize("stack_name", params)


@pytest.fixture(scope="module")
def production_stack(tmp_path_factory):
    """The app on PostgreSQL (fresh schema) and Redis, with several workers (one per CPU, 2+)."""
    workdir = tmp_path_factory.mktemp("production_stack")
    # Rate-limit counters live in Redis and are keyed by user id, which a fresh schema starts
    # again at 1: counters left by an earlier run within the hour must not count here.
    redis.Redis.from_url(REDIS).flushdb()
    with fresh_schema(DATABASE, prefix="e2e") as database_url:
        app = start_live_app(
            workdir,
            DATABASE_URL=database_url,
            REDIS_URL=REDIS,
            REFLEX_WEB_WORKDIR=str(workdir / "web"),  # its own build: another app runs too
        )
        admin = sa.create_engine(Settings(database_url=database_url).sqlalchemy_url)
        try:
            yield app, admin
        finally:
            app.stop()
            admin.dispose()


def test_subscribe_reload_and_webhooks_across_workers(
    production_stack, stack_name, browser: Browser
):
    app, admin = production_stack
    workers = [
        line
        for line in subprocess.run(
            ["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if f"--frontend-port {app.url.rsplit(':', 1)[1]}" in line
    ]
    assert len(workers) > 2, "expected several backend worker processes"

    context = browser.new_context(base_url=app.url)
    page = context.new_page()
    try:
        register(page, unique_email("prod-stack"))
        subscribe_with_card(page)
        page.goto("/dashboard")
        expect(page.get_by_text("Active", exact=True)).to_be_visible()
        page.reload()  # possibly another worker: the session and state still hold
        expect(page).to_have_url(path_is("/dashboard"))
        # Within Playwright's default 5 s: the reload cancels the old page's unfinished
        # work, and a Redis state lock that work had just taken used to stay behind until it
        # expired, leaving the page blank for 10 s about once in ten reloads
        # (`reflex_fixes`).
        expect(page.get_by_text("Next renewal")).to_be_visible()
    finally:
        context.close()

    # Every worker runs a webhook processor; each event is applied exactly once.
    def events():
        with admin.connect() as conn:
            return [
                tuple(row)
                for row in conn.execute(sa.text("SELECT type, status, attempts FROM stripe_event"))
            ]

    def settled(rows) -> bool:
        pending = [row for row in rows if row[1] == "pending"]
        return ("invoice.paid", "done", 1) in rows and not pending

    deadline = time.monotonic() + 20
    while not settled(events()) and time.monotonic() < deadline:
        time.sleep(0.2)  # bounded wait until every delivered webhook has been processed
    rows = events()
    assert ("invoice.paid", "done", 1) in rows, rows
    assert all(status != "pending" and attempts == 1 for _, status, attempts in rows), rows


def _api_user(app) -> tuple[str, dict[str, str]]:
    email = unique_email("prod-race")
    with httpx.Client(base_url=app.url, timeout=30) as api:
        registered = api.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        assert registered.status_code == 201, registered.text
        token = api.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return email, {"Authorization": f"Bearer {token.json()['access_token']}"}


def _card(app, token: str) -> str:
    client = stripe.StripeClient("sk_test_e2e", base_addresses={"api": app.stripe_api_base})
    return client.v1.payment_methods.create(params={"type": "card", "card": {"token": token}}).id


def _subscribe(app, headers, card: str) -> httpx.Response:
    with httpx.Client(base_url=app.url, timeout=60) as api:
        return api.post(
            "/api/v1/subscriptions/subscribe", json={"payment_method_id": card}, headers=headers
        )


def test_concurrent_subscribes_on_several_workers_make_one_subscription(
    production_stack, stack_name
):
    app, _ = production_stack
    email, headers = _api_user(app)
    cards = [_card(app, "tok_visa"), _card(app, "tok_mastercard")]
    start = threading.Barrier(len(cards))
    answers: list[httpx.Response] = []

    def attempt(card: str) -> None:
        start.wait()
        answers.append(_subscribe(app, headers, card))

    threads = [threading.Thread(target=attempt, args=(card,)) for card in cards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    subs = stripe_subscriptions_for(app, email)
    assert [s.status for s in subs] == ["active"]


def test_second_card_during_3ds_on_several_workers_leaves_one_live_subscription(
    production_stack, stack_name
):
    app, _ = production_stack
    email, headers = _api_user(app)
    pending = _subscribe(app, headers, _card(app, "tok_threeDSecure2Required"))
    assert pending.json()["status"] == "requires_action", pending.text
    second = _subscribe(app, headers, _card(app, "tok_visa"))
    assert second.status_code == 200 and second.json()["status"] == "active", second.text
    statuses = sorted(s.status for s in stripe_subscriptions_for(app, email))
    assert statuses.count("active") == 1 and len(statuses) == 2, statuses
