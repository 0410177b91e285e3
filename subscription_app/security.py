"""HTTPS-only and security headers, as one ASGI middleware around the whole backend.

- In production a plain-HTTP request is redirected to HTTPS (GET/HEAD) or refused (any other
  method, the webhook route included); plain `ws://` connections are refused.
- The request's scheme is the connection's own, or `X-Forwarded-Proto` when (and only when)
  the peer is one of TRUSTED_PROXIES.
- Every response carries CSP (our origin plus Stripe.js), nosniff, a referrer policy and
  frame-ancestors 'none'; in production over HTTPS also HSTS.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from subscription_app import routes
from subscription_app.settings import Settings, get_settings

HSTS = "max-age=63072000; includeSubDomains"
# The frontend's build names each file after its content ("root-ClBo06lq.js"), so a file
# never changes under its name: browsers may keep it instead of asking again (a conditional
# request per file) on every page load. Pages themselves and our own assets are not matched
# (checkout.js only at its versioned address, `routes.CHECKOUT_SCRIPT_URL`).
HASHED_BUILD_FILE = re.compile(r"/assets/[^/]+-[A-Za-z0-9_-]{8}\.(?:js|css|woff2?)")
IMMUTABLE = "public, max-age=31536000, immutable"


def _immutable(scope: Scope) -> bool:
    """Whether the file asked for never changes under this address (see HASHED_BUILD_FILE)."""
    path = scope.get("path", "")
    if path == routes.CHECKOUT_SCRIPT:
        # Only at the address naming today's content: an old or made-up version is served
        # today's file, which must not be kept under that address.
        version = routes.CHECKOUT_SCRIPT_VERSION
        return bool(version) and scope.get("query_string", b"") == f"v={version}".encode()
    return HASHED_BUILD_FILE.fullmatch(path) is not None


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def allowed_origins(settings: Settings) -> list[str]:
    """Origins allowed to call the backend from a browser (CORS and the websocket).

    Only the app's own origin (`APP_URL`), spelled as browsers send it (lower-case host, no
    default port). In development also the same port under the other loopback names, so
    `make run` works at http://127.0.0.1:3000 as at localhost. Never empty: an empty list
    would mean "any origin" to the websocket server.
    """
    parts = urlsplit(settings.app_url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = (
        parts.port if parts.port and parts.port != {"http": 80, "https": 443}.get(scheme) else None
    )

    def origin(name: str) -> str:
        name = f"[{name}]" if ":" in name else name
        return f"{scheme}://{name}{f':{port}' if port else ''}"

    origins = [origin(host)]
    if not settings.is_production and host in ("localhost", "127.0.0.1", "::1"):
        origins += [origin(alias) for alias in ("localhost", "127.0.0.1", "::1") if alias != host]
    return origins


@lru_cache(maxsize=4)
def content_security_policy(js_url: str, api_base: str | None) -> str:
    """CSP allowing our own origin and Stripe.js (and the API Stripe.js talks to)."""
    js_origin = _origin(js_url) or "https://js.stripe.com"
    api_origin = _origin(api_base) or "https://api.stripe.com"
    stripe_frames = "https://js.stripe.com https://hooks.stripe.com"
    return "; ".join(
        [
            "default-src 'self'",
            # Reflex's compiled pages use inline bootstrapping and evaluate scripts it sends.
            f"script-src 'self' 'unsafe-inline' 'unsafe-eval' {js_origin}",
            f"connect-src 'self' ws: wss: {api_origin} {js_origin}",
            f"frame-src {js_origin} {stripe_frames}",
            f"img-src 'self' data: {js_origin}",
            "style-src 'self' 'unsafe-inline'",
            "font-src 'self' data:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


@lru_cache(maxsize=8)
def security_headers(
    js_url: str, api_base: str | None, hsts: bool
) -> tuple[tuple[bytes, bytes], ...]:
    """The headers every response carries (raw, as ASGI sends them); HSTS when `hsts`."""
    headers = [
        ("content-security-policy", content_security_policy(js_url, api_base)),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        ("x-frame-options", "DENY"),
    ]
    if hsts:
        headers.append(("strict-transport-security", HSTS))
    return tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in headers)


@lru_cache(maxsize=4)
def _trusted_networks(raw: str) -> tuple:
    networks = []
    for part in (p.strip() for p in raw.split(",")):
        if part:
            networks.append(ipaddress.ip_network(part, strict=False))
    return tuple(networks)


def is_trusted_proxy(peer: str | None, settings: Settings) -> bool:
    """True when `peer` (the TCP client address) is a configured trusted proxy."""
    if not peer or not settings.trusted_proxies:
        return False
    if len(peer) > MAX_ADDRESS_LENGTH:  # not an address; and never kept (see below)
        return False
    return _peer_trusted(peer, settings.trusted_proxies)


# The longest textual IP address (IPv6 with an embedded IPv4 and a zone would be longer, but
# neither is a peer or a forwarded hop we would trust).
MAX_ADDRESS_LENGTH = 45


# Every request asks this once or twice, and parsing an address costs more than the rest of
# the middleware: the answers for recent peers (a few proxies, in production) are kept. The
# hops of X-Forwarded-For are the client's to choose: at most 1024 short strings are kept.
@lru_cache(maxsize=1024)
def _peer_trusted(peer: str, raw: str) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in _trusted_networks(raw))


def forwarded_client(peer: str | None, forwarded_for: str | None, settings: Settings) -> str | None:
    """The client's address behind trusted proxies: the rightmost untrusted `X-Forwarded-For` hop.

    Each proxy appends the address it received from, so only hops added by our own proxies can
    be believed; anything further left was written by the client and may be forged.
    """
    if not is_trusted_proxy(peer, settings) or not forwarded_for:
        return peer
    hops = [_without_port(hop.strip()) for hop in forwarded_for.split(",") if hop.strip()]
    while hops:
        hop = hops.pop()
        if not hops or not is_trusted_proxy(hop, settings):
            return hop
    return peer


def _without_port(hop: str) -> str:
    """A hop as an address: "203.0.113.9:41234" and "[2001:db8::1]:443" lose their port (some
    proxies send one), so one client is one address, not one per connection."""
    if hop.startswith("["):
        end = hop.find("]")
        return hop[1:end] if end > 0 else hop
    if hop.count(":") == 1:  # an IPv4 address (or name) and a port; IPv6 has more colons
        return hop.split(":", 1)[0]
    return hop


def header_list(scope: Scope, name: str) -> str | None:
    """Every line of header `name`, in order, as one comma-separated list (HTTP's rule for
    list-valued headers): a proxy that adds its own line instead of extending the client's
    (HAProxy's `option forwardfor`) must be read after it, not behind it."""
    values = Headers(scope=scope).getlist(name)
    return ", ".join(values) if values else None


def request_scheme(scope: Scope, settings: Settings) -> str:
    """The scheme the client used: ours, or the trusted proxy's word for it.

    The proxy's word is the last entry: a proxy that appends rather than sets the header
    leaves the client's own (forgeable) entries in front of it.
    """
    scheme: str = scope.get("scheme", "http")
    client = scope.get("client")
    if is_trusted_proxy(client[0] if client else None, settings):
        forwarded = header_list(scope, "x-forwarded-proto")
        entries = [entry.strip().lower() for entry in (forwarded or "").split(",")]
        if entries[-1]:
            scheme = entries[-1]
    if scope["type"] == "websocket":
        return {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return scheme


class SecurityMiddleware:
    """HTTPS-only in production, and security headers everywhere."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        secure = request_scheme(scope, settings) == "https"
        client = scope.get("client")
        if is_trusted_proxy(client[0] if client else None, settings):
            # Like uvicorn's proxy-headers middleware: the app sees the client's scheme and
            # address, so the URLs it builds (redirects) are https and limits hit the client.
            scope = dict(scope)
            if scope["type"] == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = "https" if secure else "http"
            forwarded_for = header_list(scope, "x-forwarded-for")
            if forwarded_for:
                peer = client[0] if client else None
                scope["client"] = (forwarded_client(peer, forwarded_for, settings), 0)
        if settings.is_production and not secure:
            await self._refuse_plain(scope, receive, send, settings)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        extra = security_headers(
            settings.stripe_js_url, settings.stripe_api_base, settings.is_production and secure
        )
        immutable = _immutable(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
                present = {name.lower() for name, _ in raw}
                raw.extend(header for header in extra if header[0] not in present)
                message = {**message, "headers": raw}
                if immutable and message["status"] == 200:
                    MutableHeaders(scope=message)["cache-control"] = IMMUTABLE
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refuse_plain(self, scope, receive, send, settings: Settings) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["method"] in ("GET", "HEAD"):
            # Redirect to our configured public origin, never to a client-chosen Host.
            target = _origin(settings.app_url) + scope.get("path", "/")
            if scope.get("query_string"):
                target += "?" + scope["query_string"].decode("latin-1")
            response: Response = RedirectResponse(target, status_code=308)
        else:
            response = PlainTextResponse(
                "HTTPS is required. Send this request to the https:// address.", status_code=403
            )
        await response(scope, receive, send)
