"""Billing services: the functions the Reflex states and the REST routes call.

Each takes keyword arguments and a database session, talks to Stripe through the one
configured client, and records what Stripe answered. Errors a user can act on are raised as
`BillingError` with a message fit to show them; nothing raised here carries a Stripe secret
or another user's data.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Literal

import stripe
from sqlmodel import Session

from subscription_app.billing import catalog, repository
from subscription_app.billing.client import get_client
from subscription_app.billing.reader import (
    SubscriptionSnapshot,
    read_payment_intent,
    read_subscription,
)
from subscription_app.billing.repository import SubscriptionView
from subscription_app.models import User, utcnow
from subscription_app.settings import get_settings

logger = logging.getLogger(__name__)

PAYMENT_METHOD_ID = re.compile(r"^pm_[A-Za-z0-9_]{1,200}$")
# Expansions of the subscription's first invoice, in today's API shape.
SUBSCRIPTION_EXPAND = ["latest_invoice.confirmation_secret", "latest_invoice.payments"]

MESSAGES = {
    "card_declined": "Your card was declined. Try another card.",
    "generic_decline": "Your card was declined. Try another card.",
    "insufficient_funds": "Your card has insufficient funds. Try another card.",
    "expired_card": "Your card has expired. Try another card.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "invalid_cvc": "Your card's security code is incorrect.",
    "incorrect_number": "Your card number is incorrect.",
    "invalid_number": "Your card number is incorrect.",
    "invalid_expiry_month": "Your card's expiration date is incorrect.",
    "invalid_expiry_year": "Your card's expiration date is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again.",
    "authentication_required": "Your bank asked for authentication, which did not complete.",
    "payment_intent_authentication_failure": (
        "Card authentication failed. Your subscription was not started."
    ),
}
UNAVAILABLE = (
    "We could not reach our payment provider. Nothing was charged; please try again in a minute."
)
AUTHENTICATION_FAILED = "Card authentication failed. Your subscription was not started."


class BillingError(Exception):
    """A billing problem with a message fit for the user.

    `kind` tells the REST layer which status to answer: invalid (422), forbidden (403),
    conflict (409), card (402), unavailable (424).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: Literal["invalid", "forbidden", "conflict", "card", "unavailable"] = "invalid",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class AlreadySubscribed(BillingError):
    """The user already has a live subscription."""

    def __init__(self) -> None:
        super().__init__(
            "You already have an active subscription. See your dashboard.", kind="conflict"
        )


@dataclass(frozen=True)
class SubscribeResult:
    """Outcome of a subscribe attempt.

    `status` is "active" (done), "requires_action" with `client_secret` for the browser's
    `confirmCardPayment` (3-D Secure), after which `confirm_subscription` gives the answer, or
    "processing" (the payment went through; Stripe's webhook will activate it shortly).
    Failures are raised as `BillingError`.
    """

    status: Literal["active", "requires_action", "processing"]
    subscription: SubscriptionView | None
    client_secret: str | None = None


def _card_message(code: str | None, fallback: str | None) -> str:
    if code and code in MESSAGES:
        return MESSAGES[code]
    return fallback or MESSAGES["card_declined"]


def _translate(exc: stripe.StripeError) -> BillingError:
    """Turn a Stripe error into one a user may read (and log what they may not)."""
    if isinstance(exc, stripe.CardError):
        error = exc.error
        code = getattr(error, "decline_code", None) or exc.code
        return BillingError(_card_message(code, exc.user_message), kind="card")
    if isinstance(exc, stripe.InvalidRequestError) and exc.code == "resource_missing":
        return BillingError("That payment method was not found.", kind="invalid")
    logger.error("Stripe call failed: %s (%s)", type(exc).__name__, exc.code or "no code")
    if isinstance(exc, stripe.InvalidRequestError):
        return BillingError("The payment details were not accepted. Please try again.")
    return BillingError(UNAVAILABLE, kind="unavailable")


def validate_payment_method_id(payment_method_id: object) -> str:
    """Check the form of a payment method id (`pm_...`)."""
    if not isinstance(payment_method_id, str) or not PAYMENT_METHOD_ID.match(payment_method_id):
        raise BillingError(
            "payment_method_id must be a Stripe payment method id (pm_...).", kind="invalid"
        )
    return payment_method_id


def ensure_customer(*, session: Session, user: User, client: stripe.StripeClient | None = None):
    """The user's Stripe customer id, creating the customer on first use.

    The idempotency key makes a concurrent or retried first call create one customer only.
    """
    existing = repository.customer_id_for_user(session, user.id)
    if existing:
        return existing
    client = client or get_client()
    try:
        customer = client.v1.customers.create(
            params={"email": user.email, "metadata": {"user_id": str(user.id)}},
            # Unique per account even if a database is reset and ids are reused.
            options={"idempotency_key": f"customer-{user.id}-{user.created_at.timestamp():.6f}"},
        )
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return repository.save_customer(session, user.id, customer.id)


