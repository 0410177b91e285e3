"""Subscriptions and their invoices.

``POST /v1/subscriptions`` with prices, ``default_payment_method``, every
``payment_behavior``, trials and scheduled cancellation; updates, cancellation
and listing; ``invoice.paid``; and the fields of today's API missing from
localstripe's subscriptions, items, invoices and invoice lines. Renewals are in
:mod:`.renewals`.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from localstripe import resources as ls

from devtools.stripe_emulator.cards import _attach, _pm_attached_to
from devtools.stripe_emulator.common import UserError, _as_bool, _invalid, _reject_unknown
from devtools.stripe_emulator.prices import Price
from devtools.stripe_emulator.webhooks import _changed_fields, _schedule_event

# --------------------------------------------------------------------------
# Subscriptions
# --------------------------------------------------------------------------


class _Flags:
    # Set while Subscription.__init__ runs (it pays the first invoice inline).
    creating_subscription = False
    defer_first_payment = False
    # Set while a renewal pays its invoice: the renewal reports the status
    # change itself, in one customer.subscription.updated event.
    renewing = False


_orig_sub_create = ls.Subscription._api_create.__func__
_orig_sub_update = ls.Subscription._api_update.__func__
_orig_sub_delete = ls.Subscription._api_delete.__func__
_orig_sub_list = ls.Subscription._api_list_all.__func__
_orig_sub_initial_success = ls.Subscription._on_initial_payment_success
_orig_sub_initial_failure_later = ls.Subscription._on_initial_payment_failure_later
_orig_pay_invoice = ls.Invoice._api_pay_invoice.__func__
_orig_invoice_success = ls.Invoice._on_payment_success

_PAYMENT_BEHAVIORS = (
    "allow_incomplete",
    "default_incomplete",
    "error_if_incomplete",
    "pending_if_incomplete",
)
_SUB_UPDATE_NATIVE = frozenset(inspect.signature(ls.Subscription._update).parameters) - {"self"}


def _items_with_plans(items: Any) -> Any:
    """Map ``items[][price]`` onto localstripe's ``items[][plan]``."""
    if items is None:
        return None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _invalid("Invalid array", "items")
    mapped = []
    for index, item in enumerate(items):
        item = dict(item)
        if "price_data" in item:
            raise _invalid(
                "The Stripe emulator does not support items[][price_data]; create a price first.",
                f"items[{index}][price_data]",
            )
        price = item.pop("price", None)
        if price is not None:
            if "plan" in item:
                raise _invalid(
                    "You may only specify one of these parameters: plan, price.",
                    f"items[{index}][price]",
                )
            item["plan"] = Price._api_retrieve(price).id
        mapped.append(item)
    return mapped


