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
