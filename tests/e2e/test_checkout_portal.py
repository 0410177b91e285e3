"""Stripe Checkout, the customer portal and invoices, end to end in Chromium, offline.

The emulator serves Checkout's and the portal's pages, as Stripe would; the app is started
as `make run` starts it.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from devtools.stripe_emulator import hold_webhooks
from tests.e2e.conftest import path_is, register, stripe_subscriptions_for, unique_email

CHECKOUT_BUTTON = "Subscribe with Stripe Checkout"


def pay_on_checkout_page(page: Page, number: str = "4242 4242 4242 4242") -> None:
    """On the emulator's Checkout page: fill the card fields by their labels and subscribe."""
    expect(page.get_by_label("Card number")).to_be_visible()
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiry date").fill("12 / 34")
    page.get_by_label("CVC").fill("123")
    page.get_by_label("Cardholder name").fill("Ada Lovelace")
    page.get_by_role("button", name="Subscribe", exact=True).click()


def go_to_checkout(page: Page, live_app) -> None:
    page.goto("/plan")
    page.get_by_role("button", name=CHECKOUT_BUTTON).click()
    expect(page).to_have_url(re.compile(re.escape(live_app.stripe_api_base)))


@pytest.mark.parametrize("webhooks", ["delivered", "held back"])
def test_subscribe_with_stripe_checkout(page: Page, live_app, webhooks):
    email = unique_email("checkout")
    register(page, email)
    go_to_checkout(page, live_app)
    expect(page.get_by_label("Email")).to_have_value(email)  # filled in, as Stripe does
    if webhooks == "held back":
        hold_webhooks(live_app.stripe_api_base, True)
    try:
        pay_on_checkout_page(page)
        # Back in the app: recorded from Stripe's answer at once, webhook or not.
        expect(page).to_have_url(path_is("/checkout/complete"))
        expect(page.get_by_role("status")).to_contain_text("You're subscribed!")
        page.get_by_role("link", name="Go to your dashboard").click()
        expect(page.get_by_text("Active", exact=True)).to_be_visible()
        expect(page.get_by_text("Next renewal")).to_be_visible()
    finally:
        hold_webhooks(live_app.stripe_api_base, False)
    assert [s.status for s in stripe_subscriptions_for(live_app, email)] == ["active"]
    # A second visit cannot start a second subscription.
    page.goto("/plan")
    page.get_by_role("button", name=CHECKOUT_BUTTON).click()
    expect(page.get_by_role("alert")).to_contain_text("already have an active subscription")


def test_a_declined_card_stays_on_checkout_and_back_returns_to_the_plan(page: Page, live_app):
    email = unique_email("checkout-declined")
    register(page, email)
    go_to_checkout(page, live_app)
    pay_on_checkout_page(page, "4000 0000 0000 0002")
    expect(page.get_by_text(re.compile("declined", re.IGNORECASE))).to_be_visible()
    expect(page.get_by_label("Card number")).to_be_visible()  # still on Checkout's page
    page.get_by_role("link", name="Back").click()
    expect(page).to_have_url(path_is("/plan"))
    expect(page.get_by_role("status")).to_contain_text("Checkout was cancelled")
    assert stripe_subscriptions_for(live_app, email) == []


def test_manage_billing_cancel_in_the_portal_shows_the_end_date_live(page: Page, live_app):
    register(page, unique_email("portal"))
    go_to_checkout(page, live_app)
    pay_on_checkout_page(page)
    expect(page.get_by_role("status")).to_contain_text("You're subscribed!")
    page.goto("/dashboard")
    expect(page.get_by_text("Next renewal")).to_be_visible()
    page.get_by_role("button", name="Manage billing").click()
    expect(page).to_have_url(re.compile(re.escape(live_app.stripe_api_base)))
    page.get_by_role("button", name="Cancel subscription").click()
    expect(page.get_by_role("button", name="Don't cancel")).to_be_visible()
    page.get_by_role("link", name=re.compile("^Return to")).click()
    expect(page).to_have_url(path_is("/dashboard"))
    # The portal's change reaches us by webhook; the open dashboard shows it when it lands.
    expect(page.get_by_text("Access ends")).to_be_visible(timeout=15_000)
    expect(page.get_by_text("Your subscription ends on")).to_contain_text(
        re.compile(r"[A-Z][a-z]+ \d{1,2}, \d{4}")
    )


def test_the_invoice_table_lists_the_first_invoice_with_a_working_pdf(page: Page, live_app):
    register(page, unique_email("invoices"))
    go_to_checkout(page, live_app)
    pay_on_checkout_page(page)
    expect(page.get_by_role("status")).to_contain_text("You're subscribed!")
    page.goto("/dashboard")
    table = page.get_by_role("table", name="Invoices")
    expect(table).to_be_visible()
    expect(table.get_by_role("row")).to_have_count(2)  # the header and one invoice
    expect(table).to_contain_text("$12.00")
    expect(table).to_contain_text("Paid")
    pdf = table.get_by_role("link", name=re.compile("^PDF"))
    response = page.request.get(pdf.get_attribute("href"))
    assert response.ok and response.headers["content-type"].startswith("application/pdf")
    assert response.body().startswith(b"%PDF-")
    view = table.get_by_role("link", name=re.compile("^View"))
    assert page.request.get(view.get_attribute("href")).ok
