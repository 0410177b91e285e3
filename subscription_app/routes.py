"""Route constants: the one place page paths are spelled out."""

import hashlib
from pathlib import Path
from urllib.parse import quote

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

# Our browser-side checkout helper, served from assets/ under this name.
CHECKOUT_SCRIPT = "/checkout.js"


def _content_version(asset: str) -> str:
    """A short hash of the content of `asset` (a path under assets/); "" if it is missing."""
    try:
        content = (
            Path(__file__).resolve().parent.parent / "assets" / asset.lstrip("/")
        ).read_bytes()
    except OSError:
        return ""
    return hashlib.sha256(content).hexdigest()[:16]


# Pages load the helper by an address that names its content, so a browser may keep it
# instead of asking again on every page load (`security.SecurityMiddleware` says so for this
# exact address only); a changed file gets a new address. The hash is of assets/ as the
# backend starts; the file served is the frontend build's copy of it, made from the same
# checkout by `reflex run` (a frontend built from other code than its backend's is not
# supported by Reflex either).
CHECKOUT_SCRIPT_VERSION = _content_version(CHECKOUT_SCRIPT)
CHECKOUT_SCRIPT_URL = (
    f"{CHECKOUT_SCRIPT}?v={CHECKOUT_SCRIPT_VERSION}" if CHECKOUT_SCRIPT_VERSION else CHECKOUT_SCRIPT
)

# Where a user lands after logging in when no (safe) `next` was given.
AFTER_LOGIN = DASHBOARD


def login_then(path: str, query: str = "") -> str:
    """The login page, sending the person back to `path` (with its `query`) afterwards."""
    target = f"{path}?{query}" if query else path
    # Slashes stay readable (`?next=/checkout`); the inner query is escaped whole.
    return f"{LOGIN}?next={quote(target, safe='/')}"


def safe_next(value: str | None, default: str = AFTER_LOGIN) -> str:
    """A post-login redirect target, limited to paths on this site (no open redirects)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    # Browsers drop tabs and newlines from URLs, so "/\t/evil.com" would become "//evil.com".
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return default
    return value