def create_setup_intent(*, session: Session, user: User) -> str:
    """A SetupIntent for the user's customer; returns its client secret for Stripe.js."""
    customer_id = ensure_customer(session=session, user=user)
    try:
        intent = get_client().v1.setup_intents.create(
            params={
                "customer": customer_id,
                "usage": "off_session",
                "payment_method_types": ["card"],
            }
        )
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return intent.client_secret


def get_subscription(*, session: Session, user: User) -> SubscriptionView | None:
    """The user's current subscription (live first), or None."""
    return repository.current_subscription(session, user.id)


def _record(session: Session, user: User, snapshot: SubscriptionSnapshot) -> SubscriptionView:
    repository.apply_snapshot(session, user_id=user.id, snapshot=snapshot, observed_at=utcnow())
    session.commit()
    return repository.current_subscription(session, user.id)


def _payment_of(client: stripe.StripeClient, snapshot: SubscriptionSnapshot):
    payment = snapshot.payment
    if payment and payment.payment_intent_id and payment.status is None:
        # Today's API names the PaymentIntent on the invoice; its status needs a read.
        intent = client.v1.payment_intents.retrieve(payment.payment_intent_id)
        return read_payment_intent(intent)
    return payment


def _abandon(client: stripe.StripeClient, session: Session, snapshot: SubscriptionSnapshot):
    """Cancel an incomplete subscription whose first payment failed: nothing half-made."""
    try:
        client.v1.subscriptions.cancel(snapshot.id)
    except stripe.StripeError:
        # Stripe expires incomplete subscriptions by itself after 23 hours anyway.
        logger.warning("could not cancel an incomplete subscription; Stripe will expire it")
    repository.delete_subscription(session, snapshot.id)
    session.commit()


def _outcome(
    client: stripe.StripeClient, session: Session, user: User, snapshot: SubscriptionSnapshot
) -> SubscribeResult:
    if snapshot.status in ("active", "trialing"):
        return SubscribeResult(status="active", subscription=_record(session, user, snapshot))
    if snapshot.status == "incomplete":
        payment = _payment_of(client, snapshot)
        if payment and payment.status in ("requires_action", "requires_confirmation"):
            _record(session, user, snapshot)
            return SubscribeResult(
                status="requires_action",
                subscription=None,
                client_secret=payment.client_secret,
            )
        if payment and payment.status in ("processing", "succeeded"):
            return SubscribeResult(
                status="processing", subscription=_record(session, user, snapshot)
            )
        _abandon(client, session, snapshot)
        raise BillingError(
            _card_message(payment.error_code if payment else None, None), kind="card"
        )
    # incomplete_expired, canceled, ...: the attempt did not produce a subscription.
    repository.delete_subscription(session, snapshot.id)
    session.commit()
    raise BillingError("Your subscription could not be started. Please try again.", kind="card")


