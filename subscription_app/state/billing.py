"""Checkout and dashboard states: thin wrappers around `billing.service`.

Each event calls one service function for the tab's user (`AuthState._run_as_user`) and
copies its answer into state; what a subscription looks like is decided in `billing.views`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import reflex as rx
from sqlmodel import Session

from subscription_app import changes, routes
from subscription_app.billing import service
from subscription_app.billing.views import (
    NO_SUBSCRIPTION,
    DashboardView,
    InvoiceHistory,
    InvoiceView,
    SubscriptionView,
)
from subscription_app.errors import AppError
from subscription_app.models import User
from subscription_app.state.auth import AuthState, SessionEnded, call_as_user

logger = logging.getLogger(__name__)
T = TypeVar("T")


# The checkout page also has checkout.js in a <script> tag of its own (it mounts the card
# before the page is live); elsewhere, or if that has not run yet, this loads it.
_LOAD_CHECKOUT_JS = (
    "(window.saCheckout ? Promise.resolve() :"
    " window.saCheckoutLoaded = window.saCheckoutLoaded || new Promise((ok, fail) => {"
    " const s = document.createElement('script');"
    f" s.src = {json.dumps(routes.CHECKOUT_SCRIPT_URL)};"
    " s.onload = ok; s.onerror = fail; document.head.appendChild(s); }))"
)

_CARD_FORM_UNAVAILABLE = (
    "The card form could not be loaded. Check your connection and reload the page."
)
FORM_EXPIRED = "This card form had expired. Please enter your card again."
# What each checkout.js function answers when checkout.js itself could not be loaded, in
# the shape of its own answers: the page's callback always hears back (Reflex drops a
# rejected call silently, which left the form loading and a pressed Subscribe busy).
_ANSWER_WITHOUT_CHECKOUT_JS: dict[str, Any] = {
    "mount": _CARD_FORM_UNAVAILABLE,
    "preload": "failed",
    "confirmSetup": {"error": _CARD_FORM_UNAVAILABLE},
    "confirmPayment": {"error": _CARD_FORM_UNAVAILABLE},
}


def _or_answer_without_checkout_js(function: str) -> str:
    return f".catch(() => ({json.dumps(_ANSWER_WITHOUT_CHECKOUT_JS[function])}))"


def _js_call(function: str, *args: Any) -> str:
    """JavaScript that loads our checkout helper once, then calls one of its functions."""
    arguments = ", ".join(json.dumps(a) for a in args)
    return (
        f"{_LOAD_CHECKOUT_JS}.then(() => window.saCheckout.{function}({arguments}))"
        + _or_answer_without_checkout_js(function)
    )


def js_call_in_page(function: str, *args: Any) -> rx.Var:
    """Like `_js_call`, for state vars read in the browser when the script runs (a click).

    For event triggers of the page itself: nothing goes to the server before the call.
    """
    code = rx.Var.create(f"{_LOAD_CHECKOUT_JS}.then(() => window.saCheckout.{function}(").to(str)
    for index, arg in enumerate(args):
        if index:
            code = code + ", "
        code = code + rx.Var.create(arg).to_string()
    return code + "))" + _or_answer_without_checkout_js(function)


def _checkout_setup(
    session: Session, user: User, client_address: str | None, reusable: str
) -> str | None:
    """A SetupIntent secret for the card form, or None when a subscription is already live.

    `reusable` is an unconfirmed SetupIntent this tab holds for the same login: handed out
    again (not counted again) instead of asking Stripe for a new one.
    """
    current = service.get_subscription(session=session, user=user)
    if current is not None and current.is_live:
        return None
    return service.create_setup_intent(
        session=session, user=user, client_address=client_address, reuse=reusable or None
    )


class CheckoutState(AuthState):
    """The checkout page: card Element, subscribe, 3-D Secure, result.

    Nothing here waits on Stripe while holding the tab's state lock: the events that call
    Stripe are background events, which take the lock (`async with self`) only to read what
    they need and to write their answer. The card Element is mounted by the page itself, and
    the Subscribe button calls Stripe.js directly (`checkout.js`); the server hears from
    the browser once, with the payment method id, and answers once.
    """

    setup_client_secret: str = ""  # for Stripe.js only; not a secret key
    card_loaded: bool = False  # the card Element is in the page (the browser said so)
    # Which press of Subscribe the form is ready for. The page marks the attempt it pressed
    # (busy until this number moves on), and checkout.js confirms each attempt once; every
    # answer other than success moves it on, which frees the button.
    attempt: int = 0
    processing: bool = False  # the bank's 3-D Secure check is open in the page
    error: str = ""
    succeeded: bool = False
    pending: bool = False
    already_subscribed: bool = False
    # What the page needs to load Stripe.js and mount the card Element (public values).
    publishable_key: str = service.publishable_config()["publishable_key"]
    stripe_js_url: str = service.publishable_config()["js_url"]
    # Backend-only: the login session `setup_client_secret` was made for (a secret is
    # reused, unconfirmed, only for that login), and whether a card answer is being handled.
    _setup_owner: str = ""
    _submitting: bool = False
    # The PaymentIntent whose 3-D Secure check this page opened: only that attempt is
    # settled when the check ends (another tab may have started a newer one meanwhile).
    _confirming: str = ""

    @rx.var
    def card_ready(self) -> bool:
        """The card form may be submitted: a SetupIntent is behind it.

        Not waiting for the browser's word that the Element is mounted (a round trip that
        can queue behind the page's other events): it mounts by itself as the page shows,
        and a press before that gets checkout.js's "not ready yet".
        """
        return self.setup_client_secret != ""

    def _reset(self) -> None:
        self.error = ""
        self.processing = self.succeeded = self.pending = self.already_subscribed = False
        self.attempt += 1  # a press on the page as it was does not count any more

    async def _who(self) -> tuple[str, str | None]:
        """This tab's login session and client address (call inside `async with self`)."""
        auth = await self.get_state(AuthState)
        return auth._session_ref(), self._client_address()

    def _reconnected(self) -> None:
        """The owner's page connected again (`TabGuard`): a card answer of the page before
        no longer holds this one's (it may have died with its worker; one still running is
        kept from charging twice by the subscribe lock, not by this flag)."""
        self._submitting = False

    def _reusable_secret(self, ref: str) -> str:
        """The unconfirmed SetupIntent made for this very login, if any."""
        return self.setup_client_secret if ref and self._setup_owner == ref else ""

    @rx.event(background=True)
    async def prefetch(self):
        """Have a SetupIntent ready before the checkout page asks (from the plan page).

        Quiet: a refusal (card-testing limit, Stripe down, logged out) is for the checkout
        page to say. Nothing is made for a person who already has a live subscription, nor
        when this tab already holds an unused one.
        """
        async with self:
            ref, address = await self._who()
            if not ref or self._reusable_secret(ref):
                return
        try:
            secret = await asyncio.to_thread(
                call_as_user, ref, lambda s, u: _checkout_setup(s, u, address, "")
            )
        except (SessionEnded, AppError):
            return
        async with self:
            if secret and not self._reusable_secret(ref) and not self._submitting:
                self.setup_client_secret, self._setup_owner = secret, ref

    @rx.event(background=True)
    async def prepare(self):
        """On load: refuse a second subscription, else have a SetupIntent behind the card.

        An unconfirmed SetupIntent this tab already holds for the same login (made by
        `prefetch` or an earlier visit) is used again instead of a new one.
        """
        async with self:
            self._reset()
            ref, address = await self._who()
            reusable = self._reusable_secret(ref)
            if not reusable:
                self.setup_client_secret = ""
            target = self._to_login()
        try:
            secret = await self._as_user(ref, lambda s, u: _checkout_setup(s, u, address, reusable))
        except SessionEnded:
            return target
        except AppError as exc:
            async with self:
                self.error, self.setup_client_secret = exc.message, ""
            return None
        async with self:
            if secret is None:
                self.already_subscribed = True
            else:
                self.setup_client_secret, self._setup_owner = secret, ref
        return None

    @rx.event
    def card_mounted(self, result: Any):
        """Stripe.js answered the page's mount call."""
        if result == "ok":
            self.card_loaded = True
        else:
            self.error = str(result or "The card form could not be loaded.")

    @rx.event(background=True)
    async def card_confirmed(self, result: Any):
        """Stripe.js confirmed the card (pressed Subscribe): start the subscription.

        `result` is checkout.js's answer: {payment_method_id}, {error, card_refused, renew}
        or {ignored} (a second press of the same attempt, which changes nothing). The answer
        reaches the page in one update.
        """
        result = result if isinstance(result, dict) else {}
        if result.get("ignored"):
            return None
        async with self:
            if self._submitting or self.succeeded or self.already_subscribed:
                return None  # one answer per attempt; the first is being handled
            self._submitting = True
            if result.get("payment_method_id"):
                self._setup_owner = ""  # confirmed now: this SetupIntent cannot check another
            ref, address = await self._who()
            target = self._to_login()
        answer: Callable[[], Any] | None = None
        try:
            answer = await self._answer_card(ref, address, result)
        except SessionEnded:
            return target
        finally:
            # Whatever happened (an unexpected error included), the button works again,
            # unless the bank's 3-D Secure check is now open in the page.
            async with self:
                # Only to the login it was done for (the tab's token may have been taken up
                # by another connection meanwhile): the answer may carry a payment's secret.
                mine = answer is not None and await self._still_logged_in_as(ref)
                bank_check = answer() if mine and answer is not None else None
                self._submitting = False
                self._end_press(bank_check is not None)
        return bank_check

    def _end_press(self, bank_check: bool) -> None:
        """The press is answered: free the button, unless the bank's check is now open."""
        if self.processing != bank_check:
            self.processing = bank_check
        if not bank_check and not self.succeeded:
            self.attempt += 1

    async def _answer_card(self, ref: str, address: str | None, result: dict) -> Callable[[], Any]:
        """The work of `card_confirmed`, holding no lock.

        Returns what to write into the state (under the lock): a function that returns the
        3-D Secure script when the bank asks for it.
        """
        if result.get("error") or not result.get("payment_method_id"):
            message = str(result.get("error") or "Your card could not be used.")
            secret: str | None = None  # None: keep the SetupIntent the form has
            if result.get("card_refused") is True:
                # A card Stripe refused counts as a card attempt; an incomplete form or a
                # network error does not.
                try:
                    await self._as_user(
                        ref,
                        lambda s, u: service.record_card_failure(user=u, client_address=address),
                    )
                except AppError as exc:
                    # Over the card-testing limit: say so, and take the card form away.
                    message, secret = exc.message, ""
                else:
                    # Stripe's decline event cancels this SetupIntent (one declined card per
                    # form, `card_testing`): the next card goes on a new one. None when this
                    # was the last card attempt: the decline, then why no form follows.
                    renewed, secret = await self._new_setup_intent(ref, address, message)
                    if renewed != message:
                        message = f"{message} {renewed}"
            if secret is None and result.get("renew") is True:
                # Stripe will not take this SetupIntent any more (used in another tab, or
                # cancelled after too many declined cards): the form gets a new one. Stripe's
                # own words ("invalid request") would ask the person to check their card.
                message, secret = await self._new_setup_intent(ref, address, FORM_EXPIRED)
            return lambda: self._show_error(message, secret, ref)
        payment_method_id = str(result["payment_method_id"])
        try:
            outcome = await self._as_user(
                ref,
                lambda s, u: service.start_subscription(
                    session=s, user=u, payment_method_id=payment_method_id, client_address=address
                ),
            )
        except service.AlreadySubscribed as exc:
            refusal = exc.message  # `exc` is gone once this block ends
            return lambda: self._show_already_subscribed(refusal)
        except AppError as exc:
            message, secret = await self._after_failure(ref, address, exc)
            return lambda: self._show_error(message, secret, ref)
        return lambda: self._settle(outcome)

    def _show_error(self, message: str, secret: str | None, ref: str) -> None:
        self.error = message
        if secret is not None:
            self.setup_client_secret, self._setup_owner = secret, ref if secret else ""

    def _show_already_subscribed(self, message: str) -> None:
        self.error, self.already_subscribed = message, True

    async def _after_failure(self, ref: str, address: str | None, exc: AppError) -> tuple[str, str]:
        """The message for a failed attempt, and the SetupIntent for the next ("": none)."""
        if exc.kind == "limited":
            return exc.message, ""  # no card form without attempts left to use it
        # The old SetupIntent is used up after a confirm.
        return await self._new_setup_intent(ref, address, exc.message)

    async def _new_setup_intent(
        self, ref: str, address: str | None, message: str
    ) -> tuple[str, str]:
        """A new SetupIntent for the form: (message to show, its secret or "" if refused)."""
        try:
            secret = await self._as_user(
                ref,
                lambda s, u: service.create_setup_intent(session=s, user=u, client_address=address),
            )
        except AppError as exc:
            return exc.message, ""
        return message, secret

    def _settle(self, outcome: service.SubscribeResult):
        """Show the outcome; a script to run when the bank asks for 3-D Secure, else None."""
        if outcome.status == "requires_action" and outcome.client_secret:
            self._confirming = outcome.client_secret.partition("_secret_")[0]
            return rx.call_script(
                _js_call("confirmPayment", outcome.client_secret),
                callback=CheckoutState.payment_confirmed,
            )
        self.succeeded = True
        self.pending = outcome.status == "processing"
        return None

    @rx.event(background=True)
    async def payment_confirmed(self, result: Any):
        """3-D Secure finished in the browser (either way): ask Stripe what happened."""
        async with self:
            ref, address = await self._who()
            target = self._to_login()
            intent = self._confirming or None
        answer: Callable[[], Any] | None = None
        try:
            try:
                outcome = await self._as_user(
                    ref,
                    lambda s, u: service.confirm_subscription(
                        session=s, user=u, payment_intent_id=intent
                    ),
                )
            except AppError as exc:
                message, secret = await self._after_failure(ref, address, exc)
                answer = lambda: self._show_error(message, secret, ref)  # noqa: E731
            else:
                answer = lambda: self._settle(outcome)  # noqa: E731
        except SessionEnded:
            return target
        finally:
            async with self:
                # Only to the login it was done for: after a failure the answer carries a
                # new SetupIntent's secret on the person's customer (`card_confirmed`).
                if answer is not None and await self._still_logged_in_as(ref):
                    answer()
                self._end_press(False)
        return None


