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

from subscription_app import changes, routes
from subscription_app.billing import repository, service
from subscription_app.billing.plans import DEFAULT_PLAN
from subscription_app.billing.repository import SubscriptionView
from subscription_app.models import User
from subscription_app.state.auth import AuthState, SessionEnded, call_as_user

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

    def _reset(self) -> None:
        self.setup_client_secret, self.error = "", ""
        self.card_ready = self.processing = self.succeeded = self.pending = False
        self.already_subscribed = False

    def _client_address(self) -> str | None:
        return self.router.session.client_ip or None

    async def _new_setup_intent(self):
        address = self._client_address()
        self.setup_client_secret = await self._run_as_user(
            lambda s, u: service.create_setup_intent(session=s, user=u, client_address=address)
        )

    @rx.event
    async def prepare(self):
        """On load: refuse a second subscription, else create a SetupIntent and mount the card."""
        self._reset()
        try:
            current = await self._run_as_user(
                lambda s, u: service.get_subscription(session=s, user=u)
            )
            if current is not None and current.is_live:
                self.already_subscribed = True
                return None
            await self._new_setup_intent()
        except SessionEnded:
            return self._to_login()
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
        except SessionEnded:
            return self._to_login()
        except service.BillingError as exc:
            self.error = exc.message
            if exc.kind == "limited":
                self.card_ready = False  # no card form without a SetupIntent behind it
        return None

    @rx.event
    async def card_confirmed(self, result: Any):
        """Stripe.js returned a payment method id (or an error): start the subscription."""
        result = result if isinstance(result, dict) else {}
        if result.get("error") or not result.get("payment_method_id"):
            self.error = str(result.get("error") or "Your card could not be used.")
            self.processing = False
            if result.get("card_refused") is not True:
                return None  # an incomplete form or a network error is not a card attempt
            address = self._client_address()
            try:
                await self._run_as_user(
                    lambda s, u: service.record_card_failure(user=u, client_address=address)
                )
            except SessionEnded:
                return self._to_login()
            except service.BillingError as exc:
                # Over the card-testing limit: say so, and take the card form away.
                self.error, self.card_ready = exc.message, False
            return None
        payment_method_id = str(result["payment_method_id"])
        address = self._client_address()
        try:
            outcome = await self._run_as_user(
                lambda s, u: service.start_subscription(
                    session=s, user=u, payment_method_id=payment_method_id, client_address=address
                ),
            )
        except SessionEnded:
            self.processing = False
            return self._to_login()
        except service.AlreadySubscribed as exc:
            self.error, self.processing, self.already_subscribed = exc.message, False, True
            return None
        except service.BillingError as exc:
            if exc.kind == "limited":
                self.error, self.processing, self.card_ready = exc.message, False, False
                return None
            return await self._fail(exc.message)
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
            outcome = await self._run_as_user(
                lambda s, u: service.confirm_subscription(session=s, user=u),
            )
        except SessionEnded:
            self.processing = False
            return self._to_login()
        except service.BillingError as exc:
            return await self._fail(exc.message)
        return self._settle(outcome)


CANCEL_AT_PERIOD_END = "At the end of the period"
CANCEL_NOW = "Now"
WATCH_SECONDS = 30 * 60  # a dashboard left open stops listening after half an hour


def _dashboard_data(session: Session, user: User) -> tuple[SubscriptionView | None, list, str]:
    return (
        service.get_subscription(session=session, user=user),
        [n.text for n in repository.recent_notifications(session, user.id)],
        repository.subscription_version(session, user.id),
    )


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
    # Backend-only: the tab's one watcher (see `watch`), and what it last showed.
    _watching: bool = False
    _watch_requested: bool = False
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

    def _apply(self, data: tuple[SubscriptionView | None, list, str]) -> None:
        view, self.messages, self._seen_version = data
        self._show(view)

    @rx.event
    async def load(self):
        """On load: read the subscription, then keep the page up to date."""
        self.result_message = self.action_error = ""
        self.cancel_dialog_open = False
        self.cancel_when = CANCEL_AT_PERIOD_END  # matches the radio group's default
        try:
            self._apply(await self._run_as_user(_dashboard_data))
        except SessionEnded:
            return self._to_login()
        except service.BillingError as exc:
            self.load_error = exc.message
            return None
        self.load_error = ""
        self._watch_requested = True
        return DashboardState.watch

    @rx.event(background=True)
    async def watch(self):
        """Follow changes (webhooks, other tabs, API calls) while the dashboard is open.

        Runs at most once per tab, and only when `load` asked for it: a call from the browser
        on its own does nothing. Woken at once by the webhook processor in this process;
        re-checks every second for changes made by other processes. Stops when the person
        leaves the page, after half an hour, or when the session ends.
        """
        async with self:
            if self._watching or not self._watch_requested:
                return
            self._watching, self._watch_requested = True, False
            ref = (await self.get_state(AuthState))._session_ref()
        try:
            user_id = await asyncio.to_thread(call_as_user, ref, lambda s, u: u.id)
            deadline = time.monotonic() + WATCH_SECONDS
            while True:
                async with self:
                    if self._watch_requested:  # the page was loaded again: keep going
                        self._watch_requested = False
                        deadline = time.monotonic() + WATCH_SECONDS
                    here = self.router.url.path.startswith(routes.DASHBOARD)
                    if not here or time.monotonic() >= deadline:
                        self._watching = False
                        return
                    seen = self._seen_version
                await changes.wait_for_change(user_id, timeout=1.0)
                try:
                    data = await asyncio.to_thread(call_as_user, ref, _dashboard_data)
                except SessionEnded:
                    raise
                except Exception:  # database hiccup: try again next round
                    logger.warning("dashboard watcher could not read the database", exc_info=True)
                    continue
                if data[2] != seen:
                    async with self:
                        self._apply(data)
        except SessionEnded:
            async with self:
                self._watching = False
                (await self.get_state(AuthState))._forget()
                return self._to_login()
        finally:
            async with self:
                self._watching = False

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

    async def _act(self, fn: Callable[[Session, User], service.CancelResult]):
        """Run a cancel or undo for the user and show its result (a generator of updates)."""
        if self.working:
            return
        self.working, self.action_error, self.result_message = True, "", ""
        yield
        try:
            self.result_message = (await self._run_as_user(fn)).message
        except SessionEnded:
            yield self._to_login()
            return
        except service.BillingError as exc:
            self.action_error = exc.message
        finally:
            self.working, self.cancel_dialog_open = False, False
        try:
            self._apply(await self._run_as_user(_dashboard_data))
        except SessionEnded:
            yield self._to_login()

    @rx.event
    async def confirm_cancel(self):
        """Cancel as chosen, and show the result at once."""
        at_period_end = self.cancel_when != CANCEL_NOW
        async for update in self._act(
            lambda s, u: service.cancel_subscription(session=s, user=u, at_period_end=at_period_end)
        ):
            yield update

    @rx.event
    async def undo_cancel(self):
        """Keep the subscription after all (before the period ends)."""
        async for update in self._act(lambda s, u: service.resume_subscription(session=s, user=u)):
            yield update


PLAN_NAME = DEFAULT_PLAN.name
PLAN_PRICE = DEFAULT_PLAN.price_label
