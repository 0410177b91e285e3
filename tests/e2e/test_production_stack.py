"""The production shape: several backend workers sharing state through Redis, on PostgreSQL.

Generated only where TEST_DATABASE_URL and TEST_REDIS_URL are set (`.ci/run` sets both when
the servers answer); the rest of the suite covers SQLite and one worker.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, expect

from devtools.liveapp import start_live_app
from devtools.pgschema import fresh_schema
from subscription_app.settings import Settings
from tests.e2e.helpers import path_is, register, subscribe_with_card, unique_email

pytestmark = pytest.mark.e2e
DATABASE, REDIS = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")


def pytest_generate_tests(metafunc):
    """Only where both servers are available."""
    if "production_stack" in metafunc.fixturenames:
        params = ["postgresql+redis"] if DATABASE and REDIS else []
        metafunc.parametrize("stack_name", params)


@pytest.fixture(scope="module")
def production_stack(tmp_path_factory):
    """The app on PostgreSQL (fresh schema) and Redis, with Reflex's several workers."""
    workdir = tmp_path_factory.mktemp("production_stack")
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

    deadline = time.monotonic() + 20
    while ("invoice.paid", "done", 1) not in events() and time.monotonic() < deadline:
        time.sleep(0.2)  # bounded wait for the emulator's webhook to be processed
    rows = events()
    assert ("invoice.paid", "done", 1) in rows, rows
    assert all(status != "pending" and attempts == 1 for _, status, attempts in rows), rows
