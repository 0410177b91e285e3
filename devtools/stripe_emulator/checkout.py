"""Stripe Checkout in subscription mode: Checkout Sessions and the hosted payment page.

``POST /v1/checkout/sessions`` (``mode=subscription``, one price), ``GET
/v1/checkout/sessions/{id}`` (``expand`` works, ``line_items`` included),
``GET /v1/checkout/sessions`` (``customer``, ``subscription``, ``status``,
pagination), ``GET /v1/checkout/sessions/{id}/line_items`` and ``POST
/v1/checkout/sessions/{id}/expire``; sessions also expire at ``expires_at``.

The session's ``url`` is the hosted page ``/checkout/pay/{id}``: a card form
taking the same test cards as the fake Stripe.js. 4242 4242 4242 4242 pays;
declines show the form again with Stripe's message and create nothing; cards
asking for 3-D Secure go through a challenge page
(``/checkout/pay/{id}/authenticate``); 4000 0000 0000 0341 pays now, only later
charges fail. Paying attaches the card to the customer (created from the email
when the session has none), makes it the customer's and the subscription's
default, creates the subscription with the session's price and
``subscription_data``, completes the session and redirects to ``success_url``.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

from aiohttp import web
from localstripe import resources as ls

from devtools.stripe_emulator.cards import (
    _attach,
    _attach_decline,
    _card_payment_method,
    _charge_decline,
    _forget,
    _on_session_payment,
)
from devtools.stripe_emulator.common import (
    UserError,
    _invalid,
    _json,
    _page_route,
    _public_url,
    _reject_unknown,
    _request_data,
    _route,
    ls_server,
)
from devtools.stripe_emulator.index import (
    current_index,
    customer_objects,
    objects_of,
    store_position,
)
from devtools.stripe_emulator.pages import (
    AUTHENTICATION_FAILED,
    BUSINESS_NAME,
    CardForm,
    _card_fields,
    _challenge_page,
    _error_page,
    _esc,
    _FormError,
    _html_page,
    _message,
    _money,
    _read_card_form,
    _recurring,
    _see_other,
)
from devtools.stripe_emulator.prices import Price, _product_name
from devtools.stripe_emulator.webhooks import _changed_fields, _schedule_event

DEFAULT_LIFETIME = 24 * 3600  # Stripe: a session expires 24 hours after creation
MIN_LIFETIME = 30 * 60

# --------------------------------------------------------------------------
# The Checkout Session object
# --------------------------------------------------------------------------


class CheckoutSession(ls.StripeObject):
    """A ``checkout.session`` (subscription mode, one line item).

    Stored like localstripe's objects (``checkout.session:cs_test_...``), so
    ``reset`` and the state file include it and ``expand`` resolves its ids.
    """

    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(
        self,
        *,
        price: Price,
        quantity: int,
        customer: str | None,
        customer_email: str | None,
        client_reference_id: str | None,
        metadata: dict,
        subscription_data: dict,
        success_url: str,
        cancel_url: str | None,
        expires_at: int,
    ) -> None:
        super().__init__()
        self.mode = "subscription"
        self.status = "open"
        self.payment_status = "unpaid"
        self.customer = customer
        self.customer_email = customer_email
        self.customer_details = None
        self.client_reference_id = client_reference_id
        self.metadata = metadata
        self.subscription = None
        self.invoice = None
        self.payment_intent = None
        self.setup_intent = None
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.return_url = None
        self.expires_at = expires_at
        self.currency = price.currency
        # What is charged now: nothing during a trial.
        trial = subscription_data.get("trial_period_days") is not None
        self.amount_subtotal = 0 if trial else (price.unit_amount or 0) * quantity
        self.amount_total = self.amount_subtotal
        self.total_details = {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
        self.payment_method_types = ["card"]
        self.payment_method_collection = "always"
        self.ui_mode = "hosted"
        self.locale = None
        self.allow_promotion_codes = None
        self.billing_address_collection = None
        self._price = price.id
        self._quantity = quantity
        self._subscription_data = subscription_data
        # A card waiting for its 3-D Secure answer: {"payment_method", "email", "name"}.
        self._pending: dict | None = None
        _Expiry.track(self)

    @property
    def url(self) -> str | None:
        # Stripe's url is null once the session is complete or expired.
        return _public_url(f"/checkout/pay/{self.id}") if self.status == "open" else None

    def _line_items(self) -> dict:
        price = Price._api_retrieve(self._price)
        amount = (price.unit_amount or 0) * self._quantity
        return {
            "object": "list",
            "data": [
                {
                    "id": "li_" + self.id[len(self._id_prefix) :],
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": self.currency,
                    "description": _product_name(price._plan),
                    "price": price._export(),
                    "quantity": self._quantity,
                }
            ],
            "has_more": False,
            "url": f"/v1/checkout/sessions/{self.id}/line_items",
        }

    def _export(self, expand=None):
        # line_items is only in the response when expanded, as on Stripe.
        expand = list(expand) if isinstance(expand, list) else expand
        with_lines = isinstance(expand, list) and "line_items" in expand
        if with_lines:
            expand = [path for path in expand if path != "line_items"]
        exported = super()._export(expand=expand)
        if with_lines:
            exported["line_items"] = self._line_items()
        return exported


def _success_url(session: CheckoutSession) -> str:
    return session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id)


def _drop_pending(session: CheckoutSession) -> None:
    if session._pending is not None:
        pm = ls.store.get("payment_method:" + session._pending["payment_method"])
        if pm is not None:
            _forget(pm)
        session._pending = None


def _expire(session: CheckoutSession) -> None:
    _drop_pending(session)
    session.status = "expired"
    _schedule_event("checkout.session.expired", session)


def _current(session: CheckoutSession) -> CheckoutSession:
    """``session``, expired first if its time is up (then ``checkout.session.expired``)."""
    if session.status == "open" and session.expires_at <= time.time():
        _expire(session)
    return session


class _Expiry:
    """The stored sessions by ``expires_at``, to expire those whose time is up on a list.

    A list expires every open session whose time is up first (as a scan of all sessions
    calling :func:`_current` would), at the cost of those due only: each session leaves
    the heap once its time is up, expired then if still open (``expires_at`` never
    changes, and a session never becomes open again). Rebuilt from the stored sessions
    whenever the store's index is (a reset, a loaded state file).
    """

    # (expires_at, store position, id)
    heap: list[tuple[int, int, str]] = []
    index: object = None  # the index the heap was built for

    @classmethod
    def _sync(cls) -> None:
        index = current_index()
        if cls.index is index:
            return
        cls.index = index
        cls.heap = []
        for session in objects_of(CheckoutSession.object):
            cls._push(session)

    @classmethod
    def _push(cls, session: CheckoutSession) -> None:
        where = store_position(session)
        if where is not None:
            heapq.heappush(cls.heap, (session.expires_at, where, session.id))

    @classmethod
    def track(cls, session: CheckoutSession) -> None:
        """A new session (stored already)."""
        if cls.index is current_index():
            cls._push(session)
        # else: the next _sync finds it in the store.

    @classmethod
    def expire_due(cls) -> None:
        """Expire the open sessions whose time is up, in store order."""
        cls._sync()
        now = time.time()
        due = []
        while cls.heap and cls.heap[0][0] <= now:
            due.append(heapq.heappop(cls.heap))
        due.sort(key=lambda entry: entry[1])
        for _, _, id in due:
            session = ls.store.get(CheckoutSession.object + ":" + id)
            if session is not None:
                _current(session)


def _sessions(customer: str | None = None) -> list[CheckoutSession]:
    """The stored sessions (``customer``'s only if given) in store order, after expiring
    every open session whose time is up."""
    _Expiry.expire_due()
    if customer is None:
        return objects_of(CheckoutSession.object)
    return customer_objects(CheckoutSession.object, customer)


# --------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------

_CREATE_PARAMS = frozenset(
    {
        "allowed_payment_method_types",
        "cancel_url",
        "client_reference_id",
        "customer",
        "customer_email",
        "expires_at",
        "line_items",
        "metadata",
        "mode",
        "payment_method_types",
        "subscription_data",
        "success_url",
        "ui_mode",
    }
)
# Accepted and without effect here (no taxes, promotion codes or addresses).
_IGNORED_PARAMS = frozenset(
    {
        "allow_promotion_codes",
        "automatic_tax",
        "billing_address_collection",
        "consent_collection",
        "custom_text",
        "customer_update",
        "locale",
        "payment_method_collection",
        "phone_number_collection",
        "saved_payment_method_options",
        "tax_id_collection",
    }
)
_SUBSCRIPTION_DATA_PARAMS = frozenset({"description", "metadata", "trial_period_days"})
_STATUSES = ("open", "complete", "expired")


def _url_param(data: dict, name: str, *, required: bool) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise _invalid(f"Missing required param: {name}.", name, "parameter_missing")
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise _invalid("Not a valid URL", name, "url_invalid")
    return value


def _metadata_param(value: Any, param: str) -> dict:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _invalid(f"Invalid {param}: must be a hash of strings", param)
    return dict(value)


def _line_item_param(value: Any) -> tuple[Price, int]:
    if value is None:
        raise _invalid("Missing required param: line_items.", "line_items", "parameter_missing")
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _invalid("Invalid array", "line_items")
    if len(value) != 1:
        raise _invalid(
            "The Stripe emulator supports exactly one line item per Checkout Session.",
            "line_items",
        )
    item = dict(value[0])
    if "price_data" in item:
        raise _invalid(
            "The Stripe emulator does not support line_items[][price_data]; create a price first.",
            "line_items[0][price_data]",
        )
    _reject_unknown(item, {"price", "quantity"})
    if not isinstance(item.get("price"), str):
        raise _invalid(
            "Missing required param: line_items[0][price].",
            "line_items[0][price]",
            "parameter_missing",
        )
    price = Price._api_retrieve(item["price"])
    if not price.active:
        raise _invalid(
            f"The price specified ({price.id}) is inactive. This field only accepts active prices.",
            "line_items[0][price]",
        )
    quantity = ls.try_convert_to_int(item.get("quantity"))
    if quantity is None:
        raise _invalid(
            "Quantity is required. Add `quantity` to `line_items[0]`.",
            "line_items[0][quantity]",
            "parameter_missing",
        )
    if not isinstance(quantity, int) or quantity < 1:
        raise _invalid("Invalid integer: line_items[0][quantity]", "line_items[0][quantity]")
    return price, quantity


def _subscription_data_param(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("Invalid subscription_data", "subscription_data")
    for key in value:
        if key not in _SUBSCRIPTION_DATA_PARAMS:
            raise _invalid(
                f"Received unknown parameter: subscription_data[{key}]",
                f"subscription_data[{key}]",
                "parameter_unknown",
            )
    data: dict[str, Any] = {
        "metadata": _metadata_param(value.get("metadata"), "subscription_data[metadata]")
    }
    if value.get("description") is not None:
        data["description"] = str(value["description"])
    if value.get("trial_period_days") is not None:
        days = ls.try_convert_to_int(value["trial_period_days"])
        if not isinstance(days, int) or days < 1:
            raise _invalid(
                "Invalid integer: subscription_data[trial_period_days]",
                "subscription_data[trial_period_days]",
            )
        data["trial_period_days"] = days
    return data


def _create_session(data: dict) -> CheckoutSession:
    _reject_unknown(data, _CREATE_PARAMS | _IGNORED_PARAMS)
    mode = data.get("mode")
    if mode is None:
        raise _invalid("Missing required param: mode.", "mode", "parameter_missing")
    if mode != "subscription":
        raise _invalid("The Stripe emulator only supports mode=subscription.", "mode")
    if data.get("ui_mode", "hosted") != "hosted":
        raise _invalid("The Stripe emulator only supports ui_mode=hosted.", "ui_mode")
    for name in ("payment_method_types", "allowed_payment_method_types"):
        types = data.get(name)
        if types is not None and (not isinstance(types, list) or set(types) - {"card"}):
            raise _invalid("The Stripe emulator only supports card payments.", name)

    price, quantity = _line_item_param(data.get("line_items"))
    customer = data.get("customer")
    customer_email = data.get("customer_email")
    if customer is not None and customer_email is not None:
        raise _invalid(
            "You may only specify one of these parameters: customer, customer_email.",
            "customer_email",
        )
    if customer is not None:
        customer = ls.Customer._api_retrieve(customer).id
    if customer_email is not None and not isinstance(customer_email, str):
        raise _invalid("Invalid email address", "customer_email")
    reference = data.get("client_reference_id")
    if reference is not None and (not isinstance(reference, str) or len(reference) > 200):
        raise _invalid("Invalid client_reference_id", "client_reference_id")

    now = int(time.time())
    expires_at = ls.try_convert_to_int(data.get("expires_at", now + DEFAULT_LIFETIME))
    if not isinstance(expires_at, int) or not (
        now + MIN_LIFETIME <= expires_at <= now + DEFAULT_LIFETIME
    ):
        raise _invalid(
            "The `expires_at` timestamp must be between 30 minutes and 24 hours from "
            "Checkout Session creation.",
            "expires_at",
        )

    return CheckoutSession(
        price=price,
        quantity=quantity,
        customer=customer,
        customer_email=customer_email,
        client_reference_id=reference,
        metadata=_metadata_param(data.get("metadata"), "metadata"),
        subscription_data=_subscription_data_param(data.get("subscription_data")),
        success_url=_url_param(data, "success_url", required=True),
        cancel_url=_url_param(data, "cancel_url", required=False),
        expires_at=expires_at,
    )


@_route("POST", "/v1/checkout/sessions")
async def _create_route(request: web.Request) -> web.Response:
    data = await _request_data(request)
    expand = data.pop("expand", None)
    return _json(_create_session(data), expand)


@_route("GET", "/v1/checkout/sessions")
async def _list_route(request: web.Request) -> web.Response:
    data = ls_server.unflatten_data(request.query) or {}
    expand = data.pop("expand", None)
    _reject_unknown(data, {"customer", "subscription", "status", "limit", "starting_after"})
    status = data.get("status")
    if status is not None and status not in _STATUSES:
        raise _invalid(f"Invalid status: must be one of {', '.join(_STATUSES)}", "status")
    customer = data.get("customer")
    sessions = [
        s
        for s in _sessions(customer if isinstance(customer, str) and customer else None)
        if data.get("customer") in (None, s.customer)
        and data.get("subscription") in (None, s.subscription)
        and status in (None, s.status)
    ]
    sessions.reverse()  # newest first, as Stripe lists
    result = ls.List(
        "/v1/checkout/sessions", limit=data.get("limit"), starting_after=data.get("starting_after")
    )
    result._list = sessions
    return _json(result, expand)


@_route("GET", "/v1/checkout/sessions/{id}")
async def _retrieve_route(request: web.Request, id: str) -> web.Response:
    data = ls_server.unflatten_data(request.query) or {}
    return _json(_current(CheckoutSession._api_retrieve(id)), data.pop("expand", None))


@_route("GET", "/v1/checkout/sessions/{id}/line_items")
async def _line_items_route(request: web.Request, id: str) -> web.Response:
    return ls_server.json_response(CheckoutSession._api_retrieve(id)._line_items())


@_route("POST", "/v1/checkout/sessions/{id}/expire")
async def _expire_route(request: web.Request, id: str) -> web.Response:
    data = await _request_data(request)
    expand = data.pop("expand", None)
    _reject_unknown(data, set())
    session = _current(CheckoutSession._api_retrieve(id))
    if session.status != "open":
        raise _invalid(
            'Only Checkout Sessions with a status in ["open"] can be expired. '
            f'This Checkout Session has a status of "{session.status}".',
            code="checkout_session_expired" if session.status == "expired" else None,
        )
    _expire(session)
    return _json(session, expand)


# --------------------------------------------------------------------------
# Paying
# --------------------------------------------------------------------------


def _complete(session: CheckoutSession, pm: ls.PaymentMethod, *, authenticated: bool) -> None:
    """Subscribe the session's customer with ``pm`` (already checked) and complete the session."""
    pending = session._pending or {}
    email = pm.billing_details.get("email") or pending.get("email")
    name = pm.billing_details.get("name")
    session._pending = None
    if session.customer is not None:
        customer = ls.Customer._api_retrieve(session.customer)
    else:
        customer = ls.Customer(email=email, name=name)
        session.customer = customer.id

    _attach(pm, customer.id)
    before = customer._export()
    customer.invoice_settings = {**customer.invoice_settings, "default_payment_method": pm.id}
    _schedule_event("customer.updated", customer, _changed_fields(before, customer._export()))

    extra = dict(session._subscription_data)
    params: dict[str, Any] = {
        "customer": customer.id,
        "items": [{"price": session._price, "quantity": session._quantity}],
        "default_payment_method": pm.id,
        # The card was checked: a decline here would be a bug, not a silent incomplete.
        "payment_behavior": "error_if_incomplete",
        "metadata": extra.pop("metadata", {}),
        **extra,
    }
    with _on_session_payment(pm, authenticated=authenticated):
        sub = ls.Subscription._api_create(**params)

    invoice = ls.store.get("invoice:" + sub.latest_invoice) if sub.latest_invoice else None
    session.status = "complete"
    session.payment_status = (
        "paid" if invoice is not None and invoice.amount_due > 0 else "no_payment_required"
    )
    session.subscription = sub.id
    session.invoice = sub.latest_invoice
    session.customer_details = {
        "address": None,
        "email": email,
        "name": name,
        "phone": None,
        "tax_exempt": "none",
        "tax_ids": [],
    }
    _schedule_event("checkout.session.completed", session)


# --------------------------------------------------------------------------
# The hosted page
# --------------------------------------------------------------------------

# ?failed=... on the page -> the message it shows.
_FAILURES = {"authentication": AUTHENTICATION_FAILED}


def _known_email(session: CheckoutSession) -> tuple[str | None, bool]:
    """The email to pre-fill, and whether it is the customer's (not editable)."""
    customer = ls.store.get("customer:" + session.customer) if session.customer else None
    if customer is not None and customer.email:
        return customer.email, True
    return session.customer_email, False


def _back_link(session: CheckoutSession, fallback: str | None = None) -> str:
    target = session.cancel_url or fallback
    return f'<p><a href="{_esc(target)}">Back</a></p>' if target else ""


def _pay_page(
    session: CheckoutSession,
    *,
    message: str | None = None,
    email: str | None = None,
    name: str | None = None,
) -> web.Response:
    price = Price._api_retrieve(session._price)
    plan = price._plan
    product = _product_name(plan)
    known, locked = _known_email(session)
    per_unit = _recurring(plan.amount, plan.currency, plan.interval, plan.interval_count or 1)
    quantity = f"<p>Quantity: {session._quantity}</p>" if session._quantity != 1 else ""
    body = (
        _back_link(session) + f'<p class="seller">{_esc(BUSINESS_NAME)}</p>'
        f"<h1>Subscribe to {_esc(product)}</h1>"
        f'<div class="card"><p class="price">{_esc(per_unit)}</p>{quantity}'
        f'<p class="muted">Total due today: '
        f"{_esc(_money(session.amount_total, session.currency))}</p></div>"
        f"{_message(message)}"
        f'<form method="post" action="/checkout/pay/{_esc(session.id)}" class="card">'
        + _card_fields(
            with_email=True,
            email=known if locked else (email or known),
            email_locked=locked,
            name=name,
        )
        + '<button type="submit" class="full">Subscribe</button></form>'
        '<p class="muted">Test mode: use 4242 4242 4242 4242, any future date, any CVC.</p>'
    )
    return _html_page(f"Subscribe to {product}", body)


def _closed_page(session: CheckoutSession) -> web.Response:
    if session.status == "complete":
        title = "This checkout session is complete"
        text = "Your payment went through and your subscription has started."
        fallback = _success_url(session)
    else:
        title = "This checkout session has expired"
        text = "Nothing was charged. Go back and start again."
        fallback = None
    body = (
        f'<p class="seller">{_esc(BUSINESS_NAME)}</p><h1>{_esc(title)}</h1>'
        f"<p>{_esc(text)}</p>{_back_link(session, fallback)}"
    )
    return _html_page(title, body)


def _lookup(id: str) -> CheckoutSession | None:
    session = ls.store.get(CheckoutSession.object + ":" + id)
    return _current(session) if session is not None else None


def _missing_page() -> web.Response:
    return _error_page("Checkout not found", "This checkout page does not exist.")


@_page_route("GET", "/checkout/pay/{id}")
async def _pay_page_route(request: web.Request, id: str) -> web.Response:
    session = _lookup(id)
    if session is None:
        return _missing_page()
    if session.status != "open":
        return _closed_page(session)
    return _pay_page(session, message=_FAILURES.get(request.query.get("failed", "")))


def _refused(session: CheckoutSession, error: UserError, card: CardForm) -> web.Response:
    return _pay_page(
        session, message=error.body["error"]["message"], email=card.email, name=card.name
    )


@_page_route("POST", "/checkout/pay/{id}")
async def _pay_route(request: web.Request, id: str) -> web.Response:
    form = await request.post()
    session = _lookup(id)
    if session is None:
        return _missing_page()
    if session.status == "complete":
        # A second click on Subscribe: the first one paid; go where it went.
        return _see_other(_success_url(session))
    if session.status != "open":
        return _closed_page(session)
    fields = {key: str(value) for key, value in form.items()}
    known, locked = _known_email(session)
    if locked:
        fields["email"] = known or ""
    try:
        card = _read_card_form(fields, with_email=True)
    except _FormError as e:
        return _pay_page(
            session, message=str(e), email=fields.get("email"), name=fields.get("card_name")
        )

    _drop_pending(session)
    pm = _card_payment_method(
        card.number, card.exp_month, card.exp_year, card.cvc, card.name, card.email
    )
    needs_authentication = pm._requires_authentication()
    error = _attach_decline(pm)
    if error is None and not needs_authentication:
        error = _charge_decline(pm, authenticated=False)
    if error is not None:
        _forget(pm)
        return _refused(session, error, card)
    if needs_authentication:
        session._pending = {"payment_method": pm.id, "email": card.email, "name": card.name}
        return _see_other(f"/checkout/pay/{session.id}/authenticate")
    try:
        _complete(session, pm, authenticated=False)
    except UserError as e:
        return _refused(session, e, card)
    return _see_other(_success_url(session))


@_page_route("GET", "/checkout/pay/{id}/authenticate")
async def _challenge_route(request: web.Request, id: str) -> web.Response:
    session = _lookup(id)
    if session is None:
        return _missing_page()
    if session.status != "open" or session._pending is None:
        return _see_other(f"/checkout/pay/{id}")
    amount = _money(session.amount_total, session.currency)
    return _challenge_page(
        f"/checkout/pay/{session.id}/authenticate", f"Pay {amount} to {BUSINESS_NAME}."
    )


@_page_route("POST", "/checkout/pay/{id}/authenticate")
async def _answer_route(request: web.Request, id: str) -> web.Response:
    form = await request.post()
    session = _lookup(id)
    if session is None:
        return _missing_page()
    if session.status == "complete":
        return _see_other(_success_url(session))
    pending = session._pending
    pm = ls.store.get("payment_method:" + pending["payment_method"]) if pending else None
    if session.status != "open" or pm is None:
        return _see_other(f"/checkout/pay/{id}")
    if form.get("result") != "complete":
        _drop_pending(session)
        return _see_other(f"/checkout/pay/{id}?failed=authentication")
    card = CardForm("", 0, 0, "", pending["name"], pending["email"])
    error = _charge_decline(pm, authenticated=True)
    if error is not None:
        _drop_pending(session)
        return _refused(session, error, card)
    try:
        _complete(session, pm, authenticated=True)
    except UserError as e:
        return _refused(session, e, card)
    return _see_other(_success_url(session))
