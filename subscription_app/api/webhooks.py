"""`POST /api/v1/webhooks/stripe`: verify, store, answer. Processing happens later."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from subscription_app import changes
from subscription_app.billing import inbox
from subscription_app.billing.webhooks import InvalidWebhook, verify
from subscription_app.db import session_scope

router = APIRouter(tags=["webhooks"])
logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # Stripe events are a few KB; refuse anything absurd unread


async def _read_limited(request: Request) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > MAX_BODY_BYTES:
                return None
        except ValueError:
            return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def _store(event) -> bool:
    with session_scope() as session:
        return inbox.store(session, event)


@router.post("/webhooks/stripe", include_in_schema=True)
async def stripe_webhook(request: Request) -> JSONResponse:
    """Receive a Stripe event: 400 if unverifiable, 413 if too big, 503 if it can't be stored.

    A verified event is stored (once: a repeat delivery is acknowledged and ignored) and
    answered 200 at once; the background processor applies it.
    """
    body = await _read_limited(request)
    if body is None:
        return JSONResponse({"detail": "Payload too large."}, status_code=413)
    try:
        event = verify(body, request.headers.get("stripe-signature"))
    except InvalidWebhook as exc:
        return JSONResponse({"detail": exc.message}, status_code=400)
    try:
        # Blocking database work off the event loop.
        stored = await asyncio.to_thread(_store, event)
    except Exception:
        logger.exception("could not store webhook event %s", event.type)
        # Stripe retries on any non-2xx: nothing is lost while the database is down.
        return JSONResponse({"detail": "Temporarily unable to store the event."}, status_code=503)
    if stored:
        changes.processor_wakeup().set()
    return JSONResponse({"received": True, "duplicate": not stored})