def _payment_settings(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("Invalid payment_settings", "payment_settings")
    return value


def _apply_cancel_at_period_end(sub: ls.Subscription, value: bool | None) -> None:
    # Today's API reports a scheduled cancellation through cancel_at and
    # canceled_at (time of the request) as well as cancel_at_period_end.
    if value is True:
        sub.cancel_at_period_end = True
        sub.cancel_at = sub.current_period_end
        sub.canceled_at = int(time.time())
        sub.cancellation_details = {
            "comment": None,
            "feedback": None,
            "reason": "cancellation_requested",
        }
    elif value is False and sub.cancel_at_period_end:
        # Undoes what `True` scheduled; an end set through cancel_at alone stays (unset it
        # with cancel_at="").
        sub.cancel_at_period_end = False
        sub.cancel_at = None
        sub.canceled_at = None
        sub.cancellation_details = {"comment": None, "feedback": None, "reason": None}


def _apply_cancel_at(sub: ls.Subscription, value: Any) -> None:
    # Flexible billing mode (the default for new subscriptions since 2025-09-30): the
    # customer portal schedules the end through cancel_at alone, cancel_at_period_end false.
    # "" unsets it (the cancellation is undone); the enum values name the period's end.
    if value is None:
        return
    if value == "":
        sub.cancel_at_period_end = True  # so that the next line undoes either way of ending
        _apply_cancel_at_period_end(sub, False)
        return
    if value in ("min_period_end", "max_period_end"):
        moment = sub.current_period_end
    else:
        try:
            moment = int(value)
        except (TypeError, ValueError):
            raise _invalid("Invalid cancel_at: must be a timestamp or ''", "cancel_at") from None
        if moment <= int(time.time()):
            raise _invalid("cancel_at must be in the future", "cancel_at")
    sub.cancel_at_period_end = False
    sub.cancel_at = moment
    sub.canceled_at = int(time.time())
    sub.cancellation_details = {
        "comment": None,
        "feedback": None,
        "reason": "cancellation_requested",
    }


def _subscription_create(cls, **data):
    customer_id = data.get("customer")
    if not isinstance(customer_id, str):
        raise _invalid("Missing required param: customer.", "customer", "parameter_missing")
    customer = ls.Customer._api_retrieve(customer_id)
    data["items"] = _items_with_plans(data.get("items"))

    behavior = data.pop("payment_behavior", None) or "allow_incomplete"
    if behavior not in _PAYMENT_BEHAVIORS:
        raise _invalid("Invalid payment_behavior", "payment_behavior")
    settings = _payment_settings(data.pop("payment_settings", None))
    collection_method = data.pop("collection_method", "charge_automatically")
    if collection_method != "charge_automatically":
        raise _invalid(
            "The Stripe emulator only supports collection_method=charge_automatically.",
            "collection_method",
        )
    cancel_at_period_end = _as_bool(data.pop("cancel_at_period_end", None), "cancel_at_period_end")
    description = data.pop("description", None)
    for ignored in ("off_session", "currency", "automatic_tax"):
        data.pop(ignored, None)

    pm_id = data.pop("default_payment_method", None)
    previous_default = dict(customer.invoice_settings)
    if pm_id:
        _pm_attached_to(pm_id, customer_id, "default_payment_method")
        # localstripe charges the customer's default payment method only.
        customer.invoice_settings["default_payment_method"] = pm_id

    # localstripe knows allow_incomplete and error_if_incomplete. For
    # default_incomplete the first invoice is finalized but not paid (see
    # _pay_invoice); error_if_incomplete is enforced below because localstripe
    # only applies it to asynchronous failures.
    data["payment_behavior"] = (
        "error_if_incomplete" if behavior == "error_if_incomplete" else "allow_incomplete"
    )
    _Flags.creating_subscription = True
    _Flags.defer_first_payment = behavior == "default_incomplete"
    try:
        sub = _orig_sub_create(cls, **data)
    except BaseException:
        customer.invoice_settings = previous_default
        raise
    finally:
        _Flags.creating_subscription = False
        _Flags.defer_first_payment = False

    sub.default_payment_method = pm_id or None
    sub.description = description
    sub._save_default_pm = settings.get("save_default_payment_method") == "on_subscription"

    if sub.status == "incomplete" and sub.latest_invoice is None:
        # A trial: localstripe creates no invoice and leaves it "incomplete".
        sub.status = "trialing"
        sub.trial_start = sub.start_date
        if sub.trial_end is None and sub.trial_period_days is not None:
            sub.trial_end = sub.start_date + 86400 * sub.trial_period_days

    invoice = ls.Invoice._api_retrieve(sub.latest_invoice) if sub.latest_invoice else None
    if invoice is not None:
        invoice.billing_reason = "subscription_create"  # as Stripe names a first invoice
    charge = invoice.charge if invoice is not None else None
    if sub.status == "incomplete" and charge is not None and charge.status == "failed":
        if behavior == "error_if_incomplete":
            # Stripe does not create the subscription and returns the decline.
            del ls.store["subscription:" + sub.id]
            raise UserError(402, charge.failure_message, {"code": charge.failure_code})
        _schedule_event("invoice.payment_failed", invoice)

    _apply_cancel_at_period_end(sub, cancel_at_period_end)
    return sub


def _pay_invoice(cls, id):
    if not _Flags.defer_first_payment:
        return _orig_pay_invoice(cls, id)
    # default_incomplete: finalize the first invoice with a PaymentIntent the
    # client confirms later (invoice.confirmation_secret), without charging.
    invoice = cls._api_retrieve(id)
    invoice._draft = False
    customer = ls.Customer._api_retrieve(invoice.customer)
    default_pm = customer.invoice_settings.get("default_payment_method")
    pi = ls.PaymentIntent(
        amount=invoice.total,
        currency=invoice.currency,
        customer=invoice.customer,
        payment_method=default_pm,
    )
    pi.invoice = invoice.id
    invoice.payment_intent = pi.id
    return invoice


def _subscription_update(cls, id, **data):
    sub = cls._api_retrieve(id)
    if sub.status in ("canceled", "incomplete_expired") and set(data) - {
        "metadata",
        "cancellation_details",
    }:
        raise _invalid(
            "A canceled subscription can only update its cancellation_details and metadata."
        )
    if "items" in data:
        data["items"] = _items_with_plans(data["items"])
    pm_id = data.pop("default_payment_method", None)
    if pm_id:
        _pm_attached_to(pm_id, sub.customer, "default_payment_method")
    if data.pop("proration_behavior", None) == "none":
        data.setdefault("prorate", False)
    cancel_at_period_end = _as_bool(data.pop("cancel_at_period_end", None), "cancel_at_period_end")
    cancel_at = data.pop("cancel_at", None)
    if cancel_at not in (None, "") and cancel_at_period_end:
        raise _invalid(
            "You may only specify one of these parameters: cancel_at, cancel_at_period_end.",
            "cancel_at",
        )
    cancellation_details = data.pop("cancellation_details", None)
    description = data.pop("description", sub.description)
    for ignored in ("payment_behavior", "off_session", "payment_settings"):
        data.pop(ignored, None)
    _reject_unknown(data, _SUB_UPDATE_NATIVE)

    before = sub._export()
    if data:
        sub = _orig_sub_update(cls, id, **data)
    if pm_id:
        sub.default_payment_method = pm_id
        # See _subscription_create: localstripe charges the customer default.
        ls.Customer._api_retrieve(sub.customer).invoice_settings["default_payment_method"] = pm_id
    sub.description = description
    _apply_cancel_at_period_end(sub, cancel_at_period_end)
    _apply_cancel_at(sub, cancel_at)
    if isinstance(cancellation_details, dict):
        sub.cancellation_details = {**sub.cancellation_details, **cancellation_details}

    changes = _changed_fields(before, sub._export())
    if changes:
        _schedule_event("customer.subscription.updated", sub, changes)
    return sub


def _subscription_delete(cls, id):
    sub = cls._api_retrieve(id)
    if sub.status in ("canceled", "incomplete_expired"):
        # As Stripe answers a cancel of a subscription that has already ended (it can still
        # be retrieved): apps must not take this for a missing payment method.
        raise UserError(
            404, f"No such subscription: '{id}'", {"code": "resource_missing", "param": "id"}
        )
    # Set before localstripe snapshots the object into its "deleted" event.
    sub.canceled_at = int(time.time())
    sub.cancellation_details = {
        "comment": None,
        "feedback": None,
        "reason": "cancellation_requested",
    }
    return _orig_sub_delete(cls, id)


def _subscription_list(cls, url, price=None, **kwargs):
    _reject_unknown(kwargs, {"customer", "limit", "starting_after", "status"})
    result = _orig_sub_list(cls, url, **kwargs)
    if price is not None:
        result._list = [s for s in result._list if s.plan.id == price]
    return result


def _subscription_initial_success(self, invoice):
    previous_status = self.status
    _orig_sub_initial_success(self, invoice)
    if getattr(self, "_save_default_pm", False) and invoice.payment_intent:
        pi = ls.PaymentIntent._api_retrieve(invoice.payment_intent)
        if pi.payment_method:
            self.default_payment_method = pi.payment_method
            _attach(ls.PaymentMethod._api_retrieve(pi.payment_method), self.customer)
    if not _Flags.creating_subscription and not _Flags.renewing and previous_status != self.status:
        _schedule_event("customer.subscription.updated", self, {"status": previous_status})


def _subscription_initial_failure_later(self, invoice):
    # localstripe ends the subscription when its first payment fails after creation (a
    # failed 3-D Secure check, a declined card confirmed later). Stripe keeps an incomplete
    # subscription incomplete, its PaymentIntent open for another card, until it expires
    # (23 hours) or its invoice is voided.
    if not self._enable_incomplete_payments:
        _orig_sub_initial_failure_later(self, invoice)


def _invoice_payment_success(self):
    # The event snapshots the invoice now, so set what localstripe only sets
    # afterwards: an invoice.paid payload must say when it was paid.
    self.status_transitions["paid_at"] = int(time.time())
    _schedule_event("invoice.paid", self)
    _orig_invoice_success(self)


# --------------------------------------------------------------------------
# Fields of today's API missing from localstripe's objects
# --------------------------------------------------------------------------


def _item_price(self):
    return Price(self.plan)


def _item_period_start(self):
    return self._current_period()["start"]


def _item_period_end(self):
    return self._current_period()["end"]


def _subscription_currency(self):
    return self.plan.currency


def _invoice_confirmation_secret(self):
    if not self.payment_intent:
        return None
    pi = ls.PaymentIntent._api_retrieve(self.payment_intent)
    return {"client_secret": pi.client_secret, "type": "payment_intent"}


def _invoice_payments(self):
    data = []
    if self.payment_intent:
        pi = ls.PaymentIntent._api_retrieve(self.payment_intent)
        paid = pi.status == "succeeded"
        data.append(
            {
                "object": "invoice_payment",
                "id": "inpay_" + pi.id[3:],
                "amount_paid": pi.amount if paid else None,
                "amount_requested": pi.amount,
                "created": pi.created,
                "currency": pi.currency,
                "invoice": self.id,
                "is_default": True,
                "livemode": False,
                "payment": {"type": "payment_intent", "payment_intent": pi.id},
                "status": "paid" if paid else ("canceled" if pi._canceled else "open"),
            }
        )
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "url": f"/v1/invoice_payments?invoice={self.id}",
    }


def _invoice_amount_remaining(self):
    return self.amount_due - self.amount_paid


def _line_pricing(self):
    if self.plan is None:
        return None
    return {
        "type": "price_details",
        "price_details": {"price": self.plan.id, "product": self.plan.product},
        "unit_amount_decimal": str(self.plan.amount),
    }
