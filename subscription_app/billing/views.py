"""What people see of a subscription: the one mapping from our rows to pages and the API.

`view_of` turns a stored row into a `SubscriptionView`. The REST API serializes its fields
(`api/subscriptions.py` validates the model from its attributes); the dashboard shows its
display strings. Dates are formatted here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from subscription_app.billing.plans import DEFAULT_PLAN
from subscription_app.billing.reader import InvoiceRecord
from subscription_app.models import Subscription, SubscriptionStatus

STATUS_LABELS = {
    "active": "Active",
    "trialing": "Trial",
    "past_due": "Past due",
    "unpaid": "Unpaid",
    "paused": "Paused",
    "incomplete": "Awaiting payment",
    "incomplete_expired": "Expired",
    "canceled": "Canceled",
}
PERIOD_END_FALLBACK = "the end of the period"
# What a person owing a payment is told (the dashboard's warning, and messages).
PAYMENT_FAILED_TEXT = "Your last payment failed; Stripe will retry."
# Stripe will not try again (its retries are used up, or the merchant collects by hand).
PAYMENT_FAILED_FINAL_TEXT = (
    "Your last payment failed, and Stripe will not retry it. "
    "Please update your card in Manage billing."
)
# Stripe marks a subscription unpaid once its retries are used up: it tries no more.
UNPAID_TEXT = (
    "Your payment is overdue, and Stripe will not retry it. "
    "Please update your card in Manage billing."
)
PAYMENT_WARNINGS = {"past_due": PAYMENT_FAILED_TEXT, "unpaid": UNPAID_TEXT}


def format_date(value: datetime | None, missing: str = "") -> str:
    """A date as people read it, e.g. "November 22, 2026" (UTC); `missing` when None."""
    return f"{value:%B} {value.day}, {value.year}" if value else missing


def status_label(status: str) -> str:
    """A Stripe status in words, e.g. "past_due" → "Past due"."""
    return STATUS_LABELS.get(status, status.replace("_", " ").capitalize())


@dataclass(frozen=True)
class SubscriptionView:
    """A subscription as pages and API clients see it (no Stripe ids, nothing secret)."""

    status: str = ""
    started_at: datetime | None = None
    current_period_end: datetime | None = None
    # Set to end: at the period's end (`cancel_at_period_end` in Stripe) or at `cancel_at`
    # (what the customer portal sets in flexible billing mode). Either way it ends then.
    cancel_at_period_end: bool = False
    cancel_at: datetime | None = None
    canceled_at: datetime | None = None
    ended_at: datetime | None = None
    plan: str = DEFAULT_PLAN.name
    price: str = DEFAULT_PLAN.price_label
    amount_cents: int = DEFAULT_PLAN.amount_cents
    currency: str = DEFAULT_PLAN.currency
    interval: str = DEFAULT_PLAN.interval
    # Display strings, derived from the fields above by `view_of`.
    status_label: str = ""
    started_on: str = ""
    renews_on: str = ""  # the next renewal, or the day it ends if it is set to end
    canceled_on: str = ""
    is_live: bool = False
    past_due: bool = False
    # The dashboard's warning about a payment owed ("" when none).
    payment_warning: str = ""
    # Set to end through `cancel_at` only: undoing it unsets that (`resume_subscription`).
    ends_by_cancel_at: bool = False


def view_of(row: Subscription) -> SubscriptionView:
    """The one mapping of a stored subscription to what people see."""
    is_live = SubscriptionStatus(row.status).is_live
    ends_by_cancel_at = is_live and row.cancel_at is not None and not row.cancel_at_period_end
    ending = row.cancel_at_period_end or ends_by_cancel_at
    return SubscriptionView(
        status=row.status,
        started_at=row.started_at,
        current_period_end=row.current_period_end,
        cancel_at_period_end=ending,
        cancel_at=row.cancel_at if ending else None,
        canceled_at=row.canceled_at,
        ended_at=row.ended_at,
        status_label=status_label(row.status),
        started_on=format_date(row.started_at),
        renews_on=format_date((row.cancel_at if ending else None) or row.current_period_end),
        canceled_on=format_date(row.canceled_at),
        is_live=is_live,
        past_due=row.status in PAYMENT_WARNINGS,
        payment_warning=payment_warning(row),
        ends_by_cancel_at=ends_by_cancel_at,
    )


def payment_warning(row: Subscription) -> str:
    """The dashboard's warning about a payment owed: whether Stripe will retry it is Stripe's
    to say (`Subscription.payment_retrying`); "" when nothing is owed."""
    if row.status == SubscriptionStatus.PAST_DUE and row.payment_retrying is False:
        return PAYMENT_FAILED_FINAL_TEXT
    return PAYMENT_WARNINGS.get(row.status, "")


NO_SUBSCRIPTION = SubscriptionView()


@dataclass(frozen=True)
class DashboardView:
    """Everything the dashboard shows, read in one transaction.

    `version` changes whenever any of it may have changed (live pages compare it).
    """

    subscription: SubscriptionView | None
    messages: list[str] = field(default_factory=list)
    version: str = ""
    # Offer "Manage billing": a subscription of theirs has gone live (the portal's rule).
    ever_subscribed: bool = False


INVOICE_STATUS_LABELS = {
    "paid": "Paid",
    "open": "Due",
    "uncollectible": "Uncollectible",
    "void": "Void",
}


def format_amount(cents: int, currency: str) -> str:
    """An amount as people read it, e.g. "$12.00" (other currencies: "12.00 EUR")."""
    if currency.lower() == "usd":
        return f"${cents / 100:,.2f}"
    return f"{cents / 100:,.2f} {currency.upper()}"


@dataclass(frozen=True)
class InvoiceView:
    """One row of the invoice history (API fields, then display strings)."""

    number: str
    created: datetime | None
    amount_paid: int
    currency: str
    status: str
    hosted_invoice_url: str
    invoice_pdf: str
    created_on: str = ""
    amount: str = ""
    status_label: str = ""


@dataclass(frozen=True)
class InvoiceHistory:
    """The most recent invoices, and whether Stripe holds older ones not listed here (they
    are in the customer portal)."""

    invoices: list[InvoiceView]
    has_more: bool = False


def invoice_view_of(record: InvoiceRecord) -> InvoiceView:
    """The one mapping of a Stripe invoice to a row of the invoice history."""
    status = record.status or ""
    shown_cents = record.amount_paid if status == "paid" else record.amount_due
    return InvoiceView(
        number=record.number or "",
        created=record.created,
        amount_paid=record.amount_paid,
        currency=record.currency,
        status=status,
        hosted_invoice_url=record.hosted_invoice_url or "",
        invoice_pdf=record.invoice_pdf or "",
        created_on=format_date(record.created),
        amount=format_amount(shown_cents, record.currency),
        status_label=INVOICE_STATUS_LABELS.get(status, status.replace("_", " ").capitalize()),
    )
