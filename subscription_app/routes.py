"""Route constants: the one place page paths are spelled out."""

LANDING = "/"
REGISTER = "/register"
LOGIN = "/login"
PLAN = "/plan"
CHECKOUT = "/checkout"
# Where Stripe Checkout sends the browser back after paying (`?session_id=cs_...`).
CHECKOUT_COMPLETE = "/checkout/complete"
DASHBOARD = "/dashboard"

# The REST API (see `api/`) and the paths the pages call in it.
API_PREFIX = "/api/v1"
API_BROWSER_SESSION = f"{API_PREFIX}/auth/session"

# Our browser-side checkout helper, served from assets/.
CHECKOUT_SCRIPT = "/checkout.js"

# Where a user lands after logging in when no (safe) `next` was given.
AFTER_LOGIN = DASHBOARD


def safe_next(value: str | None, default: str = AFTER_LOGIN) -> str:
    """A post-login redirect target, limited to paths on this site (no open redirects)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    # Browsers drop tabs and newlines from URLs, so "/\t/evil.com" would become "//evil.com".
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return default
    return value
