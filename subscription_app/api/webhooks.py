"""`POST /api/v1/webhooks/stripe`: verify, store, answer. Processing happens later.

Stripe may send bursts of events, and each must be stored before it is acknowledged. The
route therefore has a fast path: `dispatch_webhooks_first` hands this one path to a plain
ASGI endpoint ahead of the app's routing and middleware (it needs none of them but the
HTTPS rule and security headers, which it keeps), and events arriving together are stored
in one transaction (`billing.intake`). The FastAPI route below answers the same way through
the same `receive_event`; it documents the endpoint and serves the API app on its own.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from subscription_app import routes
from subscription_app.billing import intake, processor_process
from subscription_app.billing.webhooks import InvalidWebhook, verify
from subscription_app.security import SecurityMiddleware

router = APIRouter(tags=["webhooks"])
logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # Stripe events are a few KB; refuse anything absurd unread
WEBHOOK_PATH = f"{routes.API_PREFIX}/webhooks/stripe"
_TOO_LARGE = (413, {"detail": "Payload too large."})


async def receive_event(body: bytes | None, signature: str | None) -> tuple[int, dict]:
    """The whole intake: the status and JSON answer for one delivery.

    400 if unverifiable, 413 if too big (`body` None), 503 if it can't be stored; otherwise
    200 once the event is durably stored (a repeat delivery is acknowledged and ignored).
    """
    if body is None:
        return _TOO_LARGE
    try:
        event = verify(body, signature)
    except InvalidWebhook as exc:
        return 400, {"detail": exc.message}
    try:
        stored = await intake.store(event)
    except Exception:
        logger.exception("could not store webhook event %s", event.type)
        # Stripe retries on any non-2xx: nothing is lost while the database is down.
        return 503, {"detail": "Temporarily unable to store the event."}
    if stored:
        processor_process.wake()
    return 200, {"received": True, "duplicate": not stored}


def _declared_too_large(declared: str | None) -> bool:
    if declared is None:
        return False
    try:
        return int(declared) > MAX_BODY_BYTES
    except ValueError:
        return True


@router.post("/webhooks/stripe", include_in_schema=True)
async def stripe_webhook(request: Request) -> JSONResponse:
    """Receive a Stripe event: 400 if unverifiable, 413 if too big, 503 if it can't be stored.

    A verified event is stored (once: a repeat delivery is acknowledged and ignored) and
    answered 200 at once; the background processor applies it.
    """
    body: bytes | None = None
    if not _declared_too_large(request.headers.get("content-length")):
        collected = bytearray()
        async for chunk in request.stream():
            collected += chunk
            if len(collected) > MAX_BODY_BYTES:
                break
        body = bytes(collected) if len(collected) <= MAX_BODY_BYTES else None
    status, answer = await receive_event(body, request.headers.get("stripe-signature"))
    return JSONResponse(answer, status_code=status)


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


async def _read_body(scope: Scope, receive: Receive) -> bytes | None:
    """The request body, or None past MAX_BODY_BYTES (declared or sent)."""
    if _declared_too_large(_header(scope, b"content-length")):
        return None
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def webhook_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /api/v1/webhooks/stripe` as a plain ASGI app (see `dispatch_webhooks_first`)."""
    signature = _header(scope, b"stripe-signature")
    status, answer = await receive_event(await _read_body(scope, receive), signature)
    payload = json.dumps(answer, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def dispatch_webhooks_first(app: ASGIApp) -> ASGIApp:
    """Wrap the whole app so webhook deliveries skip its routing and middleware.

    Only `POST` to the webhook path takes the short way, still behind `SecurityMiddleware`
    (HTTPS-only in production, security headers); everything else, other methods on the
    same path included, goes to `app` unchanged.
    """
    fast = SecurityMiddleware(webhook_endpoint)

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == WEBHOOK_PATH
            and scope.get("method") == "POST"
        ):
            await fast(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch
