"""The customer portal: ``POST /v1/billing_portal/sessions`` and the portal's pages.

A portal session's ``url`` (``/billing/portal/{id}``, valid for an hour) shows
the customer's subscriptions (plan, price, status, renewal or end date) with
"Cancel subscription" (at the period's end) and "Don't cancel"; the default
card with "Update payment method" (a card form: the new card is attached and
becomes the default of the customer and of their subscriptions); the finalized
invoices with their hosted page and PDF; and a "Return to ..." link to
``return_url``. Every change sends the events Stripe sends.
``flow_data[type]=payment_method_update`` opens the card form directly.
"""

from __future__ import annotations

import time

from aiohttp import web
from localstripe import resources as ls

from devtools.stripe_emulator.cards import (
    _attach,
    _attach_decline,
    _card_payment_method,
    _forget,
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
)
from devtools.stripe_emulator.index import customer_objects
from devtools.stripe_emulator.invoices import STATUS_LABELS, _customer_invoices
from devtools.stripe_emulator.pages import (
    AUTHENTICATION_FAILED,
    BUSINESS_NAME,
    _card_fields,
    _challenge_page,
    _date,
    _error_page,
    _esc,
    _FormError,
    _html_page,
    _message,
    _money,
    _notice,
    _read_card_form,
    _recurring,
    _see_other,
)
from devtools.stripe_emulator.prices import _product_name
from devtools.stripe_emulator.webhooks import _changed_fields, _schedule_event

LIFETIME = 3600
_FLOWS = ("payment_method_update", "subscription_cancel")
# Subscriptions the portal shows: the customer's current ones.
_SHOWN = ("active", "trialing", "past_due", "unpaid", "incomplete")
_STATUS_LABELS = {
    "active": "Active",
    "trialing": "Trial",
    "past_due": "Past due",
    "unpaid": "Unpaid",
    "incomplete": "Incomplete",
}
# ?done=... on the portal's home page -> the notice it shows.
_NOTICES = {
    "canceled": "Your subscription has been canceled. It stays active until the end of the "
    "current period.",
    "renewed": "Your subscription will no longer be canceled.",
    "payment_method": "Your payment method has been updated.",
}
# ?failed=... on the card form -> the message it shows.
_FAILURES = {"authentication": AUTHENTICATION_FAILED}


class BillingPortalSession(ls.StripeObject):
    """A ``billing_portal.session``; its pages work until ``_expires_at``."""

    object = "billing_portal.session"
    _id_prefix = "bps_"

    def __init__(self, *, customer: str, return_url: str | None, flow: dict | None) -> None:
        super().__init__()
        self.customer = customer
        self.return_url = return_url
        self.configuration = "bpc_emulator"
        self.flow = flow
        self.locale = None
        self.on_behalf_of = None
        self._expires_at = self.created + LIFETIME
        # A card waiting for its 3-D Secure answer: {"payment_method"}.
        self._pending: dict | None = None

    @property
    def url(self) -> str:
        if self.flow and self.flow.get("type") == "payment_method_update":
            return _public_url(f"/billing/portal/{self.id}/payment_method")
        return _public_url(f"/billing/portal/{self.id}")


# --------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------


