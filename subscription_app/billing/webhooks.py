"""Webhook signature verification (the Stripe SDK's scheme) and event parsing."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import stripe

from subscription_app.settings import get_settings

# Stripe's own default: a signature older than five minutes is refused (replay protection).
SIGNATURE_TOLERANCE_SECONDS = 300


class InvalidWebhook(Exception):
    """The request is not a verifiable Stripe event; `message` says why (safe to return)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class VerifiedEvent:
    """A Stripe event whose signature checked out."""

    id: str
    type: str
    created: datetime
    livemode: bool
    raw: str  # the body exactly as received


def verify(payload: bytes, signature_header: str | None) -> VerifiedEvent:
    """Verify `Stripe-Signature` over the raw body and return the event.

    Raises:
        InvalidWebhook: missing, malformed, wrong, tampered or expired signature, or a body
            that is not a Stripe event.
    """
    secret = get_settings().stripe_webhook_secret
    if secret is None:
        raise InvalidWebhook("Webhook endpoint is not configured.")
    if not signature_header:
        raise InvalidWebhook("Missing Stripe-Signature header.")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidWebhook("Body is not UTF-8.") from exc
    try:
        stripe.WebhookSignature.verify_header(
            text, signature_header, secret.get_secret_value(), SIGNATURE_TOLERANCE_SECONDS
        )
    except (stripe.SignatureVerificationError, TypeError, ValueError) as exc:
        # The SDK raises TypeError for a signature that is not ASCII (it compares with
        # `hmac.compare_digest`): anyone can send one, so it is a bad signature, not a crash.
        raise InvalidWebhook("Invalid Stripe-Signature.") from exc
    try:
        data = json.loads(text)
        event_id, event_type = data["id"], data["type"]
        created = datetime.fromtimestamp(int(data["created"]), tz=UTC)
    except (ValueError, KeyError, TypeError, OverflowError, OSError) as exc:
        # OverflowError, OSError: a `created` no date can hold (1e400, 10**20).
        raise InvalidWebhook("Body is not a Stripe event.") from exc
    if not (isinstance(event_id, str) and event_id and len(event_id) <= 255):
        raise InvalidWebhook("Body is not a Stripe event.")
    if not (isinstance(event_type, str) and event_type and len(event_type) <= 255):
        raise InvalidWebhook("Body is not a Stripe event.")
    return VerifiedEvent(
        id=event_id,
        type=event_type,
        created=created,
        livemode=bool(data.get("livemode")),
        raw=text,
    )


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header for `payload` (tests and benchmarks build events with it)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", secret)
    return f"t={timestamp},v1={signature}"