CHECKOUT_CANCELLED = "Checkout was cancelled. You have not been charged."


class PlanState(AuthState):
    """The plan page: the Stripe Checkout button, and what happened on Checkout's page."""

    notice: str = ""
    checkout_error: str = ""
    redirecting: bool = False

    @rx.event
    async def load(self):
        """On load: say so when the person came back from Checkout's page with "Back".

        For a logged-in person, the card form's SetupIntent is prepared meanwhile
        (`CheckoutState.prefetch`), so the checkout page has it when it opens.
        """
        await self._refresh_user()
        self.redirecting, self.checkout_error = False, ""
        cancelled = self.router.url.query_parameters.get("checkout") == "cancelled"
        self.notice = CHECKOUT_CANCELLED if cancelled else ""
        return CheckoutState.prefetch if self.logged_in else None

    @rx.event(background=True)
    async def start_checkout(self):
        """ "Subscribe with Stripe Checkout": off to Stripe's page (via login if needed).

        A background event: the button shows its progress at once, and the tab's other
        events (Log out, the next page) do not queue behind the Stripe calls.
        """
        async with self:
            if not self.logged_in:
                return rx.redirect(f"{routes.LOGIN}?next={routes.PLAN}")
            if self.redirecting:
                return None
            self.redirecting, self.checkout_error, self.notice = True, "", ""
            ref = (await self.get_state(AuthState))._session_ref()
            # Back to the plan itself, not `?checkout=cancelled` (its notice is history now).
            target = self._leave(routes.login_then(routes.PLAN))
        try:
            url = await self._as_user(ref, lambda s, u: service.start_checkout(session=s, user=u))
        except SessionEnded:
            async with self:
                self.redirecting = False
            return target
        except AppError as exc:
            async with self:
                self.redirecting, self.checkout_error = False, exc.message
            return None
        except BaseException:
            async with self:
                self.redirecting = False
            raise
        async with self:
            if not await self._still_logged_in_as(ref):
                self.redirecting = False
                return None  # logged out meanwhile (Log out no longer waits for Stripe)
        return rx.redirect(url)  # another host: the browser leaves for Stripe's page


