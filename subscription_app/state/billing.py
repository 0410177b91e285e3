"""Checkout and dashboard states: thin wrappers around `billing.service`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import reflex as rx
from sqlmodel import Session

from subscription_app.billing import service
from subscription_app.billing.plans import DEFAULT_PLAN
from subscription_app.billing.repository import SubscriptionView
from subscription_app.db import session_scope
from subscription_app.models import User
from subscription_app.state.auth import AuthState

T = TypeVar("T")

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
CHECKOUT_JS = "/checkout.js"


def format_date(value: datetime | None) -> str:
    """A date as people read it, e.g. "November 22, 2026" (UTC)."""
    return f"{value:%B} {value.day}, {value.year}" if value else ""


async def run_for_user(user_id: int | None, fn: Callable[[Session, User], T]) -> T:
    """Run a blocking service call for the user in a worker thread with its own session."""

    def _call() -> T:
        with session_scope() as session:
            user = session.get(User, user_id) if user_id is not None else None
            if user is None:
                raise service.BillingError("Your session has expired. Log in again.")
            return fn(session, user)

    return await asyncio.to_thread(_call)


def _js_call(function: str, *args: Any) -> str:
    """JavaScript that loads our checkout helper once, then calls one of its functions."""
    arguments = ", ".join(json.dumps(a) for a in args)
    return (
        "(window.saCheckoutLoaded = window.saCheckoutLoaded || new Promise((ok, fail) => {"
        f" const s = document.createElement('script'); s.src = {json.dumps(CHECKOUT_JS)};"
        " s.onload = ok; s.onerror = fail; document.head.appendChild(s); }))"
        f".then(() => window.saCheckout.{function}({arguments}))"
    )


class CheckoutState(AuthState):
    """The checkout page: card Element, subscribe, 3-D Secure, result."""

    setup_client_secret: str = ""  # for Stripe.js only; not a secret key
    card_ready: bool = False
    processing: bool = False
    error: str = ""
    succeeded: bool = False
    pending: bool = False
    already_subscribed: bool = False

    async def _uid(self) -> int | None:
        auth = await self.get_state(AuthState)
        return auth.current_user_id()

    def _reset(self) -> None:
        self.setup_client_secret, self.error = "", ""
        self.card_ready = self.processing = self.succeeded = self.pending = False
        self.already_subscribed = False

    async def _new_setup_intent(self):
        user_id = await self._uid()
        self.setup_client_secret = await run_for_user(
            user_id, lambda s, u: service.create_setup_intent(session=s, user=u)
        )

    @rx.event
    async def prepare(self):
        """On load: refuse a second subscription, else create a SetupIntent and mount the card."""
        self._reset()
        user_id = await self._uid()
        if user_id is None:
            return None
        current = await run_for_user(
            user_id, lambda s, u: service.get_subscription(session=s, user=u)
        )
        if current is not None and current.is_live:
            self.already_subscribed = True
            return None
        try:
            await self._new_setup_intent()
        except service.BillingError as exc:
            self.error = exc.message
            return None
        config = service.publishable_config()
        return rx.call_script(
            _js_call("mount", config["publishable_key"], config["js_url"]),
            callback=CheckoutState.card_mounted,
        )

    @rx.event
    def card_mounted(self, result: Any):
        """Stripe.js answered the mount call."""
        if result == "ok":
            self.card_ready = True
        else:
            self.error = str(result or "The card form could not be loaded.")

    @rx.event
    def subscribe(self):
        """The Subscribe button: tokenize the card at Stripe (never on our servers)."""
        if self.processing or self.succeeded or not self.card_ready:
            return None
        self.processing, self.error = True, ""
        return rx.call_script(
            _js_call("confirmSetup", self.setup_client_secret),
            callback=CheckoutState.card_confirmed,
        )

    async def _fail(self, message: str):
        self.error, self.processing = message, False
        try:
            await self._new_setup_intent()  # the old one is used up after a confirm
        except service.BillingError as exc:
            self.error = exc.message

    @rx.event
    async def card_confirmed(self, result: Any):
        """Stripe.js returned a payment method id (or an error): start the subscription."""
        result = result if isinstance(result, dict) else {}
        if result.get("error") or not result.get("payment_method_id"):
            self.error = str(result.get("error") or "Your card could not be used.")
            self.processing = False
            return None
        payment_method_id = str(result["payment_method_id"])
        try:
            outcome = await run_for_user(
                await self._uid(),
                lambda s, u: service.start_subscription(
                    session=s, user=u, payment_method_id=payment_method_id
                ),
            )
        except service.AlreadySubscribed as exc:
            self.error, self.processing, self.already_subscribed = exc.message, False, True
            return None
        except service.BillingError as exc:
            await self._fail(exc.message)
            return None
        return self._settle(outcome)

    def _settle(self, outcome: service.SubscribeResult):
        if outcome.status == "requires_action" and outcome.client_secret:
            return rx.call_script(
                _js_call("confirmPayment", outcome.client_secret),
                callback=CheckoutState.payment_confirmed,
            )
        self.processing = False
        self.succeeded = True
        self.pending = outcome.status == "processing"
        return None

    @rx.event
    async def payment_confirmed(self, result: Any):
        """3-D Secure finished in the browser (either way): ask Stripe what happened."""
        try:
            outcome = await run_for_user(
                await self._uid(),
                lambda s, u: service.confirm_subscription(session=s, user=u),
            )
        except service.BillingError as exc:
            await self._fail(exc.message)
            return None
        return self._settle(outcome)


class DashboardState(AuthState):
    """The dashboard's view of the user's subscription."""

    has_subscription: bool = False
    is_live: bool = False
    status: str = ""
    status_label: str = ""
    started_on: str = ""
    renews_on: str = ""
    cancel_at_period_end: bool = False
    canceled_on: str = ""
    load_error: str = ""

    def _show(self, view: SubscriptionView | None) -> None:
        self.has_subscription = view is not None
        self.is_live = bool(view and view.is_live)
        self.status = view.status if view else ""
        self.status_label = STATUS_LABELS.get(self.status, self.status.replace("_", " ").title())
        self.started_on = format_date(view.started_at) if view else ""
        self.renews_on = format_date(view.current_period_end) if view else ""
        self.cancel_at_period_end = bool(view and view.cancel_at_period_end)
        self.canceled_on = format_date(view.canceled_at) if view else ""

    @rx.event
    async def load(self):
        """On load: read the subscription from our database."""
        auth = await self.get_state(AuthState)
        if auth.current_user_id() is None:
            return
        try:
            view = await run_for_user(
                auth.current_user_id(), lambda s, u: service.get_subscription(session=s, user=u)
            )
        except service.BillingError as exc:
            self.load_error = exc.message
            return
        self.load_error = ""
        self._show(view)


PLAN_NAME = DEFAULT_PLAN.name
PLAN_PRICE = DEFAULT_PLAN.price_label
