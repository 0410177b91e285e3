"""Webhook event handlers, one per event type, registered with `@handles(...)`.

Each handler runs inside the transaction that marks its event done, so an event's effects
are applied exactly once. Stripe is the source of truth: invoice events re-fetch the
subscription; subscription events carry it and are applied unless older than what we hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlmodel import Session

from subscription_app.billing import repository
from subscription_app.billing.client import get_client
from subscription_app.billing.inbox import ClaimedEvent
from subscription_app.billing.reader import read_invoice, read_subscription
from subscription_app.models import EventStatus, utcnow

PAYMENT_FAILED_TEXT = "Your last payment failed; Stripe will retry."
ACTION_REQUIRED_TEXT = (
    "Your bank asked you to confirm a payment. Check your email from Stripe to complete it."
)


@dataclass
class HandlerResult:
    """What a handler did: done or skipped (with why), and whose pages to refresh."""

    status: EventStatus = EventStatus.DONE
    note: str | None = None
    changed_users: set[int] = field(default_factory=set)


Handler = Callable[[Session, ClaimedEvent], HandlerResult]
_REGISTRY: dict[str, Handler] = {}


def handles(*event_types: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of these event types."""

    def register(handler: Handler) -> Handler:
        for event_type in event_types:
            if event_type in _REGISTRY:
                raise ValueError(f"two handlers for {event_type}")
            _REGISTRY[event_type] = handler
        return handler

    return register


def handled_types() -> list[str]:
    """Every event type with a handler."""
    return sorted(_REGISTRY)


def dispatch(session: Session, event: ClaimedEvent) -> HandlerResult:
    """Run the handler for `event.type`; unknown types are skipped and recorded."""
    handler = _REGISTRY.get(event.type)
    if handler is None:
        return HandlerResult(EventStatus.SKIPPED, f"no handler for {event.type}")
    return handler(session, event)


def _owner(session: Session, subscription_id: str | None, customer_id: str | None) -> int | None:
    # A subscription we never saw (made outside the app, or before our own write) is still
    # ours when its customer is: link it through the customer.
    if subscription_id:
        user_id = repository.user_id_for_subscription(session, subscription_id)
        if user_id is not None:
            return user_id
    if customer_id:
        return repository.user_id_for_customer(session, customer_id)
    return None


@handles(
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
)
def on_subscription_changed(session: Session, event: ClaimedEvent) -> HandlerResult:
    """Apply the subscription the event carries, unless we already hold newer state."""
    snapshot = read_subscription(event.payload["data"]["object"])
    user_id = _owner(session, snapshot.id, snapshot.customer_id)
    if user_id is None:
        return HandlerResult(EventStatus.SKIPPED, "customer is not linked to any user")
    changed = repository.apply_snapshot(
        session, user_id=user_id, snapshot=snapshot, observed_at=event.created
    )
    if not changed:
        return HandlerResult(note="older than the stored state; not applied")
    return HandlerResult(changed_users={user_id})


def _refresh_from_stripe(session: Session, event: ClaimedEvent) -> tuple[int | None, str | None]:
    invoice = read_invoice(event.payload["data"]["object"])
    if not invoice.subscription_id:
        return None, "invoice has no subscription"
    user_id = _owner(session, invoice.subscription_id, invoice.customer_id)
    if user_id is None:
        return None, "customer is not linked to any user"
    # The invoice does not carry the subscription's new state: read it from Stripe.
    current = get_client().v1.subscriptions.retrieve(invoice.subscription_id)
    repository.apply_snapshot(
        session, user_id=user_id, snapshot=read_subscription(current), observed_at=utcnow()
    )
    return user_id, None


@handles("invoice.paid")
def on_invoice_paid(session: Session, event: ClaimedEvent) -> HandlerResult:
    """A payment went through: the subscription is (again) active; refresh it."""
    user_id, why = _refresh_from_stripe(session, event)
    if user_id is None:
        return HandlerResult(EventStatus.SKIPPED, why)
    return HandlerResult(changed_users={user_id})


@handles("invoice.payment_failed")
def on_invoice_payment_failed(session: Session, event: ClaimedEvent) -> HandlerResult:
    """A payment failed: refresh the subscription (past_due) and tell the user.

    We rely on Stripe's Smart Retries and never retry charges ourselves.
    """
    user_id, why = _refresh_from_stripe(session, event)
    if user_id is None:
        return HandlerResult(EventStatus.SKIPPED, why)
    repository.add_notification(session, user_id, "payment_failed", PAYMENT_FAILED_TEXT)
    return HandlerResult(changed_users={user_id})


@handles("invoice.payment_action_required")
def on_invoice_action_required(session: Session, event: ClaimedEvent) -> HandlerResult:
    """The bank wants the customer to authenticate a payment: tell the user."""
    user_id, why = _refresh_from_stripe(session, event)
    if user_id is None:
        return HandlerResult(EventStatus.SKIPPED, why)
    repository.add_notification(session, user_id, "payment_action_required", ACTION_REQUIRED_TEXT)
    return HandlerResult(changed_users={user_id})
