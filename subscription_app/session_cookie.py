"""The browser's session cookie: HttpOnly, so page scripts can never read the token.

A Reflex event handler cannot set an HttpOnly cookie (it can only run script in the page).
So after a login the handler gives the page a *handoff code*: the session token sealed with
our encryption key, valid for 60 seconds and usable once. The page posts it to
`POST /api/v1/auth/session`, whose response sets the cookie. Page scripts see only the sealed
code, never the token.
"""

from __future__ import annotations

import json
import secrets
import threading
import time

import redis
from starlette.requests import cookie_parser

from subscription_app import crypto
from subscription_app.settings import get_settings

COOKIE_NAME = "sa_session"
# In production the name carries the `__Host-` prefix: browsers then only accept the cookie
# when it is Secure, has Path=/ and no Domain, so neither a sibling subdomain nor a plain-HTTP
# response can set or shadow it.
PRODUCTION_COOKIE_NAME = "__Host-" + COOKIE_NAME
HANDOFF_SECONDS = 60

_used: dict[str, float] = {}
_used_lock = threading.Lock()


class InvalidHandoff(Exception):
    """The handoff code is malformed, expired or already used."""


def make_handoff(token: str) -> str:
    """Seal `token` into a short-lived, single-use handoff code."""
    payload = {"t": token, "exp": time.time() + HANDOFF_SECONDS, "n": secrets.token_hex(12)}
    return crypto.encrypt(json.dumps(payload), purpose=crypto.Purpose.LOGIN_HANDOFF)


def _mark_used(nonce: str, expires: float) -> bool:
    settings = get_settings()
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        return bool(client.set(f"handoff:{nonce}", 1, nx=True, ex=HANDOFF_SECONDS + 5))
    now = time.time()
    with _used_lock:
        for stale in [n for n, e in _used.items() if e < now]:
            del _used[stale]
        if nonce in _used:
            return False
        _used[nonce] = expires
        return True


def redeem_handoff(code: str) -> str:
    """The session token inside a handoff code (once).

    Raises:
        InvalidHandoff: malformed, tampered, expired or already used.
    """
    if not isinstance(code, str) or len(code) > 4096:
        raise InvalidHandoff("invalid")
    try:
        payload = json.loads(crypto.decrypt(code, purpose=crypto.Purpose.LOGIN_HANDOFF))
        token, expires, nonce = str(payload["t"]), float(payload["exp"]), str(payload["n"])
    except (crypto.DecryptionError, ValueError, KeyError, TypeError) as exc:
        raise InvalidHandoff("invalid") from exc
    if expires < time.time():
        raise InvalidHandoff("expired")
    if not _mark_used(nonce, expires):
        raise InvalidHandoff("used")
    return token


def cookie_name() -> str:
    """The session cookie's name: `__Host-sa_session` in production, `sa_session` otherwise."""
    return PRODUCTION_COOKIE_NAME if get_settings().is_production else COOKIE_NAME


def cookie_options() -> dict:
    """Attributes of the session cookie (Starlette `set_cookie` keywords)."""
    settings = get_settings()
    return {
        "key": cookie_name(),
        "max_age": settings.session_ttl_minutes * 60,
        "path": "/",
        "httponly": True,
        "samesite": "lax",
        "secure": settings.is_production,
    }


def token_from_cookie_header(header: str | None) -> str:
    """The session token in a `Cookie:` header, or ""."""
    if not header:
        return ""
    # Starlette's parser, as the REST API reads cookies: it reads every well-formed pair.
    # (`http.cookies.SimpleCookie` stops at the first pair it cannot parse, so another
    # site's JSON or spaced cookie ahead of ours logged the person out of every page.)
    try:
        return cookie_parser(header).get(cookie_name(), "")
    except Exception:  # a malformed Cookie header means no session, never an error
        return ""
