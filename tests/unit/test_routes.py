"""Post-login redirects stay on this site."""

import pytest

from subscription_app import routes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/plan", "/plan"),
        ("/checkout?x=1", "/checkout?x=1"),
        (None, routes.AFTER_LOGIN),
        ("", routes.AFTER_LOGIN),
        ("https://evil.example/", routes.AFTER_LOGIN),
        ("//evil.example/", routes.AFTER_LOGIN),
        ("/\\evil.example", routes.AFTER_LOGIN),
        ("plan", routes.AFTER_LOGIN),
        ("/\t/evil.example", routes.AFTER_LOGIN),
        ("/\n/evil.example", routes.AFTER_LOGIN),
        ("/\r\n/evil.example", routes.AFTER_LOGIN),
        ("/\x7f/evil.example", routes.AFTER_LOGIN),
        ("/\x00", routes.AFTER_LOGIN),
    ],
)
def test_safe_next(value, expected):
    assert routes.safe_next(value) == expected


def test_login_then_comes_back_to_the_same_address_query_included():
    """The Checkout return page's `session_id` survives a detour through the login page."""
    from urllib.parse import parse_qs, urlsplit

    assert routes.login_then("/checkout") == "/login?next=/checkout"
    url = routes.login_then("/checkout/complete", "session_id=cs_test_1&x=a%20b")
    back = parse_qs(urlsplit(url).query)["next"]
    assert back == ["/checkout/complete?session_id=cs_test_1&x=a%20b"]
    assert routes.safe_next(back[0]) == back[0]
