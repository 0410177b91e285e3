"""Subscribe through the real UI with the emulator's Stripe.js (issue: Elements checkout)."""

import contextlib
import json
import re
import time

import pytest
import stripe
from playwright.sync_api import Browser, Page, Route, expect

from tests.e2e.conftest import (
    PASSWORD,
    answer_3ds,
    expect_subscribed,
    fill_card,
    open_checkout,
    path_is,
    register,
    stripe_subscriptions_for,
    unique_email,
)

pytestmark = pytest.mark.e2e

DATE = re.compile(r"[A-Z][a-z]+ \d{1,2}, \d{4}")


def expect_dashboard_subscription(page: Page) -> None:
    page.goto("/dashboard")
    details = page.locator("main")
    expect(details.get_by_text("Pro", exact=True)).to_be_visible()
    expect(details.get_by_text("$12.00 / month")).to_be_visible()
    expect(details.get_by_text("Active", exact=True)).to_be_visible()
    expect(details.get_by_text("Next renewal")).to_be_visible()
    # The start and renewal dates among the subscription facts (the invoice table has more).
    expect(details.get_by_role("definition").filter(has_text=DATE)).to_have_count(2)


def expect_dashboard_empty(page: Page) -> None:
    page.goto("/dashboard")
    expect(page.get_by_text("No active subscription")).to_be_visible()
    expect(page.get_by_text("Next renewal")).to_have_count(0)


def test_subscribe_with_a_good_card_and_card_data_never_reaches_our_backend(page: Page, live_app):
    register(page, unique_email("success"))
    own_origin = live_app.url
    sent_to_us: list[str] = []
    page.on(
        "request",
        lambda request: (
            sent_to_us.append(f"{request.url} {request.post_data or ''}")
            if request.url.startswith(own_origin)
            else None
        ),
    )
    page.on(
        "websocket",
        lambda ws: (
            ws.on("framesent", lambda payload: sent_to_us.append(str(payload)))
            if ws.url.replace("ws", "http", 1).startswith(own_origin)
            else None
        ),
    )

    open_checkout(page)
    fill_card(page, "4242424242424242", cvc="987")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect_subscribed(page)

    assert sent_to_us, "the recorder saw no traffic to our own origin at all"
    traffic = "\n".join(sent_to_us)
    assert "4242424242424242" not in traffic
    assert "4242 4242" not in traffic
    # The word is checked in what the page sends, not in the names of the app's own files
    # it fetches (the build has an icon chunk `assets/card-cvc-<hash>.js`).
    sent = "\n".join(line for line in sent_to_us if "/assets/" not in line.split(" ", 1)[0])
    assert '"987"' not in traffic and "cvc" not in sent.lower()
    assert "pm_" in traffic  # what the backend does get: the payment method id

    page.get_by_role("link", name="Go to your dashboard").click()
    expect(page).to_have_url(path_is("/dashboard"))
    expect_dashboard_subscription(page)


def test_declined_card_shows_a_message_and_no_subscription(browser: Browser, base_url, live_app):
    # This one runs at a phone's size.
    context = browser.new_context(viewport={"width": 375, "height": 667}, base_url=base_url)
    page = context.new_page()
    try:
        email = unique_email("declined")
        register(page, email)
        open_checkout(page)
        fill_card(page, "4000000000000002")
        page.get_by_role("button", name="Subscribe", exact=True).click()
        expect(page.get_by_role("alert")).to_contain_text("declined", timeout=20_000)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375
        # The form is usable again for another card.
        expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_enabled()
        expect_dashboard_empty(page)
        assert [s for s in stripe_subscriptions_for(live_app, email) if s.status == "active"] == []
    finally:
        context.close()


def test_card_testing_is_stopped_with_a_clear_message(page: Page, live_app):
    email = unique_email("cardtester")
    register(page, email)
    open_checkout(page)
    for attempt in range(5):  # the shipped limit: 5 card attempts per person per hour
        fill_card(page, "4000000000000002")
        page.get_by_role("button", name="Subscribe", exact=True).click()
        expect(page.get_by_role("alert")).to_contain_text("declined", timeout=20_000)
        if attempt < 4:  # each next card on a new card form (the declined one is cancelled)
            expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_enabled()
    # The fifth was the last card attempt of the hour: the decline, and why no form follows.
    expect(page.get_by_role("alert")).to_contain_text(
        "Too many card attempts. Please wait 60 minutes and try again.", timeout=20_000
    )
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_disabled()
    assert [s for s in stripe_subscriptions_for(live_app, email) if s.status == "active"] == []
    # Coming back to the page later within the hour: still refused, with the same words.
    page.goto("/checkout")
    expect(page.get_by_role("alert")).to_contain_text("Too many card attempts", timeout=20_000)


