"""Cards and PaymentMethods, and the customers they are attached to.

Magic test tokens and payment method ids (``tok_visa``, ``pm_card_chargeDeclined``...),
``payment_methods.create(card={"token": ...})``, Stripe's specific declines of its
test cards, ``GET /v1/customers/{id}/payment_methods`` and a customer's
``invoice_settings[default_payment_method]``; and what our pages do with a card
typed into them (create it, check it, pay with it while the customer is there).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from localstripe import resources as ls

from devtools.stripe_emulator.common import (
    UserError,
    _invalid,
    _json,
    _reject_unknown,
    _request_data,
    _route,
    ls_server,
)
from devtools.stripe_emulator.index import customer_objects
from devtools.stripe_emulator.webhooks import _schedule_event

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
        for obj in customer_objects("payment_method", id)
        if data.get("type") in (None, obj.type)
    ]
    return _json(result, expand)


@_route("GET", "/v1/customers/{id}/payment_methods/{pm}")
async def _retrieve_customer_pm(request: web.Request, id: str, pm: str) -> web.Response:
    data = ls_server.unflatten_data(request.query) or {}
    ls.Customer._api_retrieve(id)
    return _json(_pm_attached_to(pm, id, "payment_method"), data.pop("expand", None))


# --------------------------------------------------------------------------
# Specific declines of Stripe's test cards
# --------------------------------------------------------------------------

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


@_route("POST", "/v1/payment_methods/{id}/attach")
async def _payment_method_attach_route(request: web.Request, id: str) -> web.Response:
    # localstripe bound its own attach handler at import; this one reports specific declines.
    data = await _request_data(request)
    expand = data.pop("expand", None)
    return _json(_pm_api_attach(ls.PaymentMethod, id, **data), expand)


# --------------------------------------------------------------------------
# Cards typed into our pages (hosted Checkout, the customer portal)
# --------------------------------------------------------------------------

# Stripe accepts these when they are attached and declines the charges made
# later: a payment made while the customer is on the page goes through
# (4000 0000 0000 0341, "accepted now, later charges fail").
_DECLINED_LATER = frozenset({"4000000000000341"})

_orig_requires_authentication = ls.PaymentMethod._requires_authentication
_orig_charging_is_declined = ls.PaymentMethod._charging_is_declined


def _pm_requires_authentication(self) -> bool:
    if getattr(self, "_authenticated_now", False):
        return False
    return _orig_requires_authentication(self)


def _pm_charging_is_declined(self) -> bool:
    if getattr(self, "_on_session", False) and getattr(self, "_card_number", None) in (
        _DECLINED_LATER
    ):
        return False
    # Stripe declines these cards however they are used; localstripe only when they are
    # attached, so a PaymentIntent confirmed with one (never attached) went through.
    return _orig_charging_is_declined(self) or self._attaching_is_declined()


@contextlib.contextmanager
def _on_session_payment(pm: ls.PaymentMethod, *, authenticated: bool) -> Iterator[None]:
    """While inside, charges to ``pm`` are made with the customer on the page.

    ``authenticated``: the customer just passed 3-D Secure, so these charges
    need no further authentication. Later (off-session) charges are unaffected.
    """
    pm._on_session = True
    pm._authenticated_now = authenticated
    try:
        yield
    finally:
        del pm._on_session, pm._authenticated_now


def _card_payment_method(
    number: str, exp_month: int, exp_year: int, cvc: str, name: str, email: str | None
) -> ls.PaymentMethod:
    """A card PaymentMethod (unattached) from details typed into one of our pages."""
    pm = ls.PaymentMethod(
        type="card",
        card={"number": number, "exp_month": exp_month, "exp_year": exp_year, "cvc": cvc},
        billing_details={
            "address": None,
            "email": email,
            "name": name,
            "phone": None,
        },
    )
    return pm


def _attach_decline(pm: ls.PaymentMethod) -> UserError | None:
    """The error attaching ``pm`` to a customer would raise (Stripe's wording), if any."""
    if not pm._attaching_is_declined():
        return None
    declined = UserError(402, "Your card was declined.", {"code": "card_declined"})
    return _specific_decline(declined, pm)


def _charge_decline(pm: ls.PaymentMethod, *, authenticated: bool) -> UserError | None:
    """The error an on-session charge to ``pm`` would end with, if any."""
    with _on_session_payment(pm, authenticated=authenticated):
        declined = pm._charging_is_declined()
    if not declined:
        return None
    return UserError(402, "Your card was declined.", {"code": "card_declined"})


def _forget(pm: ls.PaymentMethod) -> None:
    """Remove a PaymentMethod nobody got to see (a card refused by one of our pages)."""
    key = "payment_method:" + pm.id
    if key in ls.store:
        del ls.store[key]


# --------------------------------------------------------------------------
# Customers
# --------------------------------------------------------------------------

_orig_customer_update = ls.Customer._api_update.__func__
_orig_customer_delete = ls.Customer._api_delete.__func__
# Store keys remembering deleted customers (a type no listing scans).
_DELETED_CUSTOMER = "deleted_customer:"


def _customer_delete(cls, id):
    deleted = _orig_customer_delete(cls, id)
    ls.store[_DELETED_CUSTOMER + id] = True
    return deleted


@_route("GET", "/v1/customers/{id}")
async def _retrieve_customer(request: web.Request, id: str) -> web.Response:
    """As Stripe answers: a deleted customer is still found, as ``{"deleted": true}``."""
    if ls.store.get(_DELETED_CUSTOMER + id):
        return ls_server.json_response({"id": id, "object": "customer", "deleted": True})
    data = ls_server.unflatten_data(request.query) or {}
    return _json(ls.Customer._api_retrieve(id), data.pop("expand", None))


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
