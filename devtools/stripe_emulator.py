"""Local Stripe emulator: localstripe plus the parts of today's Stripe API we use.

Run it with::

    python -m devtools.stripe_emulator --port 8420 [--host 127.0.0.1] [--from-scratch]

and point the SDK at it with
``stripe.StripeClient("sk_test_...", base_addresses={"api": "http://127.0.0.1:8420"})``
and the browser at ``http://127.0.0.1:8420/js.stripe.com/v3/`` (fake Stripe.js).

localstripe (GPL-3.0) is imported and extended at run time: this module adds
routes and wraps its resource classes, it does not contain any of its code.
What is added on top of localstripe 1.15.10:

* the Prices API (``/v1/prices``), each price backed by a localstripe Plan
  with the same id so subscriptions work;
* ``POST /v1/subscriptions`` with ``items[][price]``, ``default_payment_method``,
  ``payment_behavior`` (all four values), ``payment_settings``, trials;
  ``cancel_at_period_end`` / cancel set ``cancel_at``, ``canceled_at`` and
  ``cancellation_details``; ``customer.subscription.updated`` events;
* ``Idempotency-Key`` on POSTs (localstripe ignores it);
* confirming a SetupIntent attaches its payment method to its customer;
* confirming a PaymentIntent with ``payment_method`` (invoices of
  ``default_incomplete`` subscriptions);
* today's response fields: ``items.data[].price``,
  ``items.data[].current_period_start/end``, ``invoice.confirmation_secret``,
  ``invoice.payments``, ``invoice.lines.data[].pricing``;
* magic test tokens / payment methods (``tok_visa``, ``pm_card_chargeDeclined``...),
  ``payment_methods.create(card={"token": ...})``,
  ``GET /v1/customers/{id}/payment_methods``;
* Stripe-shaped errors (``card_error`` for 402, ``resource_missing`` for 404);
* renewals, like a Stripe test clock reaching the end of a period:
  ``POST /_config/subscriptions/{id}/renew`` (see :func:`renew_subscription`).

The helpers :func:`start_in_background`, :func:`register_webhook`,
:func:`renew_subscription` and :func:`reset` drive an emulator from tests and
dev scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import inspect
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import warnings
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import httpx
from aiohttp import web
from dateutil.relativedelta import relativedelta
from localstripe import errors as ls_errors
from localstripe import resources as ls

with warnings.catch_warnings():
    # localstripe registers plain-function handlers, which aiohttp deprecates;
    # keep that noise (an error under filterwarnings=error) out of our users.
    warnings.filterwarnings("ignore", "Bare functions are deprecated", DeprecationWarning)
    from localstripe import server as ls_server

__all__ = [
    "API_VERSION",
    "DEFAULT_PORT",
    "EmulatorProcess",
    "install",
    "main",
    "register_webhook",
    "renew_subscription",
    "reset",
    "start_in_background",
]

# The API version stripe-python 16.1.0 pins. Only used to label webhook
# events: the emulator accepts (and ignores) whatever Stripe-Version is sent.
API_VERSION = "2026-10-28.endive"
DEFAULT_PORT = 8420
DEFAULT_STATE_FILE = os.path.join(tempfile.gettempdir(), "subscription_app_stripe_emulator.pickle")

log = logging.getLogger("devtools.stripe_emulator")

UserError = ls_errors.UserError
Handler = Callable[..., Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _invalid(message: str, param: str | None = None, code: str | None = None):
    """A 400 error shaped like Stripe's (``code`` and ``param`` set)."""
    contents: dict[str, Any] = {}
    if param is not None:
        contents["param"] = param
    if code is not None:
        contents["code"] = code
    return UserError(400, message, contents)


def _reject_unknown(data: dict, allowed: set[str] | frozenset[str]) -> None:
    for key in data:
        if key not in allowed:
            raise _invalid(f"Received unknown parameter: {key}", key, "parameter_unknown")


def _as_bool(value: Any, param: str) -> bool | None:
    value = ls.try_convert_to_bool(value)
    if value is not None and not isinstance(value, bool):
        raise _invalid(f"Invalid boolean: {value}", param, "parameter_invalid_boolean")
    return value


def _schedule_event(event_type: str, obj: ls.StripeObject, previous=None) -> None:
    event = ls.Event(event_type, obj)
    if previous:
        event.data["previous_attributes"] = previous
    ls.schedule_webhook(event)


def _changed_fields(before: dict, after: dict) -> dict:
    return {k: v for k, v in before.items() if after.get(k) != v}


def _json(obj: ls.StripeObject, expand=None) -> web.Response:
    return ls_server.json_response(obj._export(expand=expand))


async def _request_data(request: web.Request) -> dict:
    """Body and query parameters merged, decoded the way localstripe does."""
    data = dict(await ls_server.get_post_data(request) or {})
    data.update(ls_server.unflatten_data(request.query) or {})
    return data


# --------------------------------------------------------------------------
# Route table for our endpoints
# --------------------------------------------------------------------------

