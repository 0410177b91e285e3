"""Dashboard: webhooks keep it true and live; cancel at period end, undo, cancel now."""

import re
import sqlite3
import time

import pytest
import stripe
from playwright.sync_api import Page, expect

from devtools.stripe_emulator import renew_subscription
from tests.e2e.conftest import (
    path_is,
    register,
    stripe_subscriptions_for,
    subscribe_with_card,
    unique_email,
)

pytestmark = pytest.mark.e2e
DATE = re.compile(r"[A-Z][a-z]+ \d{1,2}, \d{4}")


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    """Poll `condition` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)  # polling interval of a bounded wait on a condition
    raise AssertionError(f"timed out waiting for {what}")


def processed_events(live_app) -> dict[str, set[str]]:
    path = live_app.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, status FROM stripe_event").fetchall()
    result: dict[str, set[str]] = {}
    for event_type, status in rows:
        result.setdefault(event_type, set()).add(status)
    return result


def stripe_client(live_app):
    return stripe.StripeClient("sk_test_e2e", base_addresses={"api": live_app.stripe_api_base})


def test_subscription_facts_arrive_through_the_signed_webhook_path(page: Page, live_app):
    register(page, unique_email("webhook"))
    subscribe_with_card(page)
    # The emulator signs and posts its events to our route; the processor applies them.
    wait_for(
        lambda: (
            "done" in processed_events(live_app).get("invoice.paid", set())
            and processed_events(live_app).get("customer.subscription.created")
        ),
        what="invoice.paid and customer.subscription.created to be processed",
    )
    page.goto("/dashboard")
    expect(page.get_by_text("Active", exact=True)).to_be_visible()
    facts = page.locator("main").get_by_role("definition")
    expect(facts.filter(has_text=DATE)).to_have_count(2)  # started, next renewal


def test_cancel_at_period_end_then_undo(page: Page):
    register(page, unique_email("cancel-later"))
    subscribe_with_card(page)
    page.goto("/dashboard")
    expect(page.get_by_role("radio", name="At the end of the period")).to_be_checked()
    page.get_by_role("button", name="Cancel subscription").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text("You keep access until")
    dialog.get_by_role("button", name="Confirm cancellation").click()
    expect(page.get_by_role("status")).to_contain_text("You keep access until")
    expect(page.get_by_text("Access ends")).to_be_visible()
    expect(page.get_by_text("Active", exact=True)).to_be_visible()
    page.get_by_role("button", name="Undo cancellation").click()
    expect(page.get_by_role("status")).to_contain_text("renew as usual")
    expect(page.get_by_text("Next renewal")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel subscription")).to_be_visible()


def test_keep_subscription_closes_the_dialog_and_changes_nothing(page: Page):
    register(page, unique_email("keep"))
    subscribe_with_card(page)
    page.goto("/dashboard")
    page.get_by_role("button", name="Cancel subscription").click()
    page.get_by_role("alertdialog").get_by_role("button", name="Keep subscription").click()
    expect(page.get_by_role("alertdialog")).to_have_count(0)
    expect(page.get_by_text("Next renewal")).to_be_visible()


def test_cancel_now(page: Page, live_app):
    email = unique_email("cancel-now")
    register(page, email)
    subscribe_with_card(page)
    page.goto("/dashboard")
    page.get_by_role("radio", name="Now").check()
    page.get_by_role("button", name="Cancel subscription").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text("Your access ends now")
    dialog.get_by_role("button", name="Confirm cancellation").click()
    expect(page.get_by_role("status")).to_contain_text("cancelled and has ended")
    expect(page.get_by_text("No active subscription")).to_be_visible()
    expect(page.get_by_text("Canceled", exact=True).first).to_be_visible()
    [subscription] = stripe_subscriptions_for(live_app, email)
    assert subscription.status == "canceled"


def test_open_dashboard_follows_a_change_made_at_stripe_without_reload(page: Page, live_app):
    email = unique_email("live")
    register(page, email)
    subscribe_with_card(page)
    page.goto("/dashboard")
    expect(page.get_by_text("Next renewal")).to_be_visible()
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    # Someone cancels in Stripe's dashboard: only the webhook tells us.
    [subscription] = stripe_subscriptions_for(live_app, email)
    stripe_client(live_app).v1.subscriptions.cancel(subscription.id)

    expect(page.get_by_text("No active subscription")).to_be_visible(timeout=15_000)
    assert navigations == []  # no reload, no navigation
    expect(page).to_have_url(path_is("/dashboard"))


def test_a_card_that_fails_at_renewal_shows_the_past_due_warning_live(page: Page, live_app):
    email = unique_email("past-due")
    register(page, email)
    subscribe_with_card(page)
    page.goto("/dashboard")
    expect(page.get_by_text("Active", exact=True)).to_be_visible()

    # The customer's card is replaced by one whose charges fail (4000 0000 0000 0341),
    # then the billing period ends: Stripe's renewal charge fails.
    client = stripe_client(live_app)
    [subscription] = stripe_subscriptions_for(live_app, email)
    failing = client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_chargeCustomerFail"}}
    )
    client.v1.payment_methods.attach(failing.id, params={"customer": subscription.customer})
    client.v1.customers.update(
        subscription.customer,
        params={"invoice_settings": {"default_payment_method": failing.id}},
    )
    client.v1.subscriptions.update(subscription.id, params={"default_payment_method": failing.id})
    renewed = renew_subscription(live_app.stripe_api_base, subscription.id)
    assert renewed["status"] == "past_due"

    # Only the signed webhooks tell the app; the open page updates without a reload.
    warning = page.get_by_role("alert").filter(has_text="Your last payment failed")
    expect(warning).to_have_text("Your last payment failed; Stripe will retry.", timeout=15_000)
    expect(page.get_by_text("Past due", exact=True)).to_be_visible()
