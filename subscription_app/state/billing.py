"""Checkout and dashboard states: thin wrappers around `billing.service`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import reflex as rx
from sqlmodel import Session

from subscription_app import changes
from subscription_app.billing import repository, service
from subscription_app.billing.plans import DEFAULT_PLAN
from subscription_app.billing.repository import SubscriptionView
from subscription_app.db import session_scope
from subscription_app.models import User
from subscription_app.state.auth import AuthState

T = TypeVar("T")
logger = logging.getLogger(__name__)

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


CANCEL_AT_PERIOD_END = "At the end of the period"
CANCEL_NOW = "Now"
WATCH_SECONDS = 30 * 60  # a dashboard left open stops listening after half an hour


def _version(user_id: int) -> str:
    with session_scope() as session:
        return repository.subscription_version(session, user_id)


def _messages(user_id: int) -> list[str]:
    with session_scope() as session:
        return [n.text for n in repository.recent_notifications(session, user_id)]


class DashboardState(AuthState):
    """The dashboard's view of the user's subscription, kept live while the page is open."""

    has_subscription: bool = False
    is_live: bool = False
    status: str = ""
    status_label: str = ""
    started_on: str = ""
    renews_on: str = ""
    cancel_at_period_end: bool = False
    canceled_on: str = ""
    load_error: str = ""
    messages: list[str] = []
    cancel_when: str = CANCEL_AT_PERIOD_END
    cancel_dialog_open: bool = False
    working: bool = False
    result_message: str = ""
    action_error: str = ""
    _watch_generation: int = 0
    _seen_version: str = ""

    @rx.var
    def past_due(self) -> bool:
        """Stripe could not collect the last payment."""
        return self.status in ("past_due", "unpaid")

    def _show(self, view: SubscriptionView | None) -> None:
        self.has_subscription = view is not None
        self.is_live = bool(view and view.is_live)
        self.status = view.status if view else ""
        self.status_label = STATUS_LABELS.get(self.status, self.status.replace("_", " ").title())
        self.started_on = format_date(view.started_at) if view else ""
        self.renews_on = format_date(view.current_period_end) if view else ""
        self.cancel_at_period_end = bool(view and view.cancel_at_period_end)
        self.canceled_on = format_date(view.canceled_at) if view else ""

    async def _uid(self) -> int | None:
        auth = await self.get_state(AuthState)
        return auth.current_user_id()

    async def _refresh(self, user_id: int) -> None:
        view = await run_for_user(user_id, lambda s, u: service.get_subscription(session=s, user=u))
        self._show(view)
        self.messages = await asyncio.to_thread(_messages, user_id)
        self._seen_version = await asyncio.to_thread(_version, user_id)

    @rx.event
    async def load(self):
        """On load: read the subscription, then keep the page up to date."""
        user_id = await self._uid()
        if user_id is None:
            return None
        self.result_message = self.action_error = ""
        self.cancel_dialog_open = False
        self.cancel_when = CANCEL_AT_PERIOD_END  # matches the radio group's default
        try:
            await self._refresh(user_id)
        except service.BillingError as exc:
            self.load_error = exc.message
            return None
        self.load_error = ""
        self._watch_generation += 1
        return DashboardState.watch(self._watch_generation)

    @rx.event(background=True)
    async def watch(self, generation: int):
        """Follow changes (webhooks, other tabs, API calls) while the dashboard is open.

        Woken at once by the webhook processor in this process; re-checks the database every
        second for changes made by other processes.
        """
        async with self:
            user_id = await self._uid()
        if user_id is None:
            return
        deadline = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < deadline:
            await changes.wait_for_change(user_id, timeout=1.0)
            async with self:
                if self._watch_generation != generation or not self.router.url.path.startswith(
                    "/dashboard"
                ):
                    return  # a newer watcher took over, or the user left the page
                seen = self._seen_version
            try:
                current = await asyncio.to_thread(_version, user_id)
            except Exception:  # database hiccup: try again next round
                logger.warning("dashboard watcher could not read the database", exc_info=True)
                continue
            if current != seen:
                async with self:
                    await self._refresh(user_id)

    @rx.event
    def set_cancel_when(self, value: str):
        """The "when should it end" choice."""
        if value in (CANCEL_AT_PERIOD_END, CANCEL_NOW):
            self.cancel_when = value

    @rx.event
    def open_cancel_dialog(self):
        """Ask for confirmation before cancelling."""
        self.action_error = ""
        self.cancel_dialog_open = True

    @rx.event
    def close_cancel_dialog(self):
        """Keep the subscription."""
        self.cancel_dialog_open = False

    @rx.event
    async def confirm_cancel(self):
        """Cancel as chosen, and show the result at once."""
        if self.working:
            return
        self.working, self.action_error, self.result_message = True, "", ""
        yield
        at_period_end = self.cancel_when != CANCEL_NOW
        user_id = await self._uid()
        try:
            result = await run_for_user(
                user_id,
                lambda s, u: service.cancel_subscription(
                    session=s, user=u, at_period_end=at_period_end
                ),
            )
        except service.BillingError as exc:
            self.action_error = exc.message
        else:
            self.result_message = result.message
        self.working, self.cancel_dialog_open = False, False
        if user_id is not None:
            await self._refresh(user_id)

    @rx.event
    async def undo_cancel(self):
        """Keep the subscription after all (before the period ends)."""
        if self.working:
            return
        self.working, self.action_error, self.result_message = True, "", ""
        yield
        user_id = await self._uid()
        try:
            result = await run_for_user(
                user_id, lambda s, u: service.resume_subscription(session=s, user=u)
            )
        except service.BillingError as exc:
            self.action_error = exc.message
        else:
            self.result_message = result.message
        self.working = False
        if user_id is not None:
            await self._refresh(user_id)


PLAN_NAME = DEFAULT_PLAN.name
PLAN_PRICE = DEFAULT_PLAN.price_label