# aiohttp picks the first registered route matching a request, so routes added
# to localstripe's router after import could never replace its own handlers
# (e.g. POST /v1/setup_intents/{id}/confirm). Our routes therefore live in
# their own small router that a middleware consults before localstripe's.
_router = web.UrlDispatcher()


def _route(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _router.add_route(method, path, handler)
        return handler

    return register


async def _dispatch(request: web.Request) -> Handler | None:
    match = await _router.resolve(request)
    if match.http_exception is not None:
        return None
    params = dict(match)

    async def call(req: web.Request) -> web.StreamResponse:
        return await match.handler(req, **params)

    return call


@web.middleware
async def _extensions_middleware(request: web.Request, handler):
    ours = await _dispatch(request)
    if ours is not None:
        return await ours(request)
    return await handler(request)


# --------------------------------------------------------------------------
# Idempotency-Key
# --------------------------------------------------------------------------


class _IdempotencyCache:
    """Replays the first response to a POST for any later POST with its key.

    Like Stripe, keys are global (not per path): reusing a key for a different
    request (other path or parameters) is an ``idempotency_error``. Successful
    responses and card declines (402) are stored; validation errors and
    server errors are not, so the client may retry them.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._max_entries = max_entries
        # localstripe handlers are synchronous once the body is read, but a
        # lock keeps two concurrent retries from both running the handler.
        self._lock = asyncio.Lock()

    def clear(self) -> None:
        self._entries.clear()

    async def handle(self, request: web.Request, handler) -> web.StreamResponse:
        key = request.headers["Idempotency-Key"]
        body = await request.read()
        fingerprint = hashlib.sha256(
            b"\0".join(
                [request.method.encode(), request.path_qs.encode(), body],
            )
        ).hexdigest()
        async with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                cached_fingerprint, status, payload, content_type = cached
                if cached_fingerprint != fingerprint:
                    error = UserError(
                        400,
                        "Keys for idempotent requests can only be used with the "
                        "same parameters they were first used with. Try using a "
                        f"key other than '{key}' if you meant to execute a "
                        "different request.",
                    )
                    error.body["error"]["type"] = "idempotency_error"
                    raise error
                return web.Response(
                    status=status,
                    body=payload,
                    content_type=content_type,
                    headers={"Idempotency-Key": key, "Idempotent-Replayed": "true"},
                )
            try:
                response = await handler(request)
            except UserError as e:
                response = e.to_response()
            if (
                isinstance(response, web.Response)
                and isinstance(response.body, bytes)
                and (200 <= response.status < 300 or response.status == 402)
            ):
                self._entries[key] = (
                    fingerprint,
                    response.status,
                    response.body,
                    response.content_type,
                )
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
            response.headers["Idempotency-Key"] = key
            return response


_idempotency = _IdempotencyCache()


@web.middleware
async def _idempotency_middleware(request: web.Request, handler):
    if request.method == "POST" and request.headers.get("Idempotency-Key"):
        return await _idempotency.handle(request, handler)
    return await handler(request)


# --------------------------------------------------------------------------
# Errors shaped like Stripe's
# --------------------------------------------------------------------------

_orig_user_error_init = UserError.__init__


def _user_error_init(self, code, message=None, contents=None):
    _orig_user_error_init(self, code, message, contents)
    if code == 402:
        # Stripe reports declines as card errors; apps branch on this type.
        self.body["error"]["type"] = "card_error"
        if self.body["error"].get("code") == "card_declined":
            self.body["error"].setdefault("decline_code", "generic_decline")


# Stripe's test cards for specific declines (localstripe declines them all generically).
# number -> (code, decline_code, message), as Stripe reports them.
_SPECIFIC_DECLINES = {
    "4000000000009995": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "4000000000009987": ("card_declined", "lost_card", "Your card was declined."),
    "4000000000009979": ("card_declined", "stolen_card", "Your card was declined."),
    "4000000000000069": ("expired_card", None, "Your card has expired."),
    "4000000000000127": ("incorrect_cvc", None, "Your card's security code is incorrect."),
    "4000000000000119": (
        "processing_error",
        None,
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}


def _specific_decline(error: UserError, pm) -> UserError:
    """Rewrite a generic 402 for one of Stripe's specific-decline test cards."""
    found = _SPECIFIC_DECLINES.get(getattr(pm, "_card_number", None) or "")
    if error.code == 402 and found:
        code, decline_code, message = found
        body = error.body["error"]
        body.update(code=code, message=message)
        if decline_code:
            body["decline_code"] = decline_code
        else:
            body.pop("decline_code", None)
    return error


_orig_pm_api_attach = ls.PaymentMethod._api_attach.__func__
_orig_seti_attach_pm = ls.SetupIntent._attach_pm


def _pm_api_attach(cls, id, customer=None, **kwargs):
    try:
        return _orig_pm_api_attach(cls, id, customer=customer, **kwargs)
    except UserError as e:
        pm = ls.PaymentMethod._api_retrieve(id) if isinstance(id, str) else None
        raise _specific_decline(e, pm) from None


def _seti_attach_pm(self, pm):
    try:
        return _orig_seti_attach_pm(self, pm)
    except UserError as e:
        raise _specific_decline(e, pm) from None


_orig_retrieve = ls.StripeObject._api_retrieve.__func__


def _retrieve(cls, id):
    if not isinstance(id, str) or not id:
        raise _invalid(f"Invalid {cls.object} id", "id")
    try:
        return _orig_retrieve(cls, id)
    except UserError as e:
        if e.code != 404:
            raise
        raise UserError(
            404,
            f"No such {cls.object}: '{id}'",
            {"code": "resource_missing", "param": "id"},
        ) from None


# --------------------------------------------------------------------------
# Prices
# --------------------------------------------------------------------------


class Price(ls.StripeObject):
    """A Stripe Price view of a localstripe Plan with the same id.

    Never stored itself (``__init__`` does not register it with the store):
    the Plan is the single source of truth, so subscriptions, invoices and
    the Plans API all see the same object. The price-only ``lookup_key`` and
    ``tax_behavior`` live on the plan as private attributes, which keeps the
    persisted state loadable by plain localstripe.
    """

    object = "price"
    _id_prefix = "price_"

    def __init__(self, plan: ls.Plan) -> None:
        self.id = plan.id
        self._plan = plan

    @classmethod
    def _api_retrieve(cls, id):
        plan = ls.store.get("plan:" + id) if isinstance(id, str) else None
        if plan is None:
            raise UserError(
                404,
                f"No such price: '{id}'",
                {"code": "resource_missing", "param": "price"},
            )
        return cls(plan)

    @property
    def created(self):
        return self._plan.created

    @property
    def livemode(self):
        return False

    @property
    def active(self):
        return self._plan.active

    @property
    def billing_scheme(self):
        return self._plan.billing_scheme

    @property
    def currency(self):
        return self._plan.currency

    @property
    def custom_unit_amount(self):
        return None

    @property
    def lookup_key(self):
        return getattr(self._plan, "_lookup_key", None)

    @property
    def metadata(self):
        return dict(self._plan.metadata or {})

    @property
    def nickname(self):
        return self._plan.nickname

    @property
    def product(self):
        return self._plan.product

    @property
    def recurring(self):
        return {
            "interval": self._plan.interval,
            "interval_count": self._plan.interval_count,
            "meter": None,
            "trial_period_days": self._plan.trial_period_days,
            "usage_type": self._plan.usage_type,
        }

    @property
    def tax_behavior(self):
        return getattr(self._plan, "_tax_behavior", "unspecified")

    @property
    def tiers_mode(self):
        return self._plan.tiers_mode

    @property
    def transform_quantity(self):
        return None

    @property
    def type(self):
        return "recurring"

    @property
    def unit_amount(self):
        return self._plan.amount

    @property
    def unit_amount_decimal(self):
        return None if self._plan.amount is None else str(self._plan.amount)


_PRICE_CREATE_PARAMS = frozenset(
    {
        "active",
        "currency",
        "lookup_key",
        "metadata",
        "nickname",
        "product",
        "product_data",
        "recurring",
        "tax_behavior",
        "transfer_lookup_key",
        "unit_amount",
    }
)
_PRICE_UPDATE_PARAMS = frozenset(
    {
        "active",
        "lookup_key",
        "metadata",
        "nickname",
        "tax_behavior",
        "transfer_lookup_key",
    }
)
_TAX_BEHAVIORS = ("exclusive", "inclusive", "unspecified")


def _plans() -> list[ls.Plan]:
    return [obj for key, obj in list(ls.store.items()) if key.startswith("plan:")]


def _claim_lookup_key(lookup_key: Any, transfer: bool | None, owner_id: str | None):
    """Validate ``lookup_key``; with ``transfer`` take it from its current price."""
    if lookup_key is None or lookup_key == "":
        return None
    if not isinstance(lookup_key, str) or len(lookup_key) > 200:
        raise _invalid("Invalid lookup_key", "lookup_key")
    for plan in _plans():
        if plan.id != owner_id and getattr(plan, "_lookup_key", None) == lookup_key:
            if not transfer:
                raise _invalid(
                    f"A price (`{plan.id}`) already uses that lookup key.",
                    "lookup_key",
                    "lookup_key_already_exists",
                )
            plan._lookup_key = None
    return lookup_key


def _merge_metadata(current: dict | None, update: Any) -> dict:
    # Stripe semantics: keys are merged, an empty value deletes a key and an
    # empty string for the whole object clears it.
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise _invalid("Invalid metadata", "metadata")
    merged = dict(current or {})
    for key, value in update.items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


@_route("POST", "/v1/prices")
async def _create_price(request: web.Request) -> web.Response:
    data = dict(await ls_server.get_post_data(request) or {})
    expand = data.pop("expand", None)
    _reject_unknown(data, _PRICE_CREATE_PARAMS)

    currency = data.get("currency")
    if not isinstance(currency, str) or not currency:
        raise _invalid("Missing required param: currency.", "currency", "parameter_missing")
    unit_amount = ls.try_convert_to_int(data.get("unit_amount"))
    if unit_amount is None:
        raise _invalid("Missing required param: unit_amount.", "unit_amount", "parameter_missing")
    if not isinstance(unit_amount, int) or unit_amount < 0:
        raise _invalid("Invalid integer: unit_amount", "unit_amount")

    recurring = data.get("recurring")
    if not isinstance(recurring, dict):
        # Prices are plans here, and localstripe plans are always recurring.
        raise _invalid(
            "The Stripe emulator only supports recurring prices: pass recurring[interval].",
            "recurring",
        )
    _reject_unknown(recurring, {"interval", "interval_count", "usage_type"})
    interval = recurring.get("interval")
    if interval not in ("day", "week", "month", "year"):
        raise _invalid("Invalid recurring[interval]", "recurring[interval]")
    interval_count = ls.try_convert_to_int(recurring.get("interval_count", 1))
    if not isinstance(interval_count, int) or interval_count < 1:
        raise _invalid("Invalid recurring[interval_count]", "recurring[interval_count]")
    if recurring.get("usage_type", "licensed") != "licensed":
        raise _invalid(
            "The Stripe emulator only supports licensed prices.",
            "recurring[usage_type]",
        )

    product = data.get("product")
    product_data = data.get("product_data")
    if (product is None) == (product_data is None):
        raise _invalid("You must specify exactly one of product or product_data.", "product")
    if product is not None:
        ls.Product._api_retrieve(product)  # 404 when it does not exist
    elif not isinstance(product_data, dict) or not product_data.get("name"):
        raise _invalid("Missing required param: product_data[name].", "product_data[name]")

    nickname = data.get("nickname")
    if nickname is not None and not isinstance(nickname, str):
        raise _invalid("Invalid nickname", "nickname")
    metadata = _merge_metadata({}, data.get("metadata") or {})
    active = _as_bool(data.get("active", True), "active")
    tax_behavior = data.get("tax_behavior", "unspecified")
    if tax_behavior not in _TAX_BEHAVIORS:
        raise _invalid("Invalid tax_behavior", "tax_behavior")
    transfer = _as_bool(data.get("transfer_lookup_key"), "transfer_lookup_key")
    lookup_key = _claim_lookup_key(data.get("lookup_key"), transfer, None)

    # All validation is done: from here on objects get created.
    if product is None:
        product = ls.Product(name=product_data["name"], metadata=product_data.get("metadata")).id
    plan = ls.Plan(
        id="price_" + ls.random_id(24),
        product=product,
        amount=unit_amount,
        currency=currency.lower(),
        interval=interval,
        interval_count=interval_count,
        nickname=nickname,
        metadata=metadata,
        active=active,
    )
    plan._lookup_key = lookup_key
    plan._tax_behavior = tax_behavior
    price = Price(plan)
    _schedule_event("price.created", price)
    return _json(price, expand)


@_route("GET", "/v1/prices/{id}")
async def _retrieve_price(request: web.Request, id: str) -> web.Response:
    data = ls_server.unflatten_data(request.query) or {}
    return _json(Price._api_retrieve(id), data.pop("expand", None))


@_route("POST", "/v1/prices/{id}")
async def _update_price(request: web.Request, id: str) -> web.Response:
    data = dict(await ls_server.get_post_data(request) or {})
    expand = data.pop("expand", None)
    _reject_unknown(data, _PRICE_UPDATE_PARAMS)
    price = Price._api_retrieve(id)
    plan = price._plan
    before = price._export()

    active = _as_bool(data.get("active"), "active")
    tax_behavior = data.get("tax_behavior")
    if tax_behavior is not None and tax_behavior not in _TAX_BEHAVIORS:
        raise _invalid("Invalid tax_behavior", "tax_behavior")
    if "lookup_key" in data:
        transfer = _as_bool(data.get("transfer_lookup_key"), "transfer_lookup_key")
        plan._lookup_key = _claim_lookup_key(data["lookup_key"], transfer, plan.id)
    if active is not None:
        plan.active = active
    if "nickname" in data:
        plan.nickname = data["nickname"] or None
    if "metadata" in data:
        plan.metadata = _merge_metadata(plan.metadata, data["metadata"])
    if tax_behavior is not None:
        plan._tax_behavior = tax_behavior

    _schedule_event("price.updated", price, _changed_fields(before, price._export()))
    return _json(price, expand)


@_route("GET", "/v1/prices")
async def _list_prices(request: web.Request) -> web.Response:
    data = ls_server.unflatten_data(request.query) or {}
    expand = data.pop("expand", None)
    _reject_unknown(
        data,
        {
            "active",
            "currency",
            "limit",
            "lookup_keys",
            "product",
            "starting_after",
            "type",
        },
    )
    active = _as_bool(data.get("active"), "active")
    lookup_keys = data.get("lookup_keys")
    if isinstance(lookup_keys, str):
        lookup_keys = [lookup_keys]
    if lookup_keys is not None and (not isinstance(lookup_keys, list) or len(lookup_keys) > 10):
        raise _invalid("lookup_keys must be a list of at most 10 keys", "lookup_keys")

    prices = [Price(plan) for plan in _plans()]
    if active is not None:
        prices = [p for p in prices if p.active == active]
    if lookup_keys is not None:
        prices = [p for p in prices if p.lookup_key in lookup_keys]
    if data.get("product") is not None:
        prices = [p for p in prices if p.product == data["product"]]
    if data.get("currency") is not None:
        prices = [p for p in prices if p.currency == data["currency"].lower()]
    if data.get("type") == "one_time":
        prices = []
    # Stripe lists newest first; the store keeps insertion order.
    prices.reverse()

    result = ls.List(
        "/v1/prices", limit=data.get("limit"), starting_after=data.get("starting_after")
    )
    result._list = prices
    return _json(result, expand)


# --------------------------------------------------------------------------
# Test cards: magic tokens and payment method ids
# --------------------------------------------------------------------------

# Card numbers behind Stripe's documented test tokens / payment methods.
# localstripe declines 4000000000000002 when the card is attached to a
# customer and 4000000000000341 when it is charged, like Stripe.
_TEST_CARDS = {
    "visa": "4242424242424242",
    "visa_debit": "4000056655665556",
    "mastercard": "5555555555554444",
    "chargeDeclined": "4000000000000002",
    "visa_chargeDeclined": "4000000000000002",
    "chargeCustomerFail": "4000000000000341",
    "chargeDeclinedInsufficientFunds": "4000000000009995",
    "chargeDeclinedExpiredCard": "4000000000000069",
    "threeDSecure2Required": "4000000000003220",
}


def _test_card(number: str) -> dict:
    return {
        "number": number,
        "exp_month": "12",
        "exp_year": str(time.localtime().tm_year + 5),
        "cvc": "123",
    }


_orig_token_retrieve = ls.Token._api_retrieve.__func__


def _token_retrieve(cls, id):
    if isinstance(id, str) and id.startswith("tok_") and id[4:] in _TEST_CARDS:
        # Like localstripe's pm_card_visa: each use mints a fresh token.
        return ls.Token(card=_test_card(_TEST_CARDS[id[4:]]))
    return _orig_token_retrieve(cls, id)


_orig_canonical_pm = ls.PaymentMethod._try_get_canonical_test_article.__func__


def _canonical_pm(cls, id):
    found = _orig_canonical_pm(cls, id)
    if found is None and id.startswith("pm_card_") and id[8:] in _TEST_CARDS:
        found = ls.PaymentMethod(type="card", card=_test_card(_TEST_CARDS[id[8:]]))
    return found


_orig_pm_create = ls.PaymentMethod._api_create.__func__


def _pm_create(cls, **data):
    card = data.get("card")
    if isinstance(card, dict) and "token" in card:
        # payment_methods.create(type="card", card={"token": "tok_visa"})
        if set(card) != {"token"}:
            raise _invalid("card[token] cannot be combined with card details", "card")
        token_card = ls.Token._api_retrieve(card["token"]).card
        data["card"] = {
            "number": token_card._card_number,
            "exp_month": token_card.exp_month,
            "exp_year": token_card.exp_year,
            "cvc": "123",
        }
    return _orig_pm_create(cls, **data)


def _pm_attached_to(pm_id: Any, customer_id: str, param: str) -> ls.PaymentMethod:
    """Return the payment method, requiring it to be attached to the customer."""
    if not isinstance(pm_id, str) or not pm_id:
        raise _invalid(f"Invalid {param}", param)
    pm = ls.PaymentMethod._api_retrieve(pm_id)
    if getattr(pm, "customer", None) != customer_id:
        raise _invalid(
            f"The customer does not have a payment method with the ID {pm_id}. "
            "The payment method must be attached to the customer.",
            param,
            "resource_missing",
        )
    return pm


def _attach(pm: ls.PaymentMethod, customer_id: str) -> None:
    if getattr(pm, "customer", None) is None:
        pm.customer = customer_id
        _schedule_event("payment_method.attached", pm)


_orig_pm_list = ls.PaymentMethod._api_list_all.__func__


def _pm_list(cls, url, customer=None, type=None, **kwargs):
    # Today's API makes `type` optional; localstripe only lists cards anyway.
    return _orig_pm_list(cls, url, customer=customer, type=type or "card", **kwargs)


@_route("GET", "/v1/customers/{id}/payment_methods")
async def _list_customer_pms(request: web.Request, id: str) -> web.Response:
    data = ls_server.unflatten_data(request.query) or {}
    expand = data.pop("expand", None)
    _reject_unknown(data, {"limit", "starting_after", "type"})
    ls.Customer._api_retrieve(id)
    result = ls.List(
        f"/v1/customers/{id}/payment_methods",
        limit=data.get("limit"),
        starting_after=data.get("starting_after"),
    )
    result._list = [
        obj
        for key, obj in list(ls.store.items())
        if key.startswith("payment_method:")
        and obj.customer == id
        and data.get("type") in (None, obj.type)
    ]
    return _json(result, expand)


@_route("GET", "/v1/customers/{id}/payment_methods/{pm}")
async def _retrieve_customer_pm(request: web.Request, id: str, pm: str) -> web.Response:
    data = ls_server.unflatten_data(request.query) or {}
    ls.Customer._api_retrieve(id)
    return _json(_pm_attached_to(pm, id, "payment_method"), data.pop("expand", None))


# --------------------------------------------------------------------------
# Customers
# --------------------------------------------------------------------------

_orig_customer_update = ls.Customer._api_update.__func__


def _customer_update(cls, id, **data):
    settings = data.get("invoice_settings")
    if isinstance(settings, dict):
        pm = settings.get("default_payment_method")
        if pm:
            # Stripe refuses a default payment method that is not attached.
            _pm_attached_to(pm, id, "invoice_settings[default_payment_method]")
        # Stripe merges invoice_settings; localstripe would replace the dict.
        current = cls._api_retrieve(id).invoice_settings or {}
        data["invoice_settings"] = {**current, **settings}
    return _orig_customer_update(cls, id, **data)


# --------------------------------------------------------------------------
# SetupIntents and PaymentIntents
# --------------------------------------------------------------------------

_orig_seti_create = ls.SetupIntent._api_create.__func__


def _setup_intent_create(cls, **data):
    pm_id = data.pop("payment_method", None)
    confirm = _as_bool(data.pop("confirm", None), "confirm")
    description = data.pop("description", None)
    # Only cards exist here, so automatic payment methods == cards.
    data.pop("automatic_payment_methods", None)
    data.pop("return_url", None)
    pm = ls.PaymentMethod._api_retrieve(pm_id) if pm_id else None
    seti = _orig_seti_create(cls, **data)
    seti.description = description
    if pm is not None:
        seti.payment_method = pm.id
        seti.status = "requires_confirmation"
    if confirm:
        _confirm_setup_intent(seti.id, {})
    return seti


def _confirm_setup_intent(id: str, data: dict) -> ls.SetupIntent:
    for ignored in ("return_url", "mandate_data", "payment_method_options"):
        data.pop(ignored, None)
    seti = ls.SetupIntent._api_retrieve(id)
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
        raise
    seti.last_setup_error = None
    if seti.status == "succeeded":
        if seti.customer and seti.payment_method:
            # Stripe attaches the payment method to the intent's customer.
            _attach(ls.PaymentMethod._api_retrieve(seti.payment_method), seti.customer)
        _schedule_event("setup_intent.succeeded", seti)
    return seti


@_route("POST", "/v1/payment_methods/{id}/attach")
async def _payment_method_attach_route(request: web.Request, id: str) -> web.Response:
    # localstripe bound its own attach handler at import; this one reports specific declines.
    data = await _request_data(request)
    expand = data.pop("expand", None)
    return _json(_pm_api_attach(ls.PaymentMethod, id, **data), expand)


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
    return _json(ls.PaymentIntent._api_confirm(id), expand)


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
    elif value is False:
        sub.cancel_at_period_end = False
        sub.cancel_at = None
        sub.canceled_at = None
        sub.cancellation_details = {"comment": None, "feedback": None, "reason": None}


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
    if isinstance(cancellation_details, dict):
        sub.cancellation_details = {**sub.cancellation_details, **cancellation_details}

    changes = _changed_fields(before, sub._export())
    if changes:
        _schedule_event("customer.subscription.updated", sub, changes)
    return sub


def _subscription_delete(cls, id):
    sub = cls._api_retrieve(id)
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


def _invoice_payment_success(self):
    # The event snapshots the invoice now, so set what localstripe only sets
    # afterwards: an invoice.paid payload must say when it was paid.
    self.status_transitions["paid_at"] = int(time.time())
    _schedule_event("invoice.paid", self)
    _orig_invoice_success(self)


# --------------------------------------------------------------------------
# Renewals (what a Stripe test clock does at the end of a period)
# --------------------------------------------------------------------------

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
    invoice._finalize()
    _schedule_event("invoice.finalized", invoice)

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


_orig_event_init = ls.Event.__init__


def _event_init(self, type, data):
    _orig_event_init(self, type, data)
    self.api_version = API_VERSION


# --------------------------------------------------------------------------
# Persistence and reset
# --------------------------------------------------------------------------


class _Persistence:
    path: str | None = DEFAULT_STATE_FILE


def _load_state(self) -> None:
    if _Persistence.path is None:
        return
    try:
        with open(_Persistence.path, "rb") as f:
            # Our own state file, written by _dump_state (localstripe's format).
            old = pickle.load(f)  # noqa: S301
    except FileNotFoundError:
        return
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        AttributeError,
        ImportError,
    ) as e:
        # An unreadable or incompatible state file must not keep us down.
        log.warning("Ignoring unreadable state file %s: %s", _Persistence.path, e)
        return
    self.clear()
    self.update(old)


