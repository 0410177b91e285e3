"""A person registers, logs out, logs in, and visits the plan and the dashboard."""

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import PASSWORD, log_in, path_is, register, unique_email

pytestmark = pytest.mark.e2e


def test_register_logout_login_plan_dashboard(page: Page):
    email = unique_email()
    register(page, email)
    expect(page.get_by_text("No active subscription")).to_be_visible()
    expect(page.get_by_text(email)).to_be_visible()

    # The session survives a reload.
    page.reload()
    expect(page).to_have_url(path_is("/dashboard"))
    expect(page.get_by_text("No active subscription")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(path_is("/"))
    expect(page.get_by_role("link", name="Log in")).to_be_visible()

    # Logged out, the dashboard sends us to log in, then back.
    page.goto("/dashboard")
    expect(page).to_have_url(path_is("/login"))
    log_in(page, email)
    expect(page).to_have_url(path_is("/dashboard"))
    expect(page.get_by_text("No active subscription")).to_be_visible()

    page.get_by_role("link", name="Plan", exact=True).click()
    expect(page).to_have_url(path_is("/plan"))
    expect(page.get_by_text("$12.00 / month")).to_be_visible()
    expect(page.get_by_role("button", name="Subscribe", exact=True)).to_be_visible()

    page.get_by_role("link", name="Dashboard").click()
    expect(page).to_have_url(path_is("/dashboard"))
    expect(page.get_by_role("link", name="See the plan")).to_be_visible()


@pytest.mark.parametrize(
    ("path", "button"),
    [("/register", "Create account"), ("/login", "Log in"), ("/plan", "Subscribe")],
)
def test_buttons_wait_until_the_page_is_live(page: Page, path: str, button: str):
    # Until the page's websocket is up, a form's button would submit the form natively (a GET
    # with the password in the address), and the plan's Subscribe would read `logged_in` as
    # false and send a logged-in person to the login page. Here the websocket never reaches
    # the server, so the page never goes live.
    page.route_web_socket(re.compile(r"/_event"), lambda ws: None)
    page.goto(path)
    expect(page.get_by_role("button", name=button, exact=True)).to_be_disabled()
    page.unroute_all()


def test_login_failures_and_duplicate_registration_show_clear_messages(page: Page):
    email = unique_email()
    register(page, email)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(path_is("/"))

    page.goto("/login")
    log_in(page, email, "wrong-password")
    expect(page.get_by_role("alert")).to_have_text("Incorrect email or password.")
    page.get_by_label("Email").fill(unique_email())
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Incorrect email or password.")

    page.goto("/register")
    page.get_by_label("Email").fill(email.upper())
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("alert")).to_contain_text("already exists")
    expect(page).to_have_url(path_is("/register"))


def test_subscribe_leads_a_logged_out_visitor_to_log_in_first(page: Page):
    page.goto("/plan")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(page).to_have_url(path_is("/login"))
    assert "next=/checkout" in page.url


def test_a_logged_out_visitor_loading_checkout_is_sent_to_log_in(page: Page):
    # The checkout page is in the server's HTML before the login is checked.
    page.goto("/checkout")
    expect(page).to_have_url(path_is("/login"))
    assert "next=/checkout" in page.url
    expect(page.get_by_role("group", name="Card details")).to_have_count(0)


def test_pages_carry_security_headers(page: Page):
    response = page.goto("/plan")
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "strict-origin-when-cross-origin"


def test_repeated_failed_logins_are_rate_limited_with_a_clear_message(page: Page, live_app):
    email = unique_email("ratelimit")
    register(page, email)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(path_is("/"))
    page.goto("/login")
    log_in(page, email, "wrong-password")
    expect(page.get_by_role("alert")).to_have_text("Incorrect email or password.")
    # Someone keeps guessing (through the API, which shares the limits).
    for _ in range(4):
        guess = httpx.post(
            f"{live_app.url}/api/v1/auth/login",
            json={"email": email, "password": "another-guess"},
            timeout=30,
        )
        assert guess.status_code == 401
    log_in(page, email)  # the right password, too late
    expect(page.get_by_role("alert")).to_contain_text("Too many attempts. Please wait")
    expect(page).to_have_url(path_is("/login"))


def test_session_cookie_is_httponly_and_invisible_to_page_scripts(page: Page):
    register(page, unique_email("cookie"))
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["sa_session"]["httpOnly"] is True
    assert cookies["sa_session"]["sameSite"] == "Lax"
    assert "sa_session" not in page.evaluate("document.cookie")
    page.reload()
    expect(page.get_by_text("No active subscription")).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(path_is("/"))
    assert "sa_session" not in {c["name"] for c in page.context.cookies()}