def test_card_checks_a_script_makes_straight_at_stripe_close_the_checkout(page: Page, live_app):
    """A script holding the page's SetupIntent secret checks cards at Stripe and never tells
    our page; Stripe's webhooks still count each decline."""
    email = unique_email("script")
    register(page, email)
    open_checkout(page)
    client = stripe.StripeClient("sk_test_e2e", base_addresses={"api": live_app.stripe_api_base})
    [customer] = [
        c for c in client.v1.customers.list(params={"limit": 100}).data if c.email == email
    ]
    seti = next(
        s
        for s in client.v1.setup_intents.list(params={"limit": 100}).data
        if s.customer == customer.id
    )
    token = page.request.post(
        "/api/v1/auth/login", data={"email": email, "password": PASSWORD}
    ).json()["access_token"]
    for check in range(5):  # the shipped limit: 5 declines per person per hour
        if check:  # a declined card form checks no more cards: the script asks for another
            answer = page.request.post(
                "/api/v1/subscriptions/setup-intent",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.ok, answer.text()
            secret = answer.json()["client_secret"]
            seti = client.v1.setup_intents.retrieve(secret.partition("_secret_")[0])
        declined = client.v1.payment_methods.create(
            params={"type": "card", "card": {"token": "tok_chargeDeclined"}}
        )
        with pytest.raises(stripe.CardError):
            client.v1.setup_intents.confirm(seti.id, params={"payment_method": declined.id})
        # Each decline's webhook makes the app cancel the SetupIntent declined on (and the
        # fifth, every SetupIntent of the person): no more checks on it.
        deadline = time.monotonic() + 20
        while client.v1.setup_intents.retrieve(seti.id).status != "canceled":
            assert time.monotonic() < deadline, "the app did not cancel the SetupIntent"
            time.sleep(0.1)
    # The person (or the script) in the page is refused too, with the same words.
    fill_card(page, "4242424242424242")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text(
        re.compile(r"Too many card attempts\. Please wait \d+ minutes and try again\."),
        timeout=20_000,
    )
    assert stripe_subscriptions_for(live_app, email) == []


def test_3d_secure_completed_gives_an_active_subscription(page: Page):
    register(page, unique_email("threeds-ok"))
    open_checkout(page)
    fill_card(page, "4000002760003184")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    # This card asks twice: when the card is saved and for the first payment.
    answer_3ds(page, "Complete authentication")
    answer_3ds(page, "Complete authentication")
    expect_subscribed(page)
    expect_dashboard_subscription(page)


def test_3d_secure_failed_leaves_no_active_subscription(page: Page, live_app):
    email = unique_email("threeds-fail")
    register(page, email)
    open_checkout(page)
    fill_card(page, "4000002760003184")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    answer_3ds(page, "Fail authentication")
    expect(page.get_by_role("alert")).to_contain_text("authentication failed", timeout=20_000)
    expect(page.get_by_role("status")).to_have_count(0)
    expect_dashboard_empty(page)
    assert [s for s in stripe_subscriptions_for(live_app, email) if s.status == "active"] == []


def test_3d_secure_failed_on_the_first_payment_leaves_no_subscription(page: Page, live_app):
    email = unique_email("threeds-pay-fail")
    register(page, email)
    open_checkout(page)
    fill_card(page, "4000002760003184")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    answer_3ds(page, "Complete authentication")  # card saved
    answer_3ds(page, "Fail authentication")  # first payment not authenticated
    expect(page.get_by_role("alert")).to_contain_text("authentication failed", timeout=20_000)
    expect_dashboard_empty(page)
    # The attempt was undone: its invoice voided (which ends it, "incomplete_expired") or
    # it was cancelled; nothing stays open to pay.
    statuses = [s.status for s in stripe_subscriptions_for(live_app, email)]
    assert set(statuses) <= {"canceled", "incomplete_expired"}, statuses


def test_double_click_creates_one_subscription(page: Page, live_app):
    email = unique_email("double")
    register(page, email)
    open_checkout(page)
    fill_card(page, "4242424242424242")
    button = page.get_by_role("button", name="Subscribe", exact=True)
    button.dblclick()
    expect_subscribed(page)
    subscriptions = stripe_subscriptions_for(live_app, email)
    assert len(subscriptions) == 1, json.dumps([s.id for s in subscriptions])
    # And coming back to checkout is refused politely.
    page.goto("/checkout")
    expect(page.get_by_role("status")).to_contain_text("already have an active subscription")
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_hidden()


def test_subscribe_button_shows_progress_while_working(page: Page):
    register(page, unique_email("progress"))
    open_checkout(page)
    fill_card(page, "4000002760003184")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    # While the 3-D Secure dialog waits, the request is in flight: the button says so.
    busy = page.get_by_role("button", name="Processing…")
    expect(busy).to_be_visible()
    expect(busy).to_be_disabled()
    answer_3ds(page, "Fail authentication")
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_enabled(timeout=20_000)


def test_invalid_card_data_gets_a_clear_message_and_can_be_corrected(page: Page):
    register(page, unique_email("invalid-card"))
    open_checkout(page)
    fill_card(page, "4242")  # far too short
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("incomplete or incorrect", timeout=20_000)
    expect_dashboard_empty(page)
    open_checkout(page)
    fill_card(page, "4242424242424242")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect_subscribed(page)


def test_insufficient_funds_is_said_plainly(page: Page):
    register(page, unique_email("nsf"))
    open_checkout(page)
    fill_card(page, "4000000000009995")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("insufficient funds", timeout=20_000)
    expect_dashboard_empty(page)


def test_a_loading_checkout_takes_card_details_before_it_is_live_and_keeps_them(page: Page):
    register(page, unique_email("early-card"))
    # Hold the app's own scripts: until they run the page is only the server's HTML (no
    # React, no websocket, no login check, no SetupIntent).
    held: list[Route] = []
    holding = True

    def hold(route: Route) -> None:
        held.append(route) if holding else route.continue_()

    page.route(re.compile(r"/assets/.*\.js$"), hold)
    page.goto("/checkout", wait_until="commit")
    card = page.get_by_role("group", name="Card details")
    expect(card.get_by_placeholder("number")).to_be_editable()
    card.get_by_placeholder("number").fill("4242424242424242")
    typed_into = card.get_by_placeholder("number").element_handle()
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_disabled()
    assert held, "the page asked for none of the app's scripts"

    holding = False
    for route in held:
        route.continue_()
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_enabled()
    # The card Element mounted early is the one the live page uses (not mounted again, which
    # would empty Stripe's own Element): nothing typed is lost.
    expect(page.get_by_text("Loading the secure card form")).to_be_hidden()
    assert typed_into.evaluate("input => input.isConnected")
    expect(card.get_by_placeholder("number")).to_have_value("4242424242424242")
    fill_card(page, "4242424242424242")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect_subscribed(page)


def test_checkout_says_so_when_stripe_js_cannot_be_loaded_and_works_after_a_reload(
    page: Page, live_app
):
    # If Stripe cannot be reached, the page still shows, says what happened, and offers no
    # card to submit.
    email = unique_email("nostripejs")
    register(page, email)
    stripe_js = re.compile(re.escape(f"{live_app.stripe_api_base}/js.stripe.com/"))
    page.route(stripe_js, lambda route: route.abort())
    page.goto("/checkout")
    expect(page.get_by_role("heading", name="Checkout")).to_be_visible()
    expect(
        page.get_by_text(
            "The card form could not be loaded. Check your connection and reload the page."
        )
    ).to_be_visible(timeout=15_000)
    # Subscribe asks Stripe nothing and says the same again.
    page.get_by_role("button", name="Subscribe", exact=True).click()
    # Answered (the press is busy until the server has the card's answer).
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_enabled()
    expect(page.get_by_text("The card form could not be loaded.")).to_be_visible()
    expect(page.get_by_text("The card form is not ready yet.")).to_have_count(0)
    expect(page.get_by_text("You're subscribed!")).to_have_count(0)
    assert stripe_subscriptions_for(live_app, email) == []
    expect(
        page.get_by_role("group", name="Card details").get_by_placeholder("number")
    ).to_have_count(0)

    page.unroute(stripe_js)
    page.reload()
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_enabled(timeout=15_000)
    fill_card(page, "4242424242424242")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect_subscribed(page)


def test_checkout_shows_and_goes_live_while_stripe_js_hangs_then_says_it_could_not_load(
    page: Page, live_app
):
    # A network that drops Stripe's packets: the request for Stripe.js neither answers nor
    # fails. The page is not held up by it, and the card form gives up after a while.
    register(page, unique_email("hangingstripejs"))
    held: list[Route] = []
    stripe_js = re.compile(re.escape(f"{live_app.stripe_api_base}/js.stripe.com/"))
    page.route(stripe_js, lambda route: held.append(route))
    try:
        page.goto("/checkout", wait_until="commit")
        expect(page.get_by_role("heading", name="Checkout")).to_be_visible()
        # Live: the server has answered the page (its SetupIntent enables Subscribe).
        expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_enabled()
        expect(page.get_by_text("Loading the secure card form…")).to_be_visible()
        assert held, "the page asked for no Stripe.js"
        expect(
            page.get_by_text(
                "The card form could not be loaded. Check your connection and reload the page."
            )
        ).to_be_visible(timeout=20_000)
    finally:
        page.unroute(stripe_js)
        for route in held:
            with contextlib.suppress(Exception):  # the page may be gone
                route.abort()


def test_checkout_says_so_when_our_card_script_cannot_be_loaded(page: Page, live_app):
    # checkout.js (ours) refused, both the page's own tag and every later try: the form says
    # it could not be loaded instead of loading for good, and a Subscribe press is answered
    # (not left busy) with the same words, asking Stripe nothing.
    email = unique_email("nocheckoutjs")
    register(page, email)
    page.route(re.compile(r"/checkout\.js(\?|$)"), lambda route: route.abort())
    page.goto("/checkout")
    message = "The card form could not be loaded. Check your connection and reload the page."
    expect(page.get_by_text(message)).to_be_visible(timeout=15_000)
    expect(page.get_by_text("Loading the secure card form…")).to_have_count(0)

    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_enabled()
    expect(page.get_by_text(message)).to_be_visible()
    assert stripe_subscriptions_for(live_app, email) == []
