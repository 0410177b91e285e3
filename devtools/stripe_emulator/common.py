"""What every part of the emulator shares.

localstripe's modules (its server module imported with its aiohttp deprecation
warnings silenced; import ``ls_server`` from here), Stripe-shaped 400 errors,
request/response helpers, the route table through which our endpoints are
served before localstripe's own, and the public pages (hosted Checkout, the
customer portal, hosted invoices): routes a browser opens without an API key,
with links built from the address the emulator was reached at.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from aiohttp import web
from localstripe import errors as ls_errors
from localstripe import resources as ls

with warnings.catch_warnings():
    # localstripe registers plain-function handlers, which aiohttp deprecates;
    # keep that noise (an error under filterwarnings=error) out of our users.
    warnings.filterwarnings("ignore", "Bare functions are deprecated", DeprecationWarning)
    from localstripe import server as ls_server

UserError = ls_errors.UserError
Handler = Callable[..., Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _invalid(message: str, param: str | None = None, code: str | None = None):
    """A 400 error shaped like Stripe's (``code`` and ``param`` set)."""
    contents: dict[str, Any] = {}
    if param is not None:
        contents["param"] = param
    if code is not None:
        contents["code"] = code
    return UserError(400, message, contents)


def _reject_unknown(data: dict, allowed: set[str] | frozenset[str]) -> None:
    for key in data:
        if key not in allowed:
            raise _invalid(f"Received unknown parameter: {key}", key, "parameter_unknown")


def _as_bool(value: Any, param: str) -> bool | None:
    value = ls.try_convert_to_bool(value)
    if value is not None and not isinstance(value, bool):
        raise _invalid(f"Invalid boolean: {value}", param, "parameter_invalid_boolean")
    return value


def _json(obj: ls.StripeObject, expand=None) -> web.Response:
    return ls_server.json_response(obj._export(expand=expand))


async def _request_data(request: web.Request) -> dict:
    """Body and query parameters merged, decoded the way localstripe does."""
    data = dict(await ls_server.get_post_data(request) or {})
    data.update(ls_server.unflatten_data(request.query) or {})
    return data


# --------------------------------------------------------------------------
# Route table for our endpoints
# --------------------------------------------------------------------------

# aiohttp picks the first registered route matching a request, so routes added
# to localstripe's router after import could never replace its own handlers
# (e.g. POST /v1/setup_intents/{id}/confirm). Our routes therefore live in
# their own small router that a middleware consults before localstripe's.
_router = web.UrlDispatcher()


def _route(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _router.add_route(method, path, handler)
        return handler

    return register


# Pages a browser opens (hosted Checkout, customer portal, hosted invoices) need
# no API key. They are served by _router like our API routes (so the save-store
# middleware persists what they change); this second table only tells
# _auth_middleware which requests skip localstripe's key check.
_public_router = web.UrlDispatcher()


def _page_route(method: str, path: str) -> Callable[[Handler], Handler]:
    """Like :func:`_route`, for a page a browser opens without an API key."""

    def register(handler: Handler) -> Handler:
        _router.add_route(method, path, handler)
        _public_router.add_route(method, path, handler)
        return handler

    return register


class _PublicUrl:
    # --public-url: where browsers reach the emulator, when that is not the
    # address API clients use (a container name, a proxy...).
    configured: str | None = None
    fallback = "http://127.0.0.1:8420"


# The origin (scheme://host:port) of the request being handled.
_request_origin: ContextVar[str | None] = ContextVar("_request_origin", default=None)


def _public_url(path: str) -> str:
    """An absolute URL of one of our pages (``path`` starts with ``/``).

    Built from ``--public-url`` if given, else from the address the current
    request was sent to, so a link handed to an API client opens in a browser
    on the same machine.
    """
    base = _PublicUrl.configured or _request_origin.get() or _PublicUrl.fallback
    return base.rstrip("/") + path


@web.middleware
async def _auth_middleware(request: web.Request, handler):
    """localstripe's API key check, skipped for our public pages."""
    match = await _public_router.resolve(request)
    if match.http_exception is None:
        return await handler(request)
    return await ls_server.auth_middleware(request, handler)


async def _dispatch(request: web.Request) -> Handler | None:
    match = await _router.resolve(request)
    if match.http_exception is not None:
        return None
    params = dict(match)

    async def call(req: web.Request) -> web.StreamResponse:
        return await match.handler(req, **params)

    return call


@web.middleware
async def _extensions_middleware(request: web.Request, handler):
    _request_origin.set(str(request.url.origin()))
    ours = await _dispatch(request)
    if ours is not None:
        return await ours(request)
    return await handler(request)