class CheckoutReturnState(AuthState):
    """The page Stripe Checkout returns to: records the subscription at once."""

    result: str = ""  # "active", "processing" or "" (see error)
    error: str = ""
    already_subscribed: bool = False

    @rx.event(background=True)
    async def complete(self):
        """On load: fetch the Checkout Session from Stripe and record its subscription.

        A background event: no state lock is held while Stripe answers.
        """
        async with self:
            self.result, self.error, self.already_subscribed = "", "", False
            checkout_session_id = self.router.url.query_parameters.get("session_id", "")
            ref = (await self.get_state(AuthState))._session_ref()
            target = self._to_login()
        try:
            outcome = await self._as_user(
                ref,
                lambda s, u: service.complete_checkout(
                    session=s, user=u, checkout_session_id=checkout_session_id
                ),
            )
        except SessionEnded:
            return target
        except service.AlreadySubscribed as exc:
            async with self:
                self.error, self.already_subscribed = exc.message, True
            return None
        except AppError as exc:
            async with self:
                self.error = exc.message
            return None
        async with self:
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
    # Counts finished cancel/undo actions. The page marks the number it pressed at (the
    # button shows busy, the dialog stays open) until this moves on: no update is sent before
    # the answer.
    action_seq: int = 0
    result_message: str = ""
    action_error: str = ""
    invoices: list[InvoiceView] = []
    invoices_more: bool = False  # older invoices than those listed (in the billing portal)
    invoices_loaded: bool = False
    invoices_error: str = ""
    opening_portal: bool = False
    # "Manage billing" is for someone who has subscribed (the portal's own rule): not while
    # their only subscription is a first payment still waiting.
    can_manage_billing: bool = False
    # Backend-only: the tab's one watcher (see `watch`), and what it last showed.
    _watching: bool = False
    _watch_requested: bool = False
    # The running watcher's own id: a new connection's page starts another (`_reconnected`).
    _watcher: str = ""
    _seen_version: str = ""
    _working: bool = False  # a cancel or undo of this tab is running
    # The watcher held back a wake-up while `_working` (for the user `_watched_user`).
    _held_back: bool = False
    _watched_user: int = 0

    def _reconnected(self) -> None:
        """The owner's page connected again (`TabGuard`): what the page before had running
        no longer holds this one's buttons or live updates.

        Each may have died with its worker (a deploy, a crash), which would otherwise leave
        the page without live updates and its buttons refused for good. A watcher still
        running for the old connection stops at its next turn (it is no longer the tab's
        `_watcher`); the page's load starts one for this connection. A cancel or undo still
        running is kept from acting twice by the subscription's lock and re-check, not by
        `_working`.
        """
        self._watcher = ""
        self._watching = self._working = self._held_back = False
        self.opening_portal = False
        self.action_seq += 1  # a pressed Confirm whose answer died with it is free again

    def _apply(self, data: DashboardView) -> None:
        self.has_subscription = data.subscription is not None
        self.subscription = data.subscription or NO_SUBSCRIPTION
        self.can_manage_billing = data.ever_subscribed
        self.messages, self._seen_version = data.messages, data.version

    @rx.event
    async def load(self):
        """On load: read the subscription, then keep the page up to date."""
        self.result_message = self.action_error = ""
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

    @rx.event(background=True)
    async def load_invoices(self):
        """The invoice history, read from Stripe (after the page has shown the rest).

        A background event: the tab's other events (cancel, undo) never wait on Stripe here.
        """
        async with self:
            ref = (await self.get_state(AuthState))._session_ref()
            target = self._to_login()
        invoices: InvoiceHistory | None = None
        error = ""
        ended = False
        try:
            invoices = await asyncio.to_thread(
                call_as_user, ref, lambda s, u: service.list_invoices(session=s, user=u)
            )
        except SessionEnded:
            ended = True
        except AppError as exc:
            error = exc.message
        finally:
            async with self:
                if invoices is not None:
                    self.invoices, self.invoices_more = invoices.invoices, invoices.has_more
                if not ended:
                    self.invoices_error = error
                else:
                    (await self.get_state(AuthState))._forget()
                self.invoices_loaded = True
        return target if ended else None

    @rx.event(background=True)
    async def open_portal(self):
        """ "Manage billing": off to Stripe's customer portal, which returns here.

        A background event: the button shows its progress at once, a second press while
        it runs is ignored, and no state lock is held while Stripe answers.
        """
        async with self:
            if self.opening_portal:
                return None
            self.opening_portal, self.action_error = True, ""
            ref = (await self.get_state(AuthState))._session_ref()
            target = self._to_login()
        try:
            url = await self._as_user(
                ref, lambda s, u: service.open_billing_portal(session=s, user=u)
            )
        except SessionEnded:
            return target
        except AppError as exc:
            async with self:
                self.action_error = exc.message
            return None
        finally:
            async with self:
                self.opening_portal = False  # (also on success: "Back" from the portal)
        async with self:
            if not await self._still_logged_in_as(ref):
                return None  # logged out meanwhile: never open their portal after that
        return rx.redirect(url)

    async def _refresh_invoices(self, ref: str, connection: str) -> None:
        """Re-read the invoices from the background watcher (which holds no state lock)."""
        try:
            invoices = await asyncio.to_thread(
                call_as_user,
                ref,
                lambda s, u: service.list_invoices(session=s, user=u, asked=False),
            )
        except AppError:
            return  # keep showing the last list; the next change tries again
        async with self:
            if await self._connection_for(ref, connection) is not None:
                self.invoices, self.invoices_more = invoices.invoices, invoices.has_more

    async def _connection_for(self, ref: str, connection: str) -> str | None:
        """The tab's connection, if it still shows the login `ref` the watcher reads for;
        else None (call it under `async with self`). Another connection holding the tab's
        token (a reconnect, or someone else) gets the watcher's updates only for the login
        it proved itself."""
        current = self.router.session.session_id
        if current == connection:
            return current
        # A new connection counts only once an event of its own has proved the login
        # (`_remember`): never by the request headers the old connection left behind.
        auth = await self.get_state(AuthState)
        if auth._auth_connection == current and auth._auth_session_id == ref:
            return current
        return None

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
            me = self._watcher = uuid.uuid4().hex
            ref = (await self.get_state(AuthState))._session_ref()
            connection = self.router.session.session_id

        def mine() -> bool:
            """This watcher is still the tab's (call inside `async with self`)."""
            return self._watcher == me

        try:
            user_id = await asyncio.to_thread(call_as_user, ref, lambda s, u: u.id)
            async with self:
                self._watched_user = user_id
            deadline = time.monotonic() + WATCH_SECONDS
            # A change of this tab's own cancel or undo, held back (see below): the invoices
            # are re-read once the action has answered.
            held_back = False
            with changes.listen(user_id) as listener:
                while True:
                    async with self:
                        if not mine():
                            return  # a new connection's page has a watcher of its own
                        if self._watch_requested:  # the page was loaded again: keep going
                            self._watch_requested = False
                            deadline = time.monotonic() + WATCH_SECONDS
                        here = self.router.url.path.startswith(routes.DASHBOARD)
                        if not here or time.monotonic() >= deadline:
                            self._watching = False
                            return
                    # Pushed, not polled: an idle page reads nothing until a change of this
                    # user is published (by any worker); the timeout only re-checks the
                    # deadline and whether the tab is still on the dashboard.
                    if not await listener.wait(IDLE_RECHECK_SECONDS):
                        continue
                    async with self:
                        still = await self._connection_for(ref, connection)
                        if still is None or not mine():
                            return  # (`finally` marks the watcher stopped)
                        connection = still
                        if self._working:
                            # This tab's own cancel or undo is answering with the page as it
                            # is after its change; reading it here too would only delay that
                            # answer. It wakes us again when it is done (`_act`).
                            self._held_back, held_back = True, True
                            continue
                        invoices_shown = self.invoices_loaded
                    try:
                        data = await asyncio.to_thread(call_as_user, ref, _dashboard)
                    except SessionEnded:
                        raise
                    except Exception:  # database hiccup: try again next round
                        logger.warning(
                            "dashboard watcher could not read the database", exc_info=True
                        )
                        continue
                    refresh_invoices, held_back = held_back, False
                    async with self:
                        if await self._connection_for(ref, connection) is None:
                            return
                        # Compared with what the page shows now (an action of the tab may
                        # have shown this very version meanwhile).
                        if data.version != self._seen_version:
                            self._apply(data)
                            # Something changed (a payment, say): the invoices may have too.
                            refresh_invoices = True
                    if refresh_invoices and invoices_shown:
                        await self._refresh_invoices(ref, connection)
        except SessionEnded:
            async with self:
                if not mine():
                    return None  # the tab has moved on to another connection's watcher
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
                if mine():
                    self._watching = False

    @rx.event
    def set_cancel_when(self, value: str):
        """The "when should it end" choice."""
        if value in (CANCEL_AT_PERIOD_END, CANCEL_NOW):
            self.cancel_when = value

    @rx.event
    def open_cancel_dialog(self):
        """The cancel dialog opens (the page opens it itself): clear an earlier error."""
        self.action_error = ""

    async def _act(
        self, choose: Callable[[], Callable[[Session, User], service.CancelResult]]
    ) -> AsyncIterator[Any]:
        """Run a cancel or undo for the user and show its result and the page as it is now.

        `choose` (called under the lock) gives the service call. A background event's work:
        the state lock is held only to read and to write the answer, never while Stripe is
        asked. Nothing is sent to the page before the answer (the page shows the pressed
        button busy by itself, until `action_seq` moves on). One action at a time per tab.
        """
        async with self:
            if self._working:
                return
            self._working = True
            fn = choose()
            ref = (await self.get_state(AuthState))._session_ref()
            target = self._to_login()

        def act_and_read(session: Session, user: User) -> tuple[str, str, DashboardView]:
            try:
                message, error = fn(session, user).message, ""
            except AppError as exc:
                session.rollback()  # as the refused call's own transaction would have been
                message, error = "", exc.message
            # Show what is true now, also after a refusal (another tab may have acted).
            return message, error, _dashboard(session, user)

        answer: tuple[str, str, DashboardView] | None = None
        failure: AppError | None = None
        ended = False
        try:
            answer = await asyncio.to_thread(call_as_user, ref, act_and_read)
        except SessionEnded:
            ended = True
        except AppError as exc:
            failure = exc
        finally:
            # An unexpected error too must leave the buttons usable and the dialog closed.
            async with self:
                self._working = False
                if self._held_back:  # the watcher skipped this change: it may look now
                    self._held_back = False
                    changes.wake_here([self._watched_user])
                self.action_seq += 1
                # Only to the login it was done for: the tab's token may have been taken up
                # by another connection meanwhile (the owner's tab closed).
                if answer is not None and await self._still_logged_in_as(ref):
                    self.result_message, self.action_error, data = answer
                    self._apply(data)
                elif failure is not None:
                    self.result_message, self.load_error = "", failure.message
                elif ended:
                    (await self.get_state(AuthState))._forget()
        if ended:
            yield target

    @rx.event(background=True)
    async def confirm_cancel(self, when: str):
        """Cancel as chosen (`when`: what the dialog showed), and show the result at once."""

        def choose() -> Callable[[Session, User], service.CancelResult]:
            choice = when if when in (CANCEL_AT_PERIOD_END, CANCEL_NOW) else self.cancel_when
            at_period_end = choice != CANCEL_NOW
            return lambda s, u: service.cancel_subscription(
                session=s, user=u, at_period_end=at_period_end
            )

        async for update in self._act(choose):
            yield update

    @rx.event(background=True)
    async def undo_cancel(self):
        """Keep the subscription after all (before the period ends)."""
        async for update in self._act(
            lambda: lambda s, u: service.resume_subscription(session=s, user=u)
        ):
            yield update