def start_subscription(*, session: Session, user: User, payment_method_id: str) -> SubscribeResult:
    """Subscribe `user` to the default plan, paying with `payment_method_id`.

    Steps: refuse a second live subscription; ensure the customer; check the payment method
    belongs to that customer (or attach it); make it the invoice default; create the
    subscription with an idempotency key derived from user and payment method (a retry or a
    double click returns the same subscription); record Stripe's answer at once.
    """
    validate_payment_method_id(payment_method_id)
    if repository.live_subscription_id(session, user.id):
        raise AlreadySubscribed()
    client = get_client()
    customer_id = ensure_customer(session=session, user=user, client=client)
    session.commit()
    try:
        payment_method = client.v1.payment_methods.retrieve(payment_method_id)
        owner = payment_method.customer
        owner_id = owner if isinstance(owner, str) or owner is None else owner.id
        if owner_id is None:
            client.v1.payment_methods.attach(payment_method_id, params={"customer": customer_id})
        elif owner_id != customer_id:
            # Someone else's card: answer exactly as for an unknown one (no probing).
            raise BillingError("That payment method was not found.", kind="invalid")
        client.v1.customers.update(
            customer_id,
            params={"invoice_settings": {"default_payment_method": payment_method_id}},
        )
        key_material = f"subscribe:{user.id}:{payment_method_id}".encode()
        created = client.v1.subscriptions.create(
            params={
                "customer": customer_id,
                "items": [{"price": catalog.resolve_price_id(client=client)}],
                "default_payment_method": payment_method_id,
                "payment_behavior": "allow_incomplete",
                "metadata": {"user_id": str(user.id)},
                "expand": SUBSCRIPTION_EXPAND,
            },
            options={"idempotency_key": hashlib.sha256(key_material).hexdigest()},
        )
        return _outcome(client, session, user, read_subscription(created))
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def confirm_subscription(*, session: Session, user: User) -> SubscribeResult:
    """After the browser finished 3-D Secure: re-read the subscription and settle it."""
    view = repository.current_subscription(session, user.id)
    subscription_id = repository.latest_subscription_id(session, user.id)
    if view is None or subscription_id is None or view.status not in ("incomplete", "active"):
        # Only an attempt in progress (or one that already went through) is ours to settle.
        raise BillingError("There is no subscription waiting for confirmation.", kind="conflict")
    client = get_client()
    try:
        current = client.v1.subscriptions.retrieve(
            subscription_id, params={"expand": SUBSCRIPTION_EXPAND}
        )
        snapshot = read_subscription(current)
        if snapshot.status in ("active", "trialing"):
            return _outcome(client, session, user, snapshot)
        if snapshot.status == "incomplete":
            payment = _payment_of(client, snapshot)
            if payment and payment.status in ("processing", "succeeded"):
                return _outcome(client, session, user, snapshot)
        # Authentication failed or was abandoned: undo the attempt, whatever state it left.
        if snapshot.status == "incomplete":
            _abandon(client, session, snapshot)
        else:
            repository.delete_subscription(session, snapshot.id)
            session.commit()
        raise BillingError(AUTHENTICATION_FAILED, kind="card")
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


@dataclass(frozen=True)
class CancelResult:
    """The subscription after a cancel or resume, and a sentence saying what happened."""

    subscription: SubscriptionView
    message: str


def _long_date(value) -> str:
    return f"{value:%B} {value.day}, {value.year}" if value else "the end of the period"


def cancel_subscription(*, session: Session, user: User, at_period_end: bool) -> CancelResult:
    """Cancel the user's live subscription, now or at the end of the paid period.

    Raises:
        BillingError: (conflict) no live subscription, or already set to end at period end.
    """
    from subscription_app.notify import tell_user

    subscription_id = repository.live_subscription_id(session, user.id)
    view = repository.current_subscription(session, user.id)
    if subscription_id is None or view is None:
        raise BillingError("You have no active subscription to cancel.", kind="conflict")
    if at_period_end and view.cancel_at_period_end:
        raise BillingError(
            f"Your subscription is already set to end on {_long_date(view.current_period_end)}.",
            kind="conflict",
        )
    client = get_client()
    try:
        if at_period_end:
            updated = client.v1.subscriptions.update(
                subscription_id, params={"cancel_at_period_end": True}
            )
        else:
            updated = client.v1.subscriptions.cancel(subscription_id)
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    snapshot = read_subscription(updated)
    repository.apply_snapshot(session, user_id=user.id, snapshot=snapshot, observed_at=utcnow())
    if at_period_end:
        message = (
            "Your subscription is cancelled. You keep access until "
            f"{_long_date(snapshot.current_period_end)}."
        )
    else:
        message = "Your subscription is cancelled and has ended."
    tell_user(session, user_id=user.id, email=user.email, kind="canceled", text=message)
    session.commit()
    return CancelResult(repository.current_subscription(session, user.id), message)


def resume_subscription(*, session: Session, user: User) -> CancelResult:
    """Undo a cancellation at period end (before the period ends).

    Raises:
        BillingError: (conflict) nothing to undo.
    """
    from subscription_app.notify import tell_user

    subscription_id = repository.live_subscription_id(session, user.id)
    view = repository.current_subscription(session, user.id)
    if subscription_id is None or view is None or not view.cancel_at_period_end:
        raise BillingError(
            "Your subscription is not set to end, so there is nothing to undo.", kind="conflict"
        )
    try:
        updated = get_client().v1.subscriptions.update(
            subscription_id, params={"cancel_at_period_end": False}
        )
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    repository.apply_snapshot(
        session, user_id=user.id, snapshot=read_subscription(updated), observed_at=utcnow()
    )
    message = "Your subscription will renew as usual."
    tell_user(session, user_id=user.id, email=user.email, kind="resumed", text=message)
    session.commit()
    return CancelResult(repository.current_subscription(session, user.id), message)


def publishable_config() -> dict[str, str]:
    """What the browser needs to load Stripe.js: the publishable key and the script URL."""
    settings = get_settings()
    return {
        "publishable_key": settings.stripe_publishable_key or "",
        "js_url": settings.stripe_js_url,
    }