def _dump_state(self) -> None:
    if _Persistence.path is None:
        return
    # Write-then-rename so an interrupted dump never leaves a torn file.
    tmp = _Persistence.path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, _Persistence.path)


@_route("DELETE", "/_config/data")
async def _reset_route(request: web.Request) -> web.Response:
    ls.store.clear()
    _idempotency.clear()
    return web.Response()


@_route("GET", "/_config/emulator")
async def _about_route(request: web.Request) -> web.Response:
    # Lets start_in_background tell our server from whatever else holds a port.
    return web.json_response({"emulator": "subscription_app", "pid": os.getpid()})


# --------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------

_installed = False


def install(
    state_file: str | os.PathLike | None = DEFAULT_STATE_FILE,
) -> web.Application:
    """Patch localstripe in this process and return its aiohttp application.

    Idempotent. ``state_file`` is where the store is persisted after each
    change (``None`` keeps everything in memory); it replaces localstripe's
    hard-coded ``/tmp/localstripe.pickle`` so a test emulator never clobbers a
    developer's running one.
    """
    global _installed
    _Persistence.path = None if state_file is None else os.fspath(state_file)
    if _installed:
        return ls_server.app
    _installed = True

    UserError.__init__ = _user_error_init
    ls.StripeObject._api_retrieve = classmethod(_retrieve)
    ls.Store.try_load_from_disk = _load_state
    ls.Store.dump_to_disk = _dump_state
    ls.Event.__init__ = _event_init

    ls.Token._api_retrieve = classmethod(_token_retrieve)
    ls.PaymentMethod._try_get_canonical_test_article = classmethod(_canonical_pm)
    ls.PaymentMethod._api_create = classmethod(_pm_create)
    ls.PaymentMethod._api_attach = classmethod(_pm_api_attach)
    ls.SetupIntent._attach_pm = _seti_attach_pm
    ls.PaymentMethod._api_list_all = classmethod(_pm_list)
    ls.Customer._api_update = classmethod(_customer_update)
    ls.SetupIntent._api_create = classmethod(_setup_intent_create)
    ls.SetupIntent.last_setup_error = None
    ls.SetupIntent.description = None

    ls.Subscription._api_create = classmethod(_subscription_create)
    ls.Subscription._api_update = classmethod(_subscription_update)
    ls.Subscription._api_delete = classmethod(_subscription_delete)
    ls.Subscription._api_list_all = classmethod(_subscription_list)
    ls.Subscription._on_initial_payment_success = _subscription_initial_success
    ls.Subscription.cancellation_details = {
        "comment": None,
        "feedback": None,
        "reason": None,
    }
    ls.Subscription.collection_method = "charge_automatically"
    ls.Subscription.currency = property(_subscription_currency)
    ls.Subscription.default_payment_method = None
    ls.Subscription.description = None
    ls.Subscription.pending_setup_intent = None
    # A class default, so subscriptions from older state files load as-is.
    ls.Subscription._renewals = 0
    ls.SubscriptionItem.price = property(_item_price)
    ls.SubscriptionItem.current_period_start = property(_item_period_start)
    ls.SubscriptionItem.current_period_end = property(_item_period_end)
    ls.SubscriptionItem._current_period = _item_current_period

    ls.Invoice._api_pay_invoice = classmethod(_pay_invoice)
    ls.Invoice._on_payment_success = _invoice_payment_success
    ls.Invoice.confirmation_secret = property(_invoice_confirmation_secret)
    ls.Invoice.payments = property(_invoice_payments)
    ls.Invoice.amount_remaining = property(_invoice_amount_remaining)
    ls.Invoice.hosted_invoice_url = None
    ls.Invoice.invoice_pdf = None
    ls.InvoiceLineItem.pricing = property(_line_pricing)

    # localstripe's chain is [errors, auth, save-store]. Idempotency goes
    # after auth (unauthenticated requests are never cached); our routes go
    # innermost so the save-store middleware persists what they change.
    middlewares = ls_server.app.middlewares
    middlewares.insert(middlewares.index(ls_server.auth_middleware) + 1, _idempotency_middleware)
    middlewares.append(_extensions_middleware)
    return ls_server.app


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stripe_emulator",
        description="Local Stripe emulator (localstripe + today's API).",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="do not load the state saved by a previous run",
    )
    parser.add_argument(
        "--state-file",
        default=DEFAULT_STATE_FILE,
        help="where the state is saved after each change (default: %(default)s)",
    )
    parser.add_argument("--no-persist", action="store_true", help="keep the state in memory only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: serve the emulator until SIGINT/SIGTERM."""
    # Shells start background jobs with SIGINT ignored, and Python keeps it
    # that way; restore it so a Ctrl-C/SIGINT during startup also stops us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT before aiohttp took over
        _serve(_parse_args(argv))


def _serve(args: argparse.Namespace) -> None:
    app = install(None if args.no_persist else args.state_file)
    if not args.from_scratch:
        ls.store.try_load_from_disk()

    # Same logging as localstripe's own start(); that function cannot be
    # reused as is because it parses sys.argv itself and always binds "::".
    access_log = logging.getLogger("aiohttp.access")
    access_log.setLevel(logging.DEBUG)
    access_log.addHandler(logging.StreamHandler())

    # run_app turns SIGINT and SIGTERM into a graceful shutdown (exit 0);
    # a short timeout so a lingering keep-alive connection cannot stall it.
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=access_log,
        shutdown_timeout=5,
    )


