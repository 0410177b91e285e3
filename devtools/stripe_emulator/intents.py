"""SetupIntents and PaymentIntents: creating and confirming them.

A confirmed SetupIntent attaches its card to its customer; a PaymentIntent
(the invoice of a ``default_incomplete`` subscription) is confirmed with a
``payment_method``. Both accept today's ``allowed_payment_method_types``.
3-D Secure (``requires_action``) is localstripe's own.
"""

from __future__ import annotations

from aiohttp import web
from localstripe import resources as ls

from devtools.stripe_emulator.cards import _attach, _specific_decline
from devtools.stripe_emulator.common import (
    UserError,
    _as_bool,
    _invalid,
    _json,
    _reject_unknown,
    _request_data,
    _route,
)
from devtools.stripe_emulator.webhooks import _schedule_event

_orig_seti_create = ls.SetupIntent._api_create.__func__
_orig_pi_create = ls.PaymentIntent._api_create.__func__


def _allowed_types(data: dict) -> None:
    # Today's API (2026-10) names the list `allowed_payment_method_types`; older versions
    # (and localstripe) `payment_method_types`.
    allowed = data.pop("allowed_payment_method_types", None)
    if allowed is not None:
        data.setdefault("payment_method_types", allowed)


def _setup_intent_create(cls, **data):
    customer = data.get("customer")
    if customer is not None:
        try:
            ls.Customer._api_retrieve(customer)
        except UserError:
            # As Stripe answers for a customer that does not exist (or was deleted).
            raise UserError(
                400,
                f"No such customer: '{customer}'",
                {"code": "resource_missing", "param": "customer"},
            ) from None
    pm_id = data.pop("payment_method", None)
    confirm = _as_bool(data.pop("confirm", None), "confirm")
    description = data.pop("description", None)
    # Only cards exist here, so automatic payment methods == cards.
    data.pop("automatic_payment_methods", None)
    data.pop("return_url", None)
    _allowed_types(data)
    pm = ls.PaymentMethod._api_retrieve(pm_id) if pm_id else None
    seti = _orig_seti_create(cls, **data)
    seti.description = description
    if pm is not None:
        seti.payment_method = pm.id
        seti.status = "requires_confirmation"
    if confirm:
        _confirm_setup_intent(seti.id, {})
    return seti


def _setup_intent_list(cls, url, customer=None, **kwargs):
    # Stripe lists a customer's SetupIntents (`customer`), newest first; localstripe takes
    # no filter and lists in store order. Installed wrapped in `index.scoped_to_customer`,
    # so with a customer the list underneath holds that customer's objects only.
    result = ls.StripeObject._api_list_all.__func__(cls, url, **kwargs)
    if customer is not None:
        result._list = [seti for seti in result._list if seti.customer == customer]
    result._list.sort(key=lambda seti: seti.created, reverse=True)
    return result


def _payment_intent_create(cls, **data):
    _allowed_types(data)
    pi = _orig_pi_create(cls, **data)
    # localstripe accepts the list but does not keep it.
    pi.payment_method_types = data.get("payment_method_types") or ["card"]
    return pi


def _confirm_setup_intent(id: str, data: dict) -> ls.SetupIntent:
    for ignored in ("return_url", "mandate_data", "payment_method_options"):
        data.pop(ignored, None)
    seti = ls.SetupIntent._api_retrieve(id)
    if seti.status in ("canceled", "succeeded"):
        # As Stripe answers (localstripe would check another card on it).
        raise _unexpected_state("confirm", seti.status)
    if (
        "payment_method" not in data
        and "payment_method_data" not in data
        and seti.status == "requires_confirmation"
        and seti.payment_method
    ):
        # Created with a payment method: check it now (decline, 3DS...)
        # instead of localstripe's unconditional success.
        data["payment_method"] = seti.payment_method
    try:
        seti = ls.SetupIntent._api_confirm(id=id, **data)
    except UserError as e:
        if e.code == 402:
            # Stripe keeps the intent usable for another card; localstripe
            # would leave it "canceled".
            seti.status = "requires_payment_method"
            seti.last_setup_error = dict(e.body["error"])
            seti.payment_method = None
            # Stripe tells the account of every declined check, whoever asked for it.
            _schedule_event("setup_intent.setup_failed", seti)
        raise
    seti.last_setup_error = None
    if seti.status == "succeeded":
        if seti.customer and seti.payment_method:
            # Stripe attaches the payment method to the intent's customer.
            _attach(ls.PaymentMethod._api_retrieve(seti.payment_method), seti.customer)
        _schedule_event("setup_intent.succeeded", seti)
    return seti


def _unexpected_state(action: str, status: str) -> UserError:
    return _invalid(
        f"You cannot {action} this SetupIntent because it has a status of {status}.",
        code="setup_intent_unexpected_state",
    )


@_route("POST", "/v1/setup_intents/{id}/cancel")
async def _setup_intent_cancel_route(request: web.Request, id: str) -> web.Response:
    data = await _request_data(request)
    expand = data.pop("expand", None)
    data.pop("cancellation_reason", None)
    seti = ls.SetupIntent._api_retrieve(id)
    if seti.status in ("canceled", "succeeded"):
        # As Stripe answers; localstripe would cancel a SetupIntent that saved a card.
        raise _unexpected_state("cancel", seti.status)
    return _json(ls.SetupIntent._api_cancel(id=id, **data), expand)


@_route("POST", "/v1/setup_intents/{id}/confirm")
async def _setup_intent_confirm_route(request: web.Request, id: str) -> web.Response:
    data = await _request_data(request)
    expand = data.pop("expand", None)
    return _json(_confirm_setup_intent(id, data), expand)


@_route("POST", "/v1/payment_intents/{id}/confirm")
async def _payment_intent_confirm_route(request: web.Request, id: str) -> web.Response:
    data = await _request_data(request)
    expand = data.pop("expand", None)
    pm_id = data.pop("payment_method", None)
    pm_data = data.pop("payment_method_data", None)
    client_secret = data.pop("client_secret", None)
    for ignored in (
        "mandate_data",
        "off_session",
        "payment_method_options",
        "receipt_email",
        "return_url",
        "setup_future_usage",
        "use_stripe_sdk",
    ):
        data.pop(ignored, None)
    _reject_unknown(data, set())

    pi = ls.PaymentIntent._api_retrieve(id)
    if client_secret is not None and client_secret != pi.client_secret:
        raise UserError(401, "Unauthorized")
    if pm_id is not None or pm_data is not None:
        if pi.status not in ("requires_payment_method", "requires_confirmation"):
            raise _invalid(
                f"You cannot confirm this PaymentIntent because it has a status of {pi.status}.",
                code="payment_intent_unexpected_state",
            )
        if pm_data is not None:
            if not isinstance(pm_data, dict):
                raise _invalid("Invalid payment_method_data", "payment_method_data")
            pm = ls.PaymentMethod(**pm_data)
        else:
            pm = ls.PaymentMethod._api_retrieve(pm_id)
        # localstripe's confirm refuses a payment method; set it the way
        # Stripe does and forget a previously failed attempt.
        pi.payment_method = pm.id
        pi.latest_charge = None
        pi.next_action = None
        pi._authentication_failed = False
    try:
        confirmed = ls.PaymentIntent._api_confirm(id)
    except UserError as e:
        # Stripe names the decline of its specific test cards (insufficient funds...).
        pm = ls.PaymentMethod._api_retrieve(pi.payment_method) if pi.payment_method else None
        raise _specific_decline(e, pm) from None
    return _json(confirmed, expand)
