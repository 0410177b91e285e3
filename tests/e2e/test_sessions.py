"""Sessions end everywhere: a tab opened before a logout (or expiry) can no longer act."""

from __future__ import annotations

import sqlite3

import pytest
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from subscription_app import session_cookie
from tests.e2e.conftest import (
    log_in,
    path_is,
    register,
    stripe_subscriptions_for,
    subscribe_with_card,
    unique_email,
)

pytestmark = pytest.mark.e2e


def try_to_cancel(tab: Page) -> None:
    """Press Cancel and confirm, unless the tab already noticed that its session ended.

    Two paths end the same way: the click's event is refused and the tab goes to the login
    page, or the dashboard's live watcher (it re-checks the session every second) got there
    first and the dialog is gone before the click. Either way nothing may be cancelled.
    """
    try:
        tab.get_by_role("button", name="Cancel subscription").click(timeout=5_000)
        dialog = tab.get_by_role("alertdialog")
        dialog.get_by_role("button", name="Confirm cancellation").click(timeout=5_000)
    except PlaywrightTimeoutError:
        expect(tab).to_have_url(path_is("/login"))


def expect_nothing_cancelled(live_app, email: str) -> None:
    [subscription] = stripe_subscriptions_for(live_app, email)
    assert subscription.status == "active"
    assert subscription.cancel_at_period_end is False


def test_logout_in_one_tab_stops_an_older_tab_from_cancelling(browser: Browser, live_app):
    context = browser.new_context(base_url=live_app.url)
    try:
        first = context.new_page()
        email = unique_email("two-tabs")
        register(first, email)
        subscribe_with_card(first)
        second = context.new_page()
        second.goto("/dashboard")
        expect(second.get_by_text("Active", exact=True)).to_be_visible()

        first.goto("/dashboard")
        first.get_by_role("button", name="Log out").click()
        expect(first).to_have_url(path_is("/"))

        try_to_cancel(second)
        expect(second).to_have_url(path_is("/login"))
        expect(second.get_by_role("button", name="Log in")).to_be_visible()
        expect_nothing_cancelled(live_app, email)
    finally:
        context.close()


def test_logout_in_one_tab_ends_another_tabs_own_login(browser: Browser, live_app):
    """Two tabs of one browser, each logged in on its own: the cookie names only the newer
    login, and logging out there must end the older tab's login too."""
    context = browser.new_context(base_url=live_app.url)
    try:
        second = context.new_page()
        second.goto("/login")  # opened while logged out: it logs in on its own below
        expect(second.get_by_role("button", name="Log in")).to_be_visible()
        first = context.new_page()
        email = unique_email("own-logins")
        register(first, email)
        subscribe_with_card(first)
        first.goto("/dashboard")
        expect(first.get_by_text("Active", exact=True)).to_be_visible()

        log_in(second, email)
        expect(second).to_have_url(path_is("/dashboard"))
        second.get_by_role("button", name="Log out").click()
        expect(second).to_have_url(path_is("/"))

        try_to_cancel(first)  # the first tab stays as it was, on its dashboard
        expect(first).to_have_url(path_is("/login"))
        expect_nothing_cancelled(live_app, email)
    finally:
        context.close()


def test_an_expired_sessions_event_is_refused(page: Page, live_app):
    email = unique_email("expired")
    register(page, email)
    subscribe_with_card(page)
    page.goto("/dashboard")
    expect(page.get_by_text("Active", exact=True)).to_be_visible()

    # The login runs out while the page is open.
    with sqlite3.connect(live_app.database_url.removeprefix("sqlite:///")) as db:
        db.execute(
            "UPDATE auth_session SET expires_at = '2000-01-01 00:00:00.000000' WHERE user_id = "
            "(SELECT id FROM user_account WHERE email = ?)",
            (email,),
        )
    try_to_cancel(page)
    expect(page).to_have_url(path_is("/login"))
    expect_nothing_cancelled(live_app, email)


def test_logging_out_leaves_nothing_of_the_person_in_the_tab(page: Page, live_app):
    """A shared computer: whoever logs in next in the same tab sees nothing of the first."""
    first = unique_email("shared-first")
    register(page, first)
    subscribe_with_card(page)
    page.goto("/dashboard")
    expect(page.get_by_text("Active", exact=True)).to_be_visible()
    tab_token = page.evaluate("sessionStorage.getItem('token')")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(path_is("/"))
    # The tab started afresh: a new Reflex token, so its state on the server is a new one
    # and the first person's subscription, messages and invoices are not in it.
    page.wait_for_function(
        "old => { const t = sessionStorage.getItem('token'); return t && t !== old; }",
        arg=tab_token,
        timeout=10_000,
    )

    register(page, unique_email("shared-next"))
    expect(page.get_by_text("No active subscription")).to_be_visible()
    expect(page.get_by_text("No invoices yet.")).to_be_visible()
    expect(page.get_by_text(f"Signed in as {first}")).to_have_count(0)


@pytest.mark.parametrize("cookie", ["none", "the owner's, logged out through the API"])
def test_a_closed_tabs_token_alone_shows_nothing_of_its_person(
    browser: Browser, live_app, cookie: str
):
    """The Reflex token names a tab's state on the server and travels in the websocket's
    address (a proxy's log holds it). Presented without the login's cookie, or with a
    cookie whose login has since been logged out, it gets a fresh, logged-out tab: nothing
    of the person is sent to the browser."""
    owner = browser.new_context(base_url=live_app.url)
    try:
        tab = owner.new_page()
        email = unique_email("token-holder")
        register(tab, email)
        subscribe_with_card(tab)
        tab.goto("/dashboard")
        expect(tab.get_by_text("Active", exact=True)).to_be_visible()
        token = tab.evaluate("sessionStorage.getItem('token')")
        cookies = owner.cookies()
    finally:
        owner.close()  # the tab is gone; its state stays on the server under its token

    holder = browser.new_context(base_url=live_app.url)
    try:
        if cookie != "none":
            # The cookie is still well signed and unexpired; only the database knows its
            # login ended.
            holder.add_cookies(cookies)  # type: ignore[arg-type]
            names = (session_cookie.COOKIE_NAME, session_cookie.PRODUCTION_COOKIE_NAME)
            [login] = [c["value"] for c in cookies if c["name"] in names]
            answer = holder.request.post(
                "/api/v1/auth/logout", headers={"Authorization": f"Bearer {login}"}
            )
            assert answer.status == 204
        # The page starts with the closed tab's token, as if it were its own.
        holder.add_init_script(
            "if (location.pathname.startsWith('/dashboard')) "
            f"sessionStorage.setItem('token', {token!r})"
        )
        received: list[str] = []  # what the server sent the latest page
        leaks = [email, '"status":"active"', "_secret_"]  # no email, subscription, card form
        for _ in range(5):
            received.clear()
            page = holder.new_page()
            page.on(
                "websocket", lambda ws: ws.on("framereceived", lambda f: received.append(str(f)))
            )
            page.goto("/dashboard")
            expect(page).to_have_url(path_is("/login"))
            expect(page.get_by_role("button", name="Log in")).to_be_visible()
            assert any("is_hydrated" in frame for frame in received)  # the server answered
            assert not [frame for frame in received if any(leak in frame for leak in leaks)]
            # Reflex hands out a new token while another connection still holds this one: the
            # server may not have seen the owner's tab close yet. Then try again.
            if page.evaluate("sessionStorage.getItem('token')") == token:
                break
            page.close()
        else:
            pytest.fail("every page was given a new token: the closed tab's was never tried")
    finally:
        holder.close()
