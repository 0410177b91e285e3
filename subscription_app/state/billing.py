"""Checkout and dashboard states: thin wrappers around `billing.service`.

Each event calls one service function for the tab's user (`AuthState._run_as_user`) and
copies its answer into state; what a subscription looks like is decided in `billing.views`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import reflex as rx
from sqlmodel import Session

from subscription_app import changes, routes
from subscription_app.billing import service
from subscription_app.billing.views import (
    NO_SUBSCRIPTION,
    DashboardView,
    InvoiceView,
    SubscriptionView,
)
from subscription_app.errors import AppError
from subscription_app.models import User
from subscription_app.state.auth import AuthState, SessionEnded, call_as_user

logger = logging.getLogger(__name__)


def _js_call(function: str, *args: Any) -> str:
    """JavaScript that loads our checkout helper once, then calls one of its functions."""
    arguments = ", ".join(json.dumps(a) for a in args)
    script = json.dumps(routes.CHECKOUT_SCRIPT)
    return (
        "(window.saCheckoutLoaded = window.saCheckoutLoaded || new Promise((ok, fail) => {"
        f" const s = document.createElement('script'); s.src = {script};"
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
        except AppError as exc:
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
        self.error = message
        try:
            await self._new_setup_intent()  # the old one is used up after a confirm
        except SessionEnded:
            return self._to_login()
        except AppError as exc:
            self.error = exc.message
            if exc.kind == "limited":
                self.card_ready = False  # no card form without a SetupIntent behind it
        return None

    @rx.event
    async def card_confirmed(self, result: Any):
        """Stripe.js returned a payment method id (or an error): start the subscription."""
        waiting_for_bank = False
        try:
            result = result if isinstance(result, dict) else {}
            if result.get("error") or not result.get("payment_method_id"):
                self.error = str(result.get("error") or "Your card could not be used.")
                if result.get("card_refused") is True:
                    # A card Stripe refused counts as a card attempt; an incomplete form or a
                    # network error does not.
                    return await self._count_refused_card()
                return None
            payment_method_id = str(result["payment_method_id"])
            address = self._client_address()
            outcome = await self._run_as_user(
                lambda s, u: service.start_subscription(
                    session=s, user=u, payment_method_id=payment_method_id, client_address=address
                ),
            )
            script = self._settle(outcome)
            waiting_for_bank = script is not None
            return script
        except SessionEnded:
            return self._to_login()
        except service.AlreadySubscribed as exc:
            self.error, self.already_subscribed = exc.message, True
            return None
        except AppError as exc:
            if exc.kind == "limited":
                self.error, self.card_ready = exc.message, False
                return None
            return await self._fail(exc.message)
        finally:
            # Whatever happened (an unexpected error included), the button works again,
            # unless the bank's 3-D Secure check is now open in the page.
            self.processing = waiting_for_bank

    async def _count_refused_card(self):
        address = self._client_address()
        try:
            await self._run_as_user(
                lambda s, u: service.record_card_failure(user=u, client_address=address)
            )
        except SessionEnded:
            return self._to_login()
        except AppError as exc:
            # Over the card-testing limit: say so, and take the card form away.
            self.error, self.card_ready = exc.message, False
        return None

    def _settle(self, outcome: service.SubscribeResult):
        """Show the outcome; a script to run when the bank asks for 3-D Secure, else None."""
        if outcome.status == "requires_action" and outcome.client_secret:
            return rx.call_script(
                _js_call("confirmPayment", outcome.client_secret),
                callback=CheckoutState.payment_confirmed,
            )
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
            self._settle(outcome)
            return None
        except SessionEnded:
            return self._to_login()
        except AppError as exc:
            return await self._fail(exc.message)
        finally:
            self.processing = False


CHECKOUT_CANCELLED = "Checkout was cancelled. You have not been charged."


class PlanState(AuthState):
    """The plan page: the Stripe Checkout button, and what happened on Checkout's page."""

    notice: str = ""
    checkout_error: str = ""
    redirecting: bool = False

    @rx.event
    async def load(self):
        """On load: say so when the person came back from Checkout's page with "Back"."""
        await self._refresh_user()
        self.redirecting, self.checkout_error = False, ""
        cancelled = self.router.url.query_parameters.get("checkout") == "cancelled"
        self.notice = CHECKOUT_CANCELLED if cancelled else ""

    @rx.event
    async def start_checkout(self):
        """ "Subscribe with Stripe Checkout": off to Stripe's page (via login if needed)."""
        if not self.logged_in:
            return rx.redirect(f"{routes.LOGIN}?next={routes.PLAN}")
        if self.redirecting:
            return None
        self.redirecting, self.checkout_error, self.notice = True, "", ""
        try:
            url = await self._run_as_user(lambda s, u: service.start_checkout(session=s, user=u))
        except SessionEnded:
            self.redirecting = False
            return self._to_login()
        except AppError as exc:
            self.redirecting, self.checkout_error = False, exc.message
            return None
        except Exception:
            self.redirecting = False
            raise
        return rx.redirect(url)  # another host: the browser leaves for Stripe's page


class CheckoutReturnState(AuthState):
    """The page Stripe Checkout returns to: records the subscription at once."""

    result: str = ""  # "active", "processing" or "" (see error)
    error: str = ""
    already_subscribed: bool = False

    @rx.event
    async def complete(self):
        """On load: fetch the Checkout Session from Stripe and record its subscription."""
        self.result, self.error, self.already_subscribed = "", "", False
        checkout_session_id = self.router.url.query_parameters.get("session_id", "")
        try:
            outcome = await self._run_as_user(
                lambda s, u: service.complete_checkout(
                    session=s, user=u, checkout_session_id=checkout_session_id
                )
            )
        except SessionEnded:
            return self._to_login()
        except service.AlreadySubscribed as exc:
            self.error, self.already_subscribed = exc.message, True
            return None
        except AppError as exc:
            self.error = exc.message
            return None
        self.result = outcome.status
        return None


