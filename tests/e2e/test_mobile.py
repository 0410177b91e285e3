"""At a phone's size (375x667) no page scrolls sideways."""

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.conftest import path_is, register, unique_email

pytestmark = pytest.mark.e2e

PUBLIC_PAGES = ["/", "/register", "/login", "/plan"]


def _assert_no_horizontal_scroll(page, path: str) -> None:
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
    )
    assert max(widths[:2]) <= widths[2], f"{path} scrolls sideways: {widths}"


def test_no_horizontal_scrolling_at_375x667(browser: Browser, base_url: str):
    context = browser.new_context(viewport={"width": 375, "height": 667}, base_url=base_url)
    page = context.new_page()
    try:
        for path in PUBLIC_PAGES:
            page.goto(path)
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            _assert_no_horizontal_scroll(page, path)
        register(page, unique_email("mobile"))
        expect(page).to_have_url(path_is("/dashboard"))
        expect(page.get_by_text("No active subscription")).to_be_visible()
        _assert_no_horizontal_scroll(page, "/dashboard")
    finally:
        context.close()