# --------------------------------------------------------------------------
# Helpers for tests and dev scripts
# --------------------------------------------------------------------------

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmulatorProcess:
    """A running ``python -m devtools.stripe_emulator`` subprocess.

    ``url`` is the API base for ``StripeClient(base_addresses={"api": url})``
    and ``js_url`` the fake Stripe.js to load instead of js.stripe.com.
    Usable as a context manager; the process is also stopped at interpreter
    exit if nobody did.
    """

    def __init__(self, process: subprocess.Popen, host: str, port: int, log_path: Path) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.log_path = log_path
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{port}"
        self.js_url = f"{self.url}/js.stripe.com/v3/"
        self._finalizer = weakref.finalize(self, _terminate, process)

    def logs(self) -> str:
        """The emulator's output so far (access log, errors)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """Send SIGTERM, wait for a clean exit (SIGKILL after ``timeout``).

        Returns the exit code: 0 when it shut down gracefully.
        """
        self._finalizer.detach()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmulatorProcess(url={self.url!r}, pid={self.process.pid})"


def start_in_background(
    port: int,
    host: str = "127.0.0.1",
    *,
    state_file: str | os.PathLike | None = None,
    startup_timeout: float = 30.0,
) -> EmulatorProcess:
    """Start the emulator as a subprocess and wait until it serves requests.

    With ``state_file=None`` (the default) the emulator starts empty and keeps
    its state in memory only, which is what tests want; with a path it loads
    that state and saves every change to it.

    Raises ``RuntimeError`` (with the emulator's output) if it exits or does
    not answer within ``startup_timeout`` seconds.
    """
    fd, log_name = tempfile.mkstemp(prefix="stripe-emulator-", suffix=".log")
    log_path = Path(log_name)
    command = [
        sys.executable,
        "-m",
        "devtools.stripe_emulator",
        "--port",
        str(port),
        "--host",
        host,
    ]
    if state_file is None:
        command += ["--from-scratch", "--no-persist"]
    else:
        command += ["--state-file", os.fspath(state_file)]
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=_REPO_ROOT,  # so "-m devtools..." resolves whatever our cwd is
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    emulator = EmulatorProcess(process, host, port, log_path)

    deadline = time.monotonic() + startup_timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                output = emulator.logs()
                emulator.stop()
                raise RuntimeError(
                    f"Stripe emulator exited with code {process.returncode}:\n{output}"
                )
            try:
                about = client.get(f"{emulator.url}/_config/emulator")
                if about.status_code == 200 and about.json().get("pid") == process.pid:
                    return emulator
            except (httpx.TransportError, ValueError):
                pass
            if time.monotonic() > deadline:
                output = emulator.logs()
                emulator.stop()
                raise RuntimeError(
                    f"Stripe emulator did not answer on {emulator.url} within "
                    f"{startup_timeout}s:\n{output}"
                )
            time.sleep(0.05)  # poll interval, bounded by the deadline above


def register_webhook(
    api_base: str,
    url: str,
    secret: str,
    endpoint_id: str = "subscription_app",
    *,
    events: Sequence[str] | None = None,
) -> None:
    """Make the emulator POST signed events to ``url`` (all types by default).

    ``secret`` is the signing secret the app verifies ``Stripe-Signature``
    with (``whsec_...``). Registering the same ``endpoint_id`` again replaces
    the previous registration. Events are sent about a second after they
    happen.
    """
    form: dict[str, Any] = {"url": url, "secret": secret}
    if events is not None:
        form["events[]"] = list(events)
    response = httpx.post(
        f"{api_base.rstrip('/')}/_config/webhooks/{endpoint_id}", data=form, timeout=10
    )
    response.raise_for_status()


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


def reset(api_base: str) -> None:
    """Delete all Stripe objects in the emulator (webhooks stay registered)."""
    response = httpx.delete(f"{api_base.rstrip('/')}/_config/data", timeout=10)
    response.raise_for_status()


if __name__ == "__main__":
    main()