CANCEL_AT_PERIOD_END = "At the end of the period"
CANCEL_NOW = "Now"
WATCH_SECONDS = 30 * 60  # a dashboard left open stops listening after half an hour
# How often an idle watcher checks that its tab is still on the dashboard (no database read).
IDLE_RECHECK_SECONDS = 30.0


def _dashboard(session: Session, user: User) -> DashboardView:
    return service.dashboard(session=session, user=user)


class DashboardState(AuthState):
    """The dashboard's view of the user's subscription, kept live while the page is open."""

    has_subscription: bool = False
    subscription: SubscriptionView = NO_SUBSCRIPTION
    load_error: str = ""
    messages: list[str] = []
    cancel_when: str = CANCEL_AT_PERIOD_END
    cancel_dialog_open: bool = False
    working: bool = False
    result_message: str = ""
    action_error: str = ""
    invoices: list[InvoiceView] = []
    invoices_loaded: bool = False
    invoices_error: str = ""
    opening_portal: bool = False
    # Backend-only: the tab's one watcher (see `watch`), and what it last showed.
    _watching: bool = False
    _watch_requested: bool = False
    _seen_version: str = ""

    def _apply(self, data: DashboardView) -> None:
        self.has_subscription = data.subscription is not None
        self.subscription = data.subscription or NO_SUBSCRIPTION
        self.messages, self._seen_version = data.messages, data.version

    @rx.event
    async def load(self):
        """On load: read the subscription, then keep the page up to date."""
        self.result_message = self.action_error = ""
        self.cancel_dialog_open = False
        self.cancel_when = CANCEL_AT_PERIOD_END  # matches the radio group's default
        try:
            self._apply(await self._run_as_user(_dashboard))
        except SessionEnded:
            return self._to_login()
        except AppError as exc:
            self.load_error = exc.message
            return None
        self.load_error = ""
        self._watch_requested = True
        return [DashboardState.watch, DashboardState.load_invoices]

    @rx.event
    async def load_invoices(self):
        """The invoice history, read from Stripe (after the page has shown the rest)."""
        try:
            self.invoices = await self._run_as_user(
                lambda s, u: service.list_invoices(session=s, user=u)
            )
            self.invoices_error = ""
        except SessionEnded:
            return self._to_login()
        except AppError as exc:
            self.invoices_error = exc.message
        finally:
            self.invoices_loaded = True
        return None

    @rx.event
    async def open_portal(self):
        """ "Manage billing": off to Stripe's customer portal, which returns here."""
        if self.opening_portal:
            return None
        self.opening_portal, self.action_error = True, ""
        try:
            url = await self._run_as_user(
                lambda s, u: service.open_billing_portal(session=s, user=u)
            )
        except SessionEnded:
            return self._to_login()
        except AppError as exc:
            self.action_error = exc.message
            return None
        finally:
            self.opening_portal = False
        return rx.redirect(url)

    async def _refresh_invoices(self, ref: str) -> None:
        """Re-read the invoices from the background watcher (which holds no state lock)."""
        try:
            invoices = await asyncio.to_thread(
                call_as_user, ref, lambda s, u: service.list_invoices(session=s, user=u)
            )
        except AppError:
            return  # keep showing the last list; the next change tries again
        async with self:
            self.invoices = invoices

    @rx.event(background=True)
    async def watch(self):
        """Follow changes (webhooks, other tabs, API calls) while the dashboard is open.

        Runs at most once per tab, and only when `load` asked for it: a call from the browser
        on its own does nothing. Woken by the change feed (`changes`) when anything of this
        user's commits, in any worker, and only then reads the database. Stops when the
        person leaves the page, after half an hour, or when the session ends.
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
                # Pushed, not polled: an idle page reads nothing until a change of this
                # user is published (by any worker); the timeout only re-checks the deadline
                # and whether the tab is still on the dashboard.
                if not await changes.wait_for_change(user_id, timeout=IDLE_RECHECK_SECONDS):
                    continue
                try:
                    data = await asyncio.to_thread(call_as_user, ref, _dashboard)
                except SessionEnded:
                    raise
                except Exception:  # database hiccup: try again next round
                    logger.warning("dashboard watcher could not read the database", exc_info=True)
                    continue
                if data.version != seen:
                    async with self:
                        self._apply(data)
                        # Something changed (a payment, say): the invoices may have too.
                        refresh_invoices = self.invoices_loaded
                    if refresh_invoices:
                        await self._refresh_invoices(ref)
        except SessionEnded:
            async with self:
                self._watching = False
                auth = await self.get_state(AuthState)
                if not auth.logged_in:
                    # This tab logged out itself: its logout is already taking it to the
                    # landing page; a redirect to the login page here would race it.
                    return None
                auth._forget()
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
            try:
                self.result_message = (await self._run_as_user(fn)).message
            except AppError as exc:
                self.action_error = exc.message
            # Show what is true now, also after a refusal (another tab may have acted).
            self._apply(await self._run_as_user(_dashboard))
        except SessionEnded:
            yield self._to_login()
        except AppError as exc:
            self.load_error = exc.message
        finally:
            # An unexpected error too must leave the buttons usable and the dialog closed.
            self.working, self.cancel_dialog_open = False, False

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
