"""Read Stripe objects (any API version, real Stripe or the emulator) into our dataclasses.

Nothing else in the app reads raw Stripe payloads. Shapes differ between API versions:
- `current_period_start/end` moved from the subscription to its items (2025-03-31 onwards);
- the first invoice's payment moved from `invoice.payment_intent` to
  `invoice.payments.data[].payment.payment_intent` and `invoice.confirmation_secret`.
Every accessor here accepts both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Written into the metadata of what our app makes at Stripe (our plan's product, the
# subscriptions our form and our Checkout pages make, our card forms' SetupIntents), so a
# webhook about one tells it apart from what the merchant or the portal made.
APP_METADATA = {"app": "subscription_app"}


def made_by_us(obj: Any) -> bool:
    """Whether a Stripe object carries our `APP_METADATA`."""
    metadata = _to_dict(obj).get("metadata") or {}
    return isinstance(metadata, dict) and all(
        metadata.get(key) == value for key, value in APP_METADATA.items()
    )


def _to_dict(obj: Any) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return dict(obj)


def _ts(value: Any) -> datetime | None:
    if value in (None, "", 0):
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def _id(value: Any) -> str | None:
    """An expandable field: either an id string or an expanded object with `id`."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return _to_dict(value).get("id")


@dataclass(frozen=True)
class PaymentInfo:
    """The payment of a subscription's first (latest) invoice, as far as we need it."""

    payment_intent_id: str | None
    status: str | None  # PaymentIntent status when known (requires_action, succeeded, ...)
    client_secret: str | None  # for confirmCardPayment in the browser
    error_message: str | None  # last payment error, fit for the user
    error_code: str | None


@dataclass(frozen=True)
class SubscriptionSnapshot:
    """A subscription as Stripe reported it at one moment."""

    id: str
    customer_id: str
    status: str
    price_id: str | None
    started_at: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    ended_at: datetime | None
    cancel_at: datetime | None
    latest_invoice_id: str | None
    payment: PaymentInfo | None
    # Made by our own form or Checkout page for our plan (`APP_METADATA`): ours whatever its
    # price is now, on every path that first records it (webhook, return page, resync).
    made_for_our_plan: bool = False
    # Past due only: whether Stripe will try its open latest invoice again (None: not past
    # due, or not known). Not part of the subscription object: `sync` reads the invoice.
    payment_retrying: bool | None = None


def read_payment_intent(obj: Any) -> PaymentInfo:
    """A PaymentIntent (object or dict) as `PaymentInfo`."""
    data = _to_dict(obj)
    error = data.get("last_payment_error") or {}
    return PaymentInfo(
        payment_intent_id=data.get("id"),
        status=data.get("status"),
        client_secret=data.get("client_secret"),
        error_message=error.get("message"),
        error_code=error.get("decline_code") or error.get("code"),
    )


def read_invoice_payment(invoice: Any) -> PaymentInfo | None:
    """The payment behind an (expanded) invoice, in either API shape; None if not expanded."""
    data = _to_dict(invoice)
    if not data:
        return None
    # Older API versions (and the emulator): invoice.payment_intent.
    legacy = data.get("payment_intent")
    if isinstance(legacy, dict) or (legacy is not None and not isinstance(legacy, str)):
        return read_payment_intent(legacy)
    pi_id = legacy if isinstance(legacy, str) else None
    # Current API versions: invoice.payments.data[].payment.payment_intent.
    for entry in (data.get("payments") or {}).get("data") or []:
        payment = (entry or {}).get("payment") or {}
        intent = payment.get("payment_intent")
        if isinstance(intent, dict):
            return read_payment_intent(intent)
        pi_id = pi_id or intent
    secret = (data.get("confirmation_secret") or {}).get("client_secret")
    if pi_id is None and secret is None:
        return None
    return PaymentInfo(
        payment_intent_id=pi_id,
        status=None,
        client_secret=secret,
        error_message=None,
        error_code=None,
    )


