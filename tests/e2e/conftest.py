"""End-to-end fixtures and helpers: the app started the way `make run` starts it, Chromium,
and small helpers that act as a person would (register, log in, fill the card form...).

The app runs as a separate process (`python -m devtools.run`: local Stripe emulator, seeded
plan, migrations, Reflex in production mode on one port) against a fresh SQLite database.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest
import stripe
from playwright.sync_api import Page, expect

from devtools.liveapp import CHROMIUM, CHROMIUM_ARGS, LiveApp, start_live_app


@pytest.fixture(scope="session")
def live_app(tmp_path_factory) -> LiveApp:
    """Start the app once for the whole end-to-end session."""
    app = start_live_app(tmp_path_factory.mktemp("live_app"))
    yield app
    app.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Use Debian's Chromium: Playwright cannot download its own browser here."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"Chromium not found at {CHROMIUM}; `make test` installs it")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def base_url(live_app) -> str:
    """Relative `page.goto("/plan")` calls go to the live app."""
    return live_app.url


PASSWORD = "s3cret-pass-123"


def unique_email(prefix: str = "e2e") -> str:
    """A fresh address, so tests never depend on each other's accounts."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def path_is(path: str) -> re.Pattern:
    """Match a URL whose path is `path` (Reflex may add a trailing slash)."""
    return re.compile(rf"^https?://[^/]+{re.escape(path.rstrip('/'))}/?(\?.*)?$")


def register(page: Page, email: str, password: str = PASSWORD) -> None:
    """Create an account through the registration page; ends on the dashboard."""
    page.goto("/register")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Confirm password").fill(password)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(path_is("/dashboard"))


def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    """Fill and submit the login form (the page must be /login)."""
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def open_checkout(page: Page) -> None:
    """From the plan page, press Subscribe and wait for the card form."""
    page.goto("/plan")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(page).to_have_url(path_is("/checkout"))
    expect(page.get_by_role("heading", name="Checkout")).to_be_visible()
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_enabled(timeout=15_000)


def fill_card(page: Page, number: str, *, exp_month="12", exp_year="34", cvc="123") -> None:
    """Type a card into the Stripe Element (the emulator's Element takes a 2-digit year)."""
    card = page.get_by_role("group", name="Card details")
    card.get_by_placeholder("number").fill(number)
    card.get_by_placeholder("exp_month").fill(exp_month)
    card.get_by_placeholder("exp_year").fill(exp_year)
    card.get_by_placeholder("cvc").fill(cvc)
    postal = card.get_by_placeholder("postal_code")
    if postal.count():
        postal.fill("10001")


def answer_3ds(page: Page, button: str) -> None:
    """Answer the 3-D Secure dialog with "Complete authentication" or "Fail authentication"."""
    page.get_by_role("button", name=button).click()


def expect_subscribed(page: Page) -> None:
    """The checkout page confirms the subscription."""
    expect(page.get_by_role("status")).to_contain_text("You're subscribed!", timeout=20_000)


def stripe_subscriptions_for(live_app, email: str) -> list:
    """Every subscription the emulator holds for the customer with this email."""
    client = stripe.StripeClient("sk_test_e2e", base_addresses={"api": live_app.stripe_api_base})
    customers = [
        c for c in client.v1.customers.list(params={"limit": 100}).data if c.email == email
    ]
    subs = []
    for customer in customers:
        subs += client.v1.subscriptions.list(params={"customer": customer.id, "status": "all"}).data
    return subs


def subscribe_with_card(page: Page, number: str = "4242424242424242") -> None:
    """Go through checkout with a card that needs no authentication."""
    open_checkout(page)
    fill_card(page, number)
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect_subscribed(page)
