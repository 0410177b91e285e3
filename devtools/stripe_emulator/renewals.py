"""Renewals, like a Stripe test clock reaching the end of a period.

``POST /_config/subscriptions/{id}/renew`` and :func:`renew_subscription`,
which calls it from a test or dev script.
"""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime

import httpx
from aiohttp import web
from dateutil.relativedelta import relativedelta
from localstripe import resources as ls

from devtools.stripe_emulator.common import _invalid, _json, _reject_unknown, _request_data, _route
from devtools.stripe_emulator.subscriptions import _Flags
from devtools.stripe_emulator.webhooks import _changed_fields, _schedule_event

_INTERVALS = {
    "day": lambda n: relativedelta(days=n),
    "week": lambda n: relativedelta(weeks=n),
    "month": lambda n: relativedelta(months=n),
    "year": lambda n: relativedelta(years=n),
}
_RENEWABLE = ("active", "past_due")


def _period_bound(anchor: int, plan: ls.Plan, periods: int) -> int:
    step = _INTERVALS[plan.interval](periods * (plan.interval_count or 1))
    return int((datetime.fromtimestamp(anchor, tz=UTC) + step).timestamp())


_orig_item_current_period = ls.SubscriptionItem._current_period


def _item_current_period(self):
    # localstripe derives the one and only period from start_date. Renewals
    # count periods instead, always from start_date like Stripe's billing
    # cycle anchor (so Jan 31 renews on Feb 28 and then on Mar 31, no drift).
    sub = ls.store.get("subscription:" + self._subscription) if self._subscription else None
    if sub is None or not sub._renewals:
        return _orig_item_current_period(self)
    return {
        "start": _period_bound(sub.start_date, self.plan, sub._renewals),
        "end": _period_bound(sub.start_date, self.plan, sub._renewals + 1),
    }


def _renewal_payment_method(sub: ls.Subscription) -> str | None:
    if sub.default_payment_method:
        pm = ls.store.get("payment_method:" + sub.default_payment_method)
        # A detached card cannot be charged; Stripe falls back to the customer's.
        if pm is not None and pm.customer == sub.customer:
            return pm.id
    customer = ls.Customer._api_retrieve(sub.customer)
    default = customer._get_default_payment_method_or_source()
    return default.id if default is not None else None


def _end_at_period_end(sub: ls.Subscription, period_end: int) -> ls.Subscription:
    # canceled_at keeps the time the cancellation was asked for, as on Stripe.
    sub.status = "canceled"
    sub.ended_at = min(sub.cancel_at or period_end, period_end)
    _schedule_event("customer.subscription.deleted", sub)
    return sub


def _renew(id: str) -> ls.Subscription:
    """Move subscription ``id`` into its next period and try to charge it.

    What Stripe does when a test clock passes ``current_period_end``: the
    subscription starts a new period; a scheduled cancellation ends it instead.
    Otherwise a ``subscription_cycle`` invoice for the new period is finalized
    and charged off-session to the subscription's default payment method (else
    the customer's invoice default). Paid: the subscription is ``active``.
    Declined, no payment method or authentication required: the invoice stays
    ``open`` with its PaymentIntent and the subscription becomes ``past_due``.
    """
    sub = ls.Subscription._api_retrieve(id)
    if sub.status not in _RENEWABLE:
        raise _invalid(
            f"This subscription is {sub.status}; only active or past_due "
            "subscriptions can be renewed.",
            "id",
        )
    before = sub._export()
    old_start, old_end = sub.current_period_start, sub.current_period_end
    if sub.cancel_at_period_end or (sub.cancel_at is not None and sub.cancel_at <= old_end):
        return _end_at_period_end(sub, old_end)

    # Everything that can fail runs before the subscription changes.
    pm_id = _renewal_payment_method(sub)
    sub._renewals += 1
    invoice = ls.Invoice(
        customer=sub.customer,
        subscription=sub.id,
        items=list(sub.items._list),
        tax_percent=sub.tax_percent,
        default_tax_rates=[tr.id for tr in (sub.default_tax_rates or [])] or None,
        date=sub.current_period_start,
    )
    invoice.billing_reason = "subscription_cycle"
    # Stripe: an invoice's own period looks back one period; its lines
    # cover the new one (which they already do).
    invoice.period_start, invoice.period_end = old_start, old_end
    invoice._finalize()  # numbers it and sends invoice.finalized (see .invoices)

    _Flags.renewing = True
    try:
        if invoice.status == "paid":  # nothing to charge (zero amount)
            invoice._on_payment_success()
        else:
            pi = ls.PaymentIntent(
                amount=invoice.total,
                currency=invoice.currency,
                customer=sub.customer,
                payment_method=pm_id,
            )
            pi.invoice = invoice.id
            invoice.payment_intent = pi.id
            if pm_id is not None:
                # A decline must not raise here: it is reported below, as
                # webhooks, the way an off-session charge is.
                pi._confirm(on_failure_now=lambda: None)
            if pi.status == "requires_payment_method":
                if pi.latest_charge is not None:
                    _schedule_event("payment_intent.payment_failed", pi)
                _schedule_event("invoice.payment_failed", invoice)
                sub.status = "past_due"
            elif pi.status == "requires_action":
                _schedule_event("invoice.payment_action_required", invoice)
                _schedule_event("invoice.payment_failed", invoice)
                sub.status = "past_due"
            # succeeded: _invoice_payment_success has run (status "active").
            # processing (SEPA): localstripe settles it about 0.5 s later.
    finally:
        _Flags.renewing = False

    changes = _changed_fields(before, sub._export())
    if changes:
        _schedule_event("customer.subscription.updated", sub, changes)
    return sub


@_route("POST", "/_config/subscriptions/{id}/renew")
async def _renew_route(request: web.Request, id: str) -> web.Response:
    data = await _request_data(request)
    expand = data.pop("expand", None)
    _reject_unknown(data, set())
    return _json(_renew(id), expand)


def renew_subscription(api_base: str, subscription_id: str) -> dict:
    """Renew a subscription now, as a Stripe test clock would at its period end.

    ``POST /_config/subscriptions/{id}/renew``: the subscription starts its
    next period and a ``subscription_cycle`` invoice is charged to its default
    payment method (else the customer's invoice default). A declined card
    leaves the invoice ``open`` and the subscription ``past_due``; a subscription
    set to cancel at period end is canceled instead. The usual webhooks follow
    about a second later. Returns the subscription (as ``GET
    /v1/subscriptions/{id}`` would).

    Raises ``httpx.HTTPStatusError`` carrying the emulator's error message: 404
    for an unknown subscription, 400 for one that is not active or past_due.
    """
    path = urllib.parse.quote(subscription_id, safe="")
    response = httpx.post(f"{api_base.rstrip('/')}/_config/subscriptions/{path}/renew", timeout=10)
    if response.is_error:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise httpx.HTTPStatusError(
            f"renewing {subscription_id} failed ({response.status_code}): {message}",
            request=response.request,
            response=response,
        )
    return response.json()
