"""`billing/views.py`: the one mapping from stored subscriptions to what people see."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from subscription_app.api.subscriptions import SubscriptionOut, to_out
from subscription_app.billing import views
from subscription_app.billing.views import (
    PERIOD_END_FALLBACK,
    SubscriptionView,
    format_date,
    status_label,
    view_of,
)
from subscription_app.models import Subscription, SubscriptionStatus

STARTED = datetime(2025, 11, 22, 23, 59, tzinfo=UTC)
RENEWS = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
CANCELED = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)
ENDED = datetime(2026, 4, 1, 8, 15, tzinfo=UTC)

API_FIELDS = {
    "plan",
    "price",
    "amount_cents",
    "currency",
    "interval",
    "status",
    "started_at",
    "current_period_end",
    "cancel_at_period_end",
    "cancel_at",
    "canceled_at",
    "ended_at",
}


def _row(status: str = "active", **fields) -> Subscription:
    values = {
        "user_id": 1,
        "stripe_customer_id_enc": "sealed-customer",
        "stripe_customer_id_hash": "customer-hash",
        "stripe_subscription_id_enc": "sealed-subscription",
        "stripe_subscription_id_hash": "subscription-hash",
        "price_id": "price_1TestAbc",
        "status": status,
        "started_at": STARTED,
        "current_period_end": RENEWS,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "ended_at": None,
    }
    values.update(fields)
    return Subscription(**values)


def test_a_subscription_set_to_end_by_cancel_at_alone_is_shown_as_ending_then():
    """Stripe's portal in flexible billing mode sets `cancel_at`, not `cancel_at_period_end`."""
    ends = datetime(2026, 12, 10, tzinfo=UTC)
    view = view_of(_row("active", cancel_at=ends, cancel_at_period_end=False))
    assert view.cancel_at_period_end is True and view.cancel_at == ends
    assert view.renews_on == "December 10, 2026"  # shown as "Access ends"
    assert view.ends_by_cancel_at is True
    # Classic: cancel_at_period_end (Stripe also sets cancel_at to the period's end).
    classic = view_of(_row("active", cancel_at=RENEWS, cancel_at_period_end=True))
    assert classic.cancel_at_period_end is True and classic.ends_by_cancel_at is False
    # Ended, or never set to end: no end date shown as one to come.
    assert view_of(_row("canceled", cancel_at=ends)).cancel_at is None
    assert view_of(_row("active")).cancel_at_period_end is False


def test_view_of_maps_every_field_of_the_row():
    view = view_of(
        _row(
            "active",
            cancel_at_period_end=True,
            canceled_at=CANCELED,
            ended_at=ENDED,
        )
    )

    assert view == SubscriptionView(
        status="active",
        started_at=STARTED,
        current_period_end=RENEWS,
        cancel_at_period_end=True,
        canceled_at=CANCELED,
        ended_at=ENDED,
        plan="Pro",
        price="$12.00 / month",
        amount_cents=1200,
        currency="usd",
        interval="month",
        status_label="Active",
        started_on="November 22, 2025",
        renews_on="November 22, 2026",
        canceled_on="March 5, 2026",
        is_live=True,
        past_due=False,
    )


def test_view_of_leaves_missing_dates_empty():
    view = view_of(_row("incomplete", started_at=None, current_period_end=None))
    assert (view.started_on, view.renews_on, view.canceled_on) == ("", "", "")
    assert view.status_label == "Awaiting payment"


@pytest.mark.parametrize(
    ("status", "is_live", "past_due", "warning"),
    [
        ("active", True, False, ""),
        ("trialing", True, False, ""),
        ("past_due", True, True, views.PAYMENT_FAILED_TEXT),
        # Stripe's retries are used up: it tries no more, so "Stripe will retry" is not said.
        ("unpaid", True, True, views.UNPAID_TEXT),
        ("paused", True, False, ""),
        ("incomplete", False, False, ""),
        ("incomplete_expired", False, False, ""),
        ("canceled", False, False, ""),
    ],
)
def test_view_of_says_whether_live_and_whether_payment_is_overdue(
    status, is_live, past_due, warning
):
    view = view_of(_row(status))
    assert view.status == status
    assert view.is_live is is_live
    assert view.past_due is past_due
    assert view.payment_warning == warning


@pytest.mark.parametrize(
    ("retrying", "warning"),
    [
        (True, views.PAYMENT_FAILED_TEXT),
        (None, views.PAYMENT_FAILED_TEXT),  # not known yet (a row from before it was read)
        # The merchant's setting leaves it past due after the last retry: no retry is promised.
        (False, views.PAYMENT_FAILED_FINAL_TEXT),
    ],
)
def test_a_past_due_warning_says_whether_stripe_will_retry(retrying, warning):
    assert view_of(_row("past_due", payment_retrying=retrying)).payment_warning == warning


def test_every_stripe_status_has_a_label():
    assert {status.value for status in SubscriptionStatus} == set(views.STATUS_LABELS)
    assert status_label("past_due") == "Past due"
    assert status_label("trialing") == "Trial"
    assert status_label("incomplete_expired") == "Expired"


def test_an_unknown_status_is_put_in_words():
    assert status_label("some_new_status") == "Some new status"


def test_format_date_reads_like_a_person_writes_it():
    assert format_date(datetime(2026, 11, 22, 18, 5, tzinfo=UTC)) == "November 22, 2026"
    assert format_date(datetime(2027, 1, 1, tzinfo=UTC)) == "January 1, 2027"


def test_format_date_of_nothing_is_the_fallback():
    assert format_date(None, PERIOD_END_FALLBACK) == "the end of the period"
    assert format_date(None) == ""


def test_the_api_model_carries_exactly_the_documented_fields():
    view = view_of(_row("past_due", canceled_at=CANCELED, ended_at=ENDED))

    out = to_out(view)

    assert isinstance(out, SubscriptionOut)
    assert set(SubscriptionOut.model_fields) == API_FIELDS
    assert out.model_dump() == {
        "plan": "Pro",
        "price": "$12.00 / month",
        "amount_cents": 1200,
        "currency": "usd",
        "interval": "month",
        "status": "past_due",
        "started_at": STARTED,
        "current_period_end": RENEWS,
        "cancel_at_period_end": False,
        "cancel_at": None,
        "canceled_at": CANCELED,
        "ended_at": ENDED,
    }
    assert to_out(None) is None


def test_the_api_model_shows_no_stripe_ids_or_display_strings():
    dumped = to_out(view_of(_row())).model_dump_json()
    for hidden in ("sealed", "hash", "price_1TestAbc", "renews_on", "status_label", "is_live"):
        assert hidden not in dumped