def read_subscription(obj: Any) -> SubscriptionSnapshot:
    """A Stripe subscription (object or dict, any API version) as a snapshot."""
    data = _to_dict(obj)
    items = (data.get("items") or {}).get("data") or []
    first_item = items[0] if items else {}
    price = first_item.get("price") or {}
    plan = first_item.get("plan") or data.get("plan") or {}
    price_id = _id(price) or _id(plan)
    period_end = first_item.get("current_period_end") or data.get("current_period_end")
    latest_invoice = data.get("latest_invoice")
    return SubscriptionSnapshot(
        id=data["id"],
        customer_id=_id(data.get("customer")) or "",
        status=data.get("status") or "incomplete",
        price_id=price_id,
        started_at=_ts(data.get("start_date") or data.get("created")),
        current_period_end=_ts(period_end),
        cancel_at_period_end=bool(data.get("cancel_at_period_end")),
        canceled_at=_ts(data.get("canceled_at")),
        ended_at=_ts(data.get("ended_at")),
        cancel_at=_ts(data.get("cancel_at")),
        latest_invoice_id=_id(latest_invoice),
        payment=(
            read_invoice_payment(latest_invoice)
            if latest_invoice is not None and not isinstance(latest_invoice, str)
            else None
        ),
        made_for_our_plan=made_by_us(data),
    )


@dataclass(frozen=True)
class InvoiceSnapshot:
    """The parts of an invoice the webhook handlers need."""

    id: str
    customer_id: str | None
    subscription_id: str | None
    status: str | None
    # Why Stripe made it: "subscription_create" for a subscription's first invoice (its
    # sign-up payment), "subscription_cycle" for a renewal, ...
    billing_reason: str | None = None
    # When Stripe will next try to collect it (Smart Retries); None once it will not.
    next_payment_attempt: datetime | None = None


def read_invoice(obj: Any) -> InvoiceSnapshot:
    """An invoice (any API version) as a snapshot.

    The subscription is `invoice.subscription` in older versions and
    `invoice.parent.subscription_details.subscription` in current ones.
    """
    data = _to_dict(obj)
    parent = (data.get("parent") or {}).get("subscription_details") or {}
    return InvoiceSnapshot(
        id=data.get("id") or "",
        customer_id=_id(data.get("customer")),
        subscription_id=_id(parent.get("subscription")) or _id(data.get("subscription")),
        status=data.get("status"),
        billing_reason=data.get("billing_reason"),
        next_payment_attempt=_ts(data.get("next_payment_attempt")),
    )


@dataclass(frozen=True)
class CheckoutSnapshot:
    """A Checkout Session, as far as fulfilling it needs."""

    id: str
    mode: str | None
    status: str | None  # open, complete, expired
    customer_id: str | None
    client_reference_id: str | None
    subscription_id: str | None
    url: str | None
    # The price we opened it for (its `metadata.price`; None on pages made before we noted it).
    price_id: str | None = None


def read_checkout_session(obj: Any) -> CheckoutSnapshot:
    """A Checkout Session (its `subscription` may be an id or expanded)."""
    data = _to_dict(obj)
    return CheckoutSnapshot(
        id=data.get("id") or "",
        mode=data.get("mode"),
        status=data.get("status"),
        customer_id=_id(data.get("customer")),
        client_reference_id=data.get("client_reference_id"),
        subscription_id=_id(data.get("subscription")),
        url=data.get("url"),
        price_id=(data.get("metadata") or {}).get("price"),
    )


@dataclass(frozen=True)
class InvoiceRecord:
    """An invoice as the invoice history shows it."""

    number: str | None
    created: datetime | None
    amount_paid: int
    amount_due: int
    currency: str
    status: str | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None


def read_invoice_record(obj: Any) -> InvoiceRecord:
    """An invoice (any API version) for the history table."""
    data = _to_dict(obj)
    return InvoiceRecord(
        number=data.get("number"),
        created=_ts(data.get("created")),
        amount_paid=int(data.get("amount_paid") or 0),
        amount_due=int(data.get("amount_due") or 0),
        currency=str(data.get("currency") or "usd"),
        status=data.get("status"),
        hosted_invoice_url=data.get("hosted_invoice_url"),
        invoice_pdf=data.get("invoice_pdf"),
    )