def _flow_param(value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in _FLOWS:
        raise _invalid(
            f"The Stripe emulator supports flow_data[type] {' and '.join(_FLOWS)} only.",
            "flow_data[type]",
        )
    flow = {
        "type": value["type"],
        "after_completion": {"type": "portal_homepage"},
        "subscription_cancel": None,
        "subscription_update": None,
        "subscription_update_confirm": None,
    }
    if value["type"] == "subscription_cancel":
        details = value.get("subscription_cancel")
        if not isinstance(details, dict) or not isinstance(details.get("subscription"), str):
            raise _invalid(
                "Missing required param: flow_data[subscription_cancel][subscription].",
                "flow_data[subscription_cancel][subscription]",
                "parameter_missing",
            )
        ls.Subscription._api_retrieve(details["subscription"])
        flow["subscription_cancel"] = {"subscription": details["subscription"]}
    return flow


@_route("POST", "/v1/billing_portal/sessions")
async def _create_route(request: web.Request) -> web.Response:
    data = await _request_data(request)
    expand = data.pop("expand", None)
    _reject_unknown(data, {"customer", "return_url", "configuration", "locale", "flow_data"})
    customer = data.get("customer")
    if not isinstance(customer, str):
        raise _invalid("Missing required param: customer.", "customer", "parameter_missing")
    ls.Customer._api_retrieve(customer)
    return_url = data.get("return_url")
    if return_url is not None and (
        not isinstance(return_url, str) or not return_url.startswith(("http://", "https://"))
    ):
        raise _invalid("Not a valid URL", "return_url", "url_invalid")
    flow = _flow_param(data.get("flow_data"))
    session = BillingPortalSession(customer=customer, return_url=return_url, flow=flow)
    return _json(session, expand)


# --------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------


def _lookup(id: str) -> BillingPortalSession | None:
    session = ls.store.get(BillingPortalSession.object + ":" + id)
    if session is None or session._expires_at <= time.time():
        return None
    if ("customer:" + session.customer) not in ls.store:  # deleted meanwhile
        return None
    return session


def _gone_page() -> web.Response:
    return _error_page(
        "Portal session not found",
        "This link to the customer portal is invalid or has expired. "
        "Go back to the app and open the portal again.",
    )


def _home(session: BillingPortalSession) -> str:
    return f"/billing/portal/{session.id}"


def _subscriptions(customer: str) -> list[ls.Subscription]:
    return [obj for obj in customer_objects("subscription", customer) if obj.status in _SHOWN]


def _subscription_html(session: BillingPortalSession, sub: ls.Subscription) -> str:
    plan = sub.plan
    price = _recurring(plan.amount, plan.currency, plan.interval, plan.interval_count or 1)
    if sub.cancel_at_period_end or sub.cancel_at:
        when = f"Cancels on {_date(sub.cancel_at or sub.current_period_end)}"
    elif sub.status == "trialing" and sub.trial_end:
        when = f"Trial ends on {_date(sub.trial_end)}"
    else:
        when = f"Renews on {_date(sub.current_period_end)}"
    base = f"{_home(session)}/subscriptions/{sub.id}"
    if sub.cancel_at_period_end or sub.cancel_at:
        action = (
            f'<form method="post" action="{_esc(base)}/renew">'
            '<button type="submit">Don\'t cancel</button></form>'
        )
    else:
        action = (
            f'<form method="post" action="{_esc(base)}/cancel">'
            '<button type="submit" class="secondary">Cancel subscription</button></form>'
        )
    return (
        '<div class="card">'
        f'<p class="price">{_esc(_product_name(plan))}</p>'
        f"<p>{_esc(price)}</p>"
        f"<p>Status: {_esc(_STATUS_LABELS.get(sub.status, sub.status))}</p>"
        f"<p>{_esc(when)}</p>{action}</div>"
    )


def _payment_method_html(session: BillingPortalSession, customer: ls.Customer) -> str:
    pm_id = (customer.invoice_settings or {}).get("default_payment_method")
    pm = ls.store.get("payment_method:" + pm_id) if pm_id else None
    if pm is not None and pm.type == "card":
        card = pm.card
        described = (
            f"{card['brand'].title()} •••• {card['last4']}, "
            f"expires {card['exp_month']:02d}/{card['exp_year']}"
        )
    else:
        described = "No payment method on file."
    return (
        f'<div class="card"><p>{_esc(described)}</p>'
        f'<form method="get" action="{_esc(_home(session))}/payment_method">'
        '<button type="submit" class="secondary">Update payment method</button></form></div>'
    )


def _invoices_html(customer: ls.Customer) -> str:
    invoices = _customer_invoices(customer.id)
    if not invoices:
        return '<div class="card"><p>No invoices yet.</p></div>'
    rows = "".join(
        "<tr>"
        f'<td><a href="{_esc(i.hosted_invoice_url)}">{_esc(i.number)}</a></td>'
        f"<td>{_esc(_date(i.date))}</td>"
        f"<td>{_esc(_money(i.total, i.currency))}</td>"
        f"<td>{_esc(STATUS_LABELS.get(i.status, i.status))}</td>"
        f'<td><a href="{_esc(i.invoice_pdf)}">Download PDF</a></td>'
        "</tr>"
        for i in invoices
    )
    return (
        '<div class="card"><table><thead><tr><th>Invoice</th><th>Date</th><th>Amount</th>'
        f"<th>Status</th><th>PDF</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _return_link(session: BillingPortalSession) -> str:
    if not session.return_url:
        return ""
    return f'<p><a href="{_esc(session.return_url)}">Return to {_esc(BUSINESS_NAME)}</a></p>'


@_page_route("GET", "/billing/portal/{id}")
async def _home_route(request: web.Request, id: str) -> web.Response:
    session = _lookup(id)
    if session is None:
        return _gone_page()
    customer = ls.Customer._api_retrieve(session.customer)
    subscriptions = _subscriptions(customer.id)
    plans = "".join(_subscription_html(session, sub) for sub in subscriptions) or (
        '<div class="card"><p>You have no active subscription.</p></div>'
    )
    body = (
        _return_link(session) + f'<p class="seller">{_esc(BUSINESS_NAME)}</p>'
        "<h1>Manage your subscription</h1>"
        f'<p class="muted">{_esc(customer.email or "")}</p>'
        f"{_notice(_NOTICES.get(request.query.get('done', '')))}"
        f"<h2>Current plan</h2>{plans}"
        f"<h2>Payment method</h2>{_payment_method_html(session, customer)}"
        f"<h2>Invoice history</h2>{_invoices_html(customer)}"
    )
    return _html_page(f"{BUSINESS_NAME} customer portal", body)


def _own_subscription(session: BillingPortalSession, sub_id: str) -> ls.Subscription | None:
    sub = ls.store.get("subscription:" + sub_id)
    if sub is None or sub.customer != session.customer or sub.status not in _SHOWN:
        return None
    return sub


@_page_route("POST", "/billing/portal/{id}/subscriptions/{sub}/cancel")
async def _cancel_route(request: web.Request, id: str, sub: str) -> web.Response:
    session = _lookup(id)
    if session is None:
        return _gone_page()
    subscription = _own_subscription(session, sub)
    if subscription is None:
        return _error_page("Subscription not found", "This subscription cannot be changed here.")
    if not (subscription.cancel_at_period_end or subscription.cancel_at):
        # As Stripe's portal does for a subscription in flexible billing mode (the default
        # for new ones): the end is scheduled through cancel_at, cancel_at_period_end stays
        # false. Sends customer.subscription.updated (subscriptions._subscription_update).
        ls.Subscription._api_update(subscription.id, cancel_at="min_period_end")
    return _see_other(f"{_home(session)}?done=canceled")


@_page_route("POST", "/billing/portal/{id}/subscriptions/{sub}/renew")
async def _renew_route(request: web.Request, id: str, sub: str) -> web.Response:
    session = _lookup(id)
    if session is None:
        return _gone_page()
    subscription = _own_subscription(session, sub)
    if subscription is None:
        return _error_page("Subscription not found", "This subscription cannot be changed here.")
    if subscription.cancel_at_period_end or subscription.cancel_at:
        ls.Subscription._api_update(subscription.id, cancel_at="")
    return _see_other(f"{_home(session)}?done=renewed")


def _card_page(
    session: BillingPortalSession, *, message: str | None = None, name: str | None = None
) -> web.Response:
    body = (
        f'<p><a href="{_esc(_home(session))}">Back</a></p>'
        f'<p class="seller">{_esc(BUSINESS_NAME)}</p>'
        "<h1>Update payment method</h1>"
        f"{_message(message)}"
        f'<form method="post" action="{_esc(_home(session))}/payment_method" class="card">'
        + _card_fields(with_email=False, name=name)
        + '<button type="submit" class="full">Save</button></form>'
    )
    return _html_page("Update payment method", body)


def _save_card(session: BillingPortalSession, pm: ls.PaymentMethod) -> None:
    """Attach ``pm`` and make it the default of the customer and of their subscriptions."""
    session._pending = None
    customer = ls.Customer._api_retrieve(session.customer)
    _attach(pm, customer.id)
    before = customer._export()
    customer.invoice_settings = {**customer.invoice_settings, "default_payment_method": pm.id}
    _schedule_event("customer.updated", customer, _changed_fields(before, customer._export()))
    for sub in _subscriptions(customer.id):
        if sub.default_payment_method and sub.default_payment_method != pm.id:
            # Sends customer.subscription.updated.
            ls.Subscription._api_update(sub.id, default_payment_method=pm.id)


def _drop_pending(session: BillingPortalSession) -> None:
    if session._pending is not None:
        pm = ls.store.get("payment_method:" + session._pending["payment_method"])
        if pm is not None and pm.customer is None:
            _forget(pm)
        session._pending = None


@_page_route("GET", "/billing/portal/{id}/payment_method")
async def _card_form_route(request: web.Request, id: str) -> web.Response:
    session = _lookup(id)
    if session is None:
        return _gone_page()
    return _card_page(session, message=_FAILURES.get(request.query.get("failed", "")))


@_page_route("POST", "/billing/portal/{id}/payment_method")
async def _save_card_route(request: web.Request, id: str) -> web.Response:
    form = await request.post()
    session = _lookup(id)
    if session is None:
        return _gone_page()
    fields = {key: str(value) for key, value in form.items()}
    try:
        card = _read_card_form(fields, with_email=False)
    except _FormError as e:
        return _card_page(session, message=str(e), name=fields.get("card_name"))
    _drop_pending(session)
    customer = ls.Customer._api_retrieve(session.customer)
    pm = _card_payment_method(
        card.number, card.exp_month, card.exp_year, card.cvc, card.name, customer.email
    )
    error = _attach_decline(pm)
    if error is not None:
        _forget(pm)
        return _card_page(session, message=error.body["error"]["message"], name=card.name)
    if pm._requires_authentication():
        # Stripe saves a card through a SetupIntent, which may ask for 3-D Secure.
        session._pending = {"payment_method": pm.id}
        return _see_other(f"{_home(session)}/payment_method/authenticate")
    try:
        _save_card(session, pm)
    except UserError as e:
        return _card_page(session, message=e.body["error"]["message"], name=card.name)
    return _see_other(f"{_home(session)}?done=payment_method")


@_page_route("GET", "/billing/portal/{id}/payment_method/authenticate")
async def _challenge_route(request: web.Request, id: str) -> web.Response:
    session = _lookup(id)
    if session is None:
        return _gone_page()
    if session._pending is None:
        return _see_other(f"{_home(session)}/payment_method")
    return _challenge_page(
        f"{_home(session)}/payment_method/authenticate",
        f"Allow {BUSINESS_NAME} to charge this card for future payments.",
    )


@_page_route("POST", "/billing/portal/{id}/payment_method/authenticate")
async def _answer_route(request: web.Request, id: str) -> web.Response:
    form = await request.post()
    session = _lookup(id)
    if session is None:
        return _gone_page()
    pending = session._pending
    pm = ls.store.get("payment_method:" + pending["payment_method"]) if pending else None
    if pm is None:
        return _see_other(f"{_home(session)}/payment_method")
    if form.get("result") != "complete":
        _drop_pending(session)
        return _see_other(f"{_home(session)}/payment_method?failed=authentication")
    try:
        _save_card(session, pm)
    except UserError as e:
        return _card_page(session, message=e.body["error"]["message"])
    return _see_other(f"{_home(session)}?done=payment_method")
