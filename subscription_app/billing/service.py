"""Billing services: the functions the Reflex states and the REST routes call.

Each takes keyword arguments and a database session, talks to Stripe through the one
configured client, and records what Stripe answered. Errors a user can act on are raised as
`BillingError` with a message fit to show them; nothing raised here carries a Stripe secret
or another user's data.

The caller owns the transaction and commits it (`api/deps.get_session`, `state.auth
.call_as_user`). A service commits early only where a durable write must come before a call
to Stripe, or before waiting for a lock; each place says so. (`billing/sync.py` also commits
its writes before releasing a subscription's lock.)
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypeVar

import stripe
from sqlmodel import Session

from subscription_app import locks, notifications, ratelimit, routes
from subscription_app.billing import card_testing, catalog, repository, sync
from subscription_app.billing.client import get_client
from subscription_app.billing.errors import AlreadySubscribed, BillingError, NotSetUp
from subscription_app.billing.reader import (
    APP_METADATA,
    SubscriptionSnapshot,
    read_checkout_session,
    read_invoice_record,
    read_payment_intent,
    read_subscription,
)
from subscription_app.billing.views import (
    PERIOD_END_FALLBACK,
    DashboardView,
    InvoiceHistory,
    SubscriptionView,
    format_date,
    invoice_view_of,
)
from subscription_app.models import SubscriptionStatus, User
from subscription_app.settings import get_settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

PAYMENT_METHOD_ID = re.compile(r"pm_[A-Za-z0-9_]{1,200}")  # whole string: fullmatch
# Expansions of the subscription's first invoice, in today's API shape.
SUBSCRIPTION_EXPAND = ["latest_invoice.confirmation_secret", "latest_invoice.payments"]

MESSAGES = {
    "card_declined": "Your card was declined. Try another card.",
    "generic_decline": "Your card was declined. Try another card.",
    "insufficient_funds": "Your card has insufficient funds. Try another card.",
    "expired_card": "Your card has expired. Try another card.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "invalid_cvc": "Your card's security code is incorrect.",
    "incorrect_number": "Your card number is incorrect.",
    "invalid_number": "Your card number is incorrect.",
    "invalid_expiry_month": "Your card's expiration date is incorrect.",
    "invalid_expiry_year": "Your card's expiration date is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again.",
    "authentication_required": "Your bank asked for authentication, which did not complete.",
    "payment_intent_authentication_failure": (
        "Card authentication failed. Your subscription was not started."
    ),
}
UNAVAILABLE = (
    "We could not reach our payment provider. Nothing was charged; please try again in a minute."
)
# Stripe could not be reached after a payment may have been made (the create call was sent,
# or the bank's check finished): "nothing was charged" may be false. A retry is safe: it
# gets the same subscription back, or finds it (`_adopt_unrecorded`), and charges once.
UNCONFIRMED = (
    "We could not reach our payment provider to confirm your payment. Check your dashboard "
    "in a minute before trying again; you will not be charged twice."
)
AUTHENTICATION_FAILED = "Card authentication failed. Your subscription was not started."
ATTEMPT_IN_PROGRESS = (
    "Another change to your subscription is still in progress. Please try again in a moment."
)
STILL_PROCESSING = (
    "Your previous payment is still being processed. Check your dashboard in a minute."
)
BILLING_ACCOUNT_MISSING = (
    "Your billing account could not be found at Stripe. Please contact us and we will sort it out."
)
CHANGE_REFUSED = (
    "Stripe did not accept this change to your subscription. Use Manage billing, or contact "
    "us if it still does not work."
)
CHANGED_MEANWHILE = (
    "Your subscription was changed meanwhile (in another window or the billing portal). "
    "It is shown as it is now: please try again if you still want to."
)
CHECKOUT_ENDED = (
    "The subscription from that checkout has already ended. See your dashboard, or subscribe again."
)
# In the person's messages (and email) when the card-testing limit undoes their attempt: the
# dashboard would otherwise show it only as expired, with no reason.
ATTEMPT_STOPPED = (
    "We stopped your subscription attempt because too many cards were declined. Nothing was "
    "charged. You can try again later."
)
ATTEMPT_REPLACED = (
    "This attempt was replaced by a newer one started in another window. "
    "Finish that one, or check your dashboard."
)


@dataclass(frozen=True)
class SubscribeResult:
    """Outcome of a subscribe attempt.

    `status` is "active" (done), "requires_action" with `client_secret` for the browser's
    `confirmCardPayment` (3-D Secure), after which `confirm_subscription` gives the answer, or
    "processing" (the payment went through; Stripe's webhook will activate it shortly).
    Failures are raised as `BillingError`.
    """

    status: Literal["active", "requires_action", "processing"]
    subscription: SubscriptionView | None
    client_secret: str | None = None


def _card_message(code: str | None, fallback: str | None) -> str:
    if code and code in MESSAGES:
        return MESSAGES[code]
    return fallback or MESSAGES["card_declined"]


def _translate(
    exc: stripe.StripeError, *, about_account: bool = False, payment_sent: bool = False
) -> BillingError:
    """Turn a Stripe error into one a user may read (and log what they may not).

    `about_account`: the call names only the person's Stripe customer (the billing portal,
    the invoice list), so "not found" is about that account, not a payment method.
    `payment_sent`: a payment may have been made (see UNCONFIRMED).
    """
    if isinstance(exc, stripe.CardError):
        error = exc.error
        code = getattr(error, "decline_code", None) or exc.code
        return BillingError(_card_message(code, exc.user_message), kind="card")
    if isinstance(exc, stripe.InvalidRequestError) and exc.code == "resource_missing":
        if about_account:
            # Our link names a customer this Stripe account does not know (another
            # account's key deployed, say): nothing the person can fix.
            logger.error("Stripe does not know the linked customer (param %s)", exc.param)
            return BillingError(BILLING_ACCOUNT_MISSING, kind="conflict")
        if "price" in (exc.param or ""):
            # The plan's price is not in this Stripe account (a test-mode id deployed with a
            # live key, a deleted price): the operator must act, and everyone trying would
            # otherwise be told their card was not found. A lookup-key price is looked up
            # afresh next time.
            catalog.forget_default_price()
            detail = (
                f"Stripe does not know the plan's price (param {exc.param}). Set "
                "STRIPE_PRICE_ID to a price of this Stripe account, in the key's mode."
            )
            logger.error(detail)
            return NotSetUp(detail)
        return BillingError("That payment method was not found.", kind="invalid")
    logger.error("Stripe call failed: %s (%s)", type(exc).__name__, exc.code or "no code")
    if isinstance(exc, stripe.InvalidRequestError):
        return BillingError("The payment details were not accepted. Please try again.")
    return BillingError(UNCONFIRMED if payment_sent else UNAVAILABLE, kind="unavailable")


def validate_payment_method_id(payment_method_id: object) -> str:
    """Check the form of a payment method id (`pm_...`)."""
    if not isinstance(payment_method_id, str) or not PAYMENT_METHOD_ID.fullmatch(payment_method_id):
        raise BillingError(
            "payment_method_id must be a Stripe payment method id (pm_...).", kind="invalid"
        )
    return payment_method_id


def _id(user: User) -> int:
    """A stored user's id (a `User` reaching a service was read from the database)."""
    if user.id is None:
        raise ValueError("the user has not been saved")
    return user.id


def ensure_customer(
    *, session: Session, user: User, client: stripe.StripeClient | None = None
) -> str:
    """The user's Stripe customer id, creating the customer on first use.

    The idempotency key makes a concurrent or retried first call create one customer only.
    """
    user_id = _id(user)
    existing = repository.customer_id_for_user(session, user_id)
    if existing:
        return existing
    client = client or get_client()
    try:
        customer = client.v1.customers.create(
            params={"email": user.email, "metadata": {"user_id": str(user_id)}},
            # Unique per account even if a database is reset and ids are reused.
            options={"idempotency_key": f"customer-{user_id}-{user.created_at.timestamp():.6f}"},
        )
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    saved = repository.save_customer(session, user_id, customer.id)
    # Durable before any further Stripe call: whatever happens next, a retry must find this
    # customer rather than rely on the idempotency key (which Stripe forgets after 24 hours).
    session.commit()
    return saved


def _replaced_if_gone(session: Session, user: User, exc: stripe.InvalidRequestError) -> bool:
    """After Stripe said something is missing: if it is the person's customer (deleted in the
    Stripe dashboard), link a new customer in its place and say so (the caller retries
    once); otherwise False, and the error stands.

    Without this, every later attempt of that person failed for good, with a message about
    a payment method.
    """
    if exc.code != "resource_missing":
        return False
    customer_id = repository.customer_id_for_user(session, _id(user))
    if customer_id is None:
        return False
    client = get_client()
    # Stripe still finds a deleted customer, as `{"deleted": true}`. One it does not find at
    # all belongs to another account or mode (a wrong key deployed): never replaced, or
    # every person would be moved to a new customer until the right key is back.
    try:
        if not getattr(client.v1.customers.retrieve(customer_id), "deleted", False):
            return False
    except stripe.InvalidRequestError:
        logger.error("a person's Stripe customer is unknown to this Stripe account (its key?)")
        return False
    logger.warning("a person's Stripe customer was deleted; linking a new one")
    created = client.v1.customers.create(
        params={"email": user.email, "metadata": {"user_id": str(user.id)}},
        # Not the first customer's key: Stripe would hand back the deleted customer.
        options={"idempotency_key": f"customer-{user.id}-after-{customer_id}"},
    )
    repository.replace_customer(session, _id(user), customer_id, created.id)
    session.commit()
    return True


def _with_customer_replaced_if_gone(session: Session, user: User, call: Callable[[], T]) -> T:
    """Run `call`; if Stripe says something is missing because the person's customer was
    deleted (`_replaced_if_gone` links a new one), run it once more."""
    try:
        return call()
    except stripe.InvalidRequestError as exc:
        if not _replaced_if_gone(session, user, exc):
            raise
        return call()


def _limit(check: Callable[..., None], user: User, client_address: str | None) -> None:
    """Count a card-testing limit for `user` (and their address); a `BillingError` when over."""
    try:
        check(account=f"user:{user.id}", client_address=client_address)
    except ratelimit.RateLimited as exc:
        raise BillingError(exc.message, kind="limited", retry_after=exc.retry_after) from exc


def _limit_stripe_requests(user: User) -> None:
    """Count a Stripe call of `user`'s own request (`ratelimit.before_stripe_request`); a
    `BillingError` ("limited") when over.

    A store that cannot be reached lets the call through (logged): this limit guards a
    budget, and the person's invoices or paid Checkout must not fail with it (the card
    limits, which stop card testing, do fail closed).
    """
    try:
        ratelimit.before_stripe_request(account=f"user:{user.id}")
    except ratelimit.RateLimited as exc:
        raise BillingError(exc.message, kind="limited", retry_after=exc.retry_after) from exc
    except Exception:
        logger.warning("could not count a Stripe request against the limit; letting it through")


def _limit_declines(session: Session, user: User) -> None:
    """Refuse (`BillingError`, "limited") a person whose card checks Stripe declined too
    often, as its webhooks told us (`card_testing`), whatever our page saw."""
    seconds = card_testing.retry_after(session, user_id=_id(user))
    if seconds is not None:
        limited = ratelimit.RateLimited(seconds, ratelimit.CARD_ATTEMPTS)
        raise BillingError(limited.message, kind="limited", retry_after=limited.retry_after)


def create_setup_intent(
    *,
    session: Session,
    user: User,
    client_address: str | None = None,
    reuse: str | None = None,
) -> str:
    """A SetupIntent for the user's customer; returns its client secret for Stripe.js.

    Each one lets a browser check a card at Stripe, so they are limited per person and per
    client address (card testing). `reuse` is the client secret of an unconfirmed SetupIntent
    this person's tab already holds for the same login (the plan page prepared it ahead): it
    is handed back without asking Stripe and is not counted again, since it lets the browser
    check no more cards than before (refused cards are counted by `record_card_failure`), but
    it is refused like a new one to a person with no card attempts left.
    """
    _limit_declines(session, user)
    if reuse:
        # Still no card form for a person with no card attempts left.
        _limit(ratelimit.check_card_attempts_left, user, client_address)
        return reuse
    _limit(ratelimit.before_setup_intent, user, client_address)

    def create() -> stripe.SetupIntent:
        return get_client().v1.setup_intents.create(
            params={
                "customer": ensure_customer(session=session, user=user),
                "usage": "off_session",
                # `payment_method_types` in API versions before 2026-10 (the emulator takes both).
                "allowed_payment_method_types": ["card"],
                # Our card form's, not the portal's: only these are cancelled after one
                # decline (`card_testing.stop_this_card_check`).
                "metadata": {**APP_METADATA, "user_id": str(_id(user))},
            }
        )

    try:
        intent = _with_customer_replaced_if_gone(session, user, create)
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    if not intent.client_secret:  # Stripe always returns one on create
        raise BillingError(UNAVAILABLE, kind="unavailable")
    return intent.client_secret


def get_subscription(*, session: Session, user: User) -> SubscriptionView | None:
    """The user's current subscription (live first), or None."""
    return repository.current_subscription(session, _id(user))


def _payment_of(client: stripe.StripeClient, snapshot: SubscriptionSnapshot):
    payment = snapshot.payment
    if payment and payment.payment_intent_id and payment.status is None:
        # Today's API names the PaymentIntent on the invoice; its status needs a read.
        intent = client.v1.payment_intents.retrieve(payment.payment_intent_id)
        return read_payment_intent(intent)
    return payment


def _abandon(
    client: stripe.StripeClient, session: Session, user: User, snapshot: SubscriptionSnapshot
) -> SubscriptionSnapshot | None:
    """Undo an attempt whose first payment has not gone through; record what Stripe says.

    Its open first invoice is voided first, so the payment can no longer complete: only then
    is the attempt cancelled, which can therefore never end a subscription paid for between
    our read and the cancel (3-D Secure finished in another tab, say). Returns None once
    undone (or ended by the void), or Stripe's state now if the invoice was paid meanwhile,
    when nothing is undone.
    """
    voided = _void_first_invoice(client, snapshot)
    after = sync.sync_subscription(
        session=session, subscription_id=snapshot.id, user_id=_id(user), expand=SUBSCRIPTION_EXPAND
    ).snapshot
    if not voided:
        return after
    if after.status == "incomplete":
        try:
            sync.change_subscription(
                session=session,
                subscription_id=snapshot.id,
                user_id=_id(user),
                call=lambda client: client.v1.subscriptions.cancel(snapshot.id),
            )
        except stripe.InvalidRequestError:
            # Ended meanwhile (expired, or the void's end reached Stripe's answer late):
            # Stripe refuses to cancel what has ended. Record what it has; nothing to undo.
            ended = sync.sync_subscription(
                session=session, subscription_id=snapshot.id, user_id=_id(user)
            ).snapshot
            if ended.status == "incomplete":
                raise
    return None


def _settle_open_attempts(client: stripe.StripeClient, session: Session, user: User) -> int:
    """Before a new attempt: refuse if the person has a subscription, else clear the way.

    An earlier attempt still `incomplete` (waiting for 3-D Secure) is cancelled in Stripe
    before a new one starts: the person chose another card, so the new attempt wins. One
    whose payment is already processing is left alone and the new attempt is refused.
    Returns how many attempts were undone.
    """
    undone = 0
    for current in repository.open_subscriptions(session, _id(user)):
        if SubscriptionStatus(current.status).is_live:
            raise AlreadySubscribed()
        synced = sync.sync_subscription(
            session=session,
            subscription_id=current.id,
            user_id=_id(user),
            expand=SUBSCRIPTION_EXPAND,
        )
        snapshot = synced.snapshot
        if SubscriptionStatus(snapshot.status).is_live:
            raise AlreadySubscribed()
        if snapshot.status != "incomplete":
            continue  # expired or cancelled meanwhile: nothing in the way
        payment = _payment_of(client, snapshot)
        if payment and payment.status in ("processing", "succeeded"):
            raise BillingError(STILL_PROCESSING, kind="conflict")
        paid_meanwhile = _abandon(client, session, user, snapshot)
        if paid_meanwhile is not None:  # 3-D Secure finished in another tab after our read
            if SubscriptionStatus(paid_meanwhile.status).is_live:
                raise AlreadySubscribed()
            raise BillingError(STILL_PROCESSING, kind="conflict")
        undone += 1
    return undone


def stop_first_payments(*, session: Session, user: User) -> None:
    """Undo the person's attempt still waiting for its first payment, if there is one.

    For the card-testing limit (`card_testing`): such an attempt's PaymentIntent has its
    client secret in the person's browser (for 3-D Secure), and with it a script can have
    Stripe check card after card. It is undone exactly as a new attempt undoes an earlier
    one (`_settle_open_attempts`, under the person's lock): its invoice voided first, so a
    payment that went through meanwhile is kept, and one whose payment is under way is left
    alone. A refusal from Stripe for the attempt is logged, not raised: the person stays
    refused by the limit either way, and the webhook processor would only retry for nothing.
    The person is told (`ATTEMPT_STOPPED`) once their attempt is undone.
    """
    session.commit()  # hold no transaction while waiting for the lock
    try:
        with sync.subscriber_lock(_id(user)):
            if _settle_open_attempts(get_client(), session, user):
                # Under the lock: of two processors at the limit, only the first finds one.
                notifications.tell(
                    session, user_id=_id(user), kind="attempt_stopped", text=ATTEMPT_STOPPED
                )
                session.commit()
    except BillingError:
        pass  # subscribed, or its payment is under way: nothing waits for a first payment
    except stripe.InvalidRequestError as exc:
        session.rollback()
        logger.warning("card testing: could not undo an attempt (%s)", exc.code)


def _void_first_invoice(client: stripe.StripeClient, snapshot: SubscriptionSnapshot) -> bool:
    """Void an abandoned attempt's open first invoice; False if it was paid meanwhile.

    Voided, its payment can no longer complete, so cancelling the attempt after it can never
    cancel a subscription that was just paid for (Stripe refuses to void a paid invoice).
    """
    if not snapshot.latest_invoice_id:
        return True
    try:
        client.v1.invoices.void_invoice(snapshot.latest_invoice_id)
        return True
    except stripe.InvalidRequestError:
        status = client.v1.invoices.retrieve(snapshot.latest_invoice_id).status
        if status == "paid":
            return False
        if status in ("void", "uncollectible"):
            return True  # nothing left to pay on it
        payment = snapshot.payment
        if status == "open" and payment and payment.payment_intent_id:
            # Still open but not voidable: its payment is under way (the bank check finished
            # between our read and the void). Treated as paid: nothing is undone.
            intent = client.v1.payment_intents.retrieve(payment.payment_intent_id)
            if intent.status in ("processing", "succeeded"):
                return False
        raise


def _outcome(
    client: stripe.StripeClient, session: Session, user: User, snapshot: SubscriptionSnapshot
) -> SubscribeResult:
    """Turn a freshly created or re-read subscription into the answer for the person."""
    if SubscriptionStatus(snapshot.status).is_live:
        return SubscribeResult(
            status="active", subscription=repository.current_subscription(session, _id(user))
        )
    if snapshot.status == "incomplete":
        payment = _payment_of(client, snapshot)
        if payment and payment.status in ("requires_action", "requires_confirmation"):
            return SubscribeResult(
                status="requires_action", subscription=None, client_secret=payment.client_secret
            )
        if payment and payment.status in ("processing", "succeeded"):
            return SubscribeResult(
                status="processing",
                subscription=repository.current_subscription(session, _id(user)),
            )
        try:
            paid_meanwhile = _abandon(client, session, user, snapshot)
        except (stripe.StripeError, locks.LockTimeout):
            # The row stays `incomplete`; the next attempt cancels it before starting.
            logger.warning("could not cancel a declined first attempt; the next one will")
        else:
            if paid_meanwhile is not None and paid_meanwhile.status != "incomplete":
                return _outcome(client, session, user, paid_meanwhile)
        raise BillingError(
            _card_message(payment.error_code if payment else None, None), kind="card"
        )
    # incomplete_expired, canceled, ...: the attempt did not produce a subscription.
    raise BillingError("Your subscription could not be started. Please try again.", kind="card")


# Stripe replays a key's first answer for a day, a server error included: a key naming only
# the attempt would answer every retry of that day with one outage. So after Stripe's API
# answers a create with an error it keeps under the key (a 5xx with Stripe's own JSON error,
# or a key refused as used with other details), the person's keys move on (`_key_moved_on`):
# their next request is one of its own, which is safe because whatever an earlier one made is
# found first (`_adopt_unrecorded`, the open Checkout pages listed). A lost answer, or a
# gateway's 5xx (Stripe may still be running the request), moves nothing: the retry is to
# get what Stripe made back under the same key. Counted in the rate limits' store (Redis in
# production, so every worker sees it), kept for two days after the last move (longer than
# Stripe keeps keys, so a count never comes back to a value whose key Stripe still holds).
KEY_MOVES_KEPT_SECONDS = 2 * 24 * 3600


def _key_moves_name(user: User) -> str:
    return f"idempotency-key-moves/{_id(user)}"


def _key_moves(user: User) -> int:
    """How often this person's keys moved on (see above); 0 if the store cannot say (a key
    used again replays, or finds, what it made: never a second charge)."""
    try:
        return ratelimit.storage().get(_key_moves_name(user))
    except Exception:
        logger.warning("could not read idempotency key moves; using the unmoved key")
        return 0


def _key_moved_on(user: User, exc: stripe.StripeError) -> None:
    """After Stripe answered `exc`: if Stripe keeps that answer under the key (see above), the
    person's next request gets a new key. Call it under the person's subscribe lock."""
    status, body = getattr(exc, "http_status", None), getattr(exc, "json_body", None)
    kept = isinstance(exc, stripe.IdempotencyError) or (
        isinstance(status, int) and status >= 500 and isinstance(body, dict) and "error" in body
    )
    if not kept:
        return
    try:
        store, name = ratelimit.storage(), _key_moves_name(user)
        moves = store.get(name)
        store.clear(name)  # so the expiry counts from this move, not the first one
        store.incr(name, KEY_MOVES_KEPT_SECONDS, amount=moves + 1)
    except Exception:  # the person's answer (the Stripe error) matters more
        logger.warning("could not move idempotency keys on", exc_info=True)


def _attempt_key(session: Session, user: User, customer_id: str, payment_method_id: str) -> str:
    # One key per attempt and card: the same until this attempt's subscription is recorded
    # (so a retried request gets the same subscription back from Stripe), new for the next
    # attempt, for another card (a page hands out a new card form after an error) and after
    # a server error Stripe keeps under the key (`_key_moved_on`).
    attempt = repository.attempt_number(session, _id(user))
    parts = f"subscribe:{user.id}:{customer_id}:{attempt}:{payment_method_id}:{_key_moves(user)}"
    return hashlib.sha256(parts.encode()).hexdigest()


# How long Stripe is sure to keep an idempotency key (it keeps them at least 24 hours).
IDEMPOTENCY_KEYS_KEPT = timedelta(hours=23)


def _adopt_unrecorded(
    session: Session, user: User, customer_id: str, *, except_attempt: str | None = None
) -> bool:
    """Record subscriptions Stripe has for this customer that we never got to record.

    Called under the person's subscribe lock before each attempt: our rows may lag behind
    Stripe (a Checkout paid in another tab whose webhook is still to come), and only what
    Stripe says proves that a person has no subscription yet. One made by the attempt
    `except_attempt` (its key, in the subscription's metadata) is left to that attempt's
    retry, which gets it back from Stripe by the same idempotency key and answers as the
    first request would have. True if it recorded any.
    """
    listed = get_client().v1.subscriptions.list(params={"customer": customer_id, "status": "all"})
    kept_since = time.time() - IDEMPOTENCY_KEYS_KEPT.total_seconds()
    adopted = False
    for item in listed.auto_paging_iter():
        metadata = item.metadata.to_dict() if item.metadata else {}
        if (
            except_attempt
            and metadata.get("attempt") == except_attempt
            and item.created > kept_since
        ):
            continue  # (older: Stripe may have forgotten the key, and the retry would not)
        if repository.user_id_for_subscription(session, item.id) is None:
            try:
                sync.sync_subscription(session=session, subscription_id=item.id, user_id=user.id)
            except repository.SecondOpenSubscription:
                # Open beside one we have recorded (made in the Stripe dashboard, say): the
                # person has a subscription already.
                raise AlreadySubscribed() from None
            adopted = True
    return adopted


def _start_locked(
    session: Session, user: User, payment_method_id: str, *, retried: bool = False
) -> SubscribeResult:
    client = get_client()
    customer_id = ensure_customer(session=session, user=user, client=client)
    # No Checkout page may complete from here on; then a Checkout that was paid before (its
    # return page not loaded, its webhook not yet applied) is recorded, and refuses this
    # attempt below instead of being charged beside it.
    expire_open_checkouts(client, customer_id)
    # The key a previous request of this same attempt created its subscription under: that
    # one is left to this retry's idempotency key. Anything else adopted is recorded, which
    # makes this a new attempt with a new key. The key is computed once, unless this request
    # changed something: a webhook recording the excluded subscription meanwhile must not
    # turn this retry into a new attempt creating a second one.
    attempt = _attempt_key(session, user, customer_id, payment_method_id)
    adopted = _adopt_unrecorded(session, user, customer_id, except_attempt=attempt)
    if _settle_open_attempts(client, session, user) or adopted:
        # Something was recorded, or an attempt undone (the one the key would replay, if a
        # webhook recorded it meanwhile): a new attempt, with a new key.
        attempt = _attempt_key(session, user, customer_id, payment_method_id)
    payment_method = client.v1.payment_methods.retrieve(payment_method_id)
    owner = payment_method.customer
    owner_id = owner if isinstance(owner, str) or owner is None else owner.id
    if owner_id is None:
        client.v1.payment_methods.attach(payment_method_id, params={"customer": customer_id})
    elif owner_id != customer_id:
        # Someone else's card: answer exactly as for an unknown one (no probing).
        raise BillingError("That payment method was not found.", kind="invalid")
    client.v1.customers.update(
        customer_id,
        params={"invoice_settings": {"default_payment_method": payment_method_id}},
    )
    try:
        created = client.v1.subscriptions.create(
            params={
                "customer": customer_id,
                "items": [{"price": catalog.default_price_id()}],
                "default_payment_method": payment_method_id,
                "payment_behavior": "allow_incomplete",
                "metadata": {**APP_METADATA, "user_id": str(user.id), "attempt": attempt},
                "expand": SUBSCRIPTION_EXPAND,
            },
            options={"idempotency_key": attempt},
        )
    except stripe.IdempotencyError as exc:
        if retried:  # the key was used before: a subscription may exist
            _key_moved_on(user, exc)
            raise _translate(exc, payment_sent=True) from exc
        # This attempt's key was used before with other details and its subscription never
        # got recorded here (the request died half-way): record it, then start afresh.
        _adopt_unrecorded(session, user, customer_id)
        return _start_locked(session, user, payment_method_id, retried=True)
    except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError) as exc:
        _key_moved_on(user, exc)
        # Stripe may have made (and charged) it: not "nothing was charged".
        raise _translate(exc, payment_sent=True) from exc
    snapshot = read_subscription(created)
    try:
        sync.record_created(session=session, user_id=_id(user), snapshot=snapshot)
    except repository.SecondOpenSubscription:
        # The database's last guard: another subscription of this person is open in Stripe
        # (made outside this app meanwhile). Do not leave a second one running.
        logger.error("a subscribe attempt met another open subscription; cancelling the new one")
        try:
            client.v1.subscriptions.cancel(snapshot.id)
        except stripe.StripeError as exc:  # made, maybe charged: not "nothing was charged"
            raise _translate(exc, payment_sent=True) from exc
        raise AlreadySubscribed() from None
    try:
        return _outcome(client, session, user, snapshot)
    except stripe.StripeError as exc:  # made, maybe paid: reading how it went failed
        raise _translate(exc, payment_sent=True) from exc


def record_card_failure(*, user: User, client_address: str | None = None) -> None:
    """The browser reports that Stripe refused a card check: count it as a card attempt.

    Raises:
        BillingError: kind "limited" when the person or address is over the limit.
    """
    _limit(ratelimit.before_card_attempt, user, client_address)


def start_subscription(
    *, session: Session, user: User, payment_method_id: str, client_address: str | None = None
) -> SubscribeResult:
    """Subscribe `user` to the default plan, paying with `payment_method_id`.

    Every attempt counts against the card-testing limits (per person and client address)
    before anything reaches Stripe; a malformed payment method id is refused before that.

    One person's attempts run one at a time, across every worker (`sync.subscriber_lock`),
    so two tabs or two clients cannot both create a subscription. Steps: refuse a second
    live subscription and cancel a pending one (see `_settle_open_attempts`); ensure the
    customer; check the payment method belongs to that customer (or attach it); make it the
    invoice default; create the subscription with a per-attempt idempotency key; record
    Stripe's answer at once.
    """
    validate_payment_method_id(payment_method_id)
    _limit_declines(session, user)
    _limit(ratelimit.before_card_attempt, user, client_address)
    session.commit()  # hold no transaction while waiting for the lock
    try:
        with sync.subscriber_lock(_id(user)):
            return _with_customer_replaced_if_gone(
                session, user, lambda: _start_locked(session, user, payment_method_id)
            )
    except locks.LockTimeout as exc:
        raise BillingError(ATTEMPT_IN_PROGRESS, kind="conflict") from exc
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def confirm_subscription(
    *, session: Session, user: User, payment_intent_id: str | None = None
) -> SubscribeResult:
    """After the browser finished 3-D Secure: re-read the subscription and settle it.

    Applies what Stripe says; a subscription Stripe calls live is never undone here. With
    `payment_intent_id` (the PaymentIntent the browser confirmed), an attempt whose payment
    is another one (a newer attempt from another tab) is left alone and the answer is a 409.
    """
    session.commit()  # hold no transaction while waiting for the lock
    try:
        with sync.subscriber_lock(_id(user)):
            pending = repository.open_subscriptions(session, _id(user))
            if not pending:
                # Undone for too many declined cards (`stop_first_payments`)? Then say that.
                _limit_declines(session, user)
                raise BillingError(
                    "There is no subscription waiting for confirmation.", kind="conflict"
                )
            client = get_client()
            synced = sync.sync_subscription(
                session=session,
                subscription_id=pending[0].id,
                user_id=_id(user),
                expand=SUBSCRIPTION_EXPAND,
            )
            snapshot = synced.snapshot
            if SubscriptionStatus(snapshot.status).is_live:
                return _outcome(client, session, user, snapshot)
            if snapshot.status == "incomplete":
                payment = _payment_of(client, snapshot)
                if payment and payment.status in ("processing", "succeeded"):
                    return _outcome(client, session, user, snapshot)
                if payment_intent_id and (
                    payment is None or payment.payment_intent_id != payment_intent_id
                ):
                    # The attempt this page confirmed was replaced by one started elsewhere
                    # (another tab), whose bank check may still be under way: leave it be.
                    raise BillingError(ATTEMPT_REPLACED, kind="conflict")
                # Authentication failed or was abandoned: undo the attempt in Stripe, unless
                # it was paid after all between our read and the undo.
                paid_meanwhile = _abandon(client, session, user, snapshot)
                if paid_meanwhile is not None:
                    return _outcome(client, session, user, paid_meanwhile)
            raise BillingError(AUTHENTICATION_FAILED, kind="card")
    except locks.LockTimeout as exc:
        raise BillingError(ATTEMPT_IN_PROGRESS, kind="conflict") from exc
    except stripe.StripeError as exc:  # the bank's check may have completed the payment
        raise _translate(exc, payment_sent=True) from exc


@dataclass(frozen=True)
class CancelResult:
    """The subscription after a cancel or resume, and a sentence saying what happened."""

    subscription: SubscriptionView | None
    message: str


def _live(session: Session, user: User, nothing_to_do: str) -> repository.LiveSubscription:
    live = repository.live_subscription(session, _id(user))
    if live is None:
        raise BillingError(nothing_to_do, kind="conflict")
    return live


def _change(
    session: Session,
    user: User,
    nothing_to_do: str,
    check: Callable[[repository.LiveSubscription], None],
    call: Callable[[repository.LiveSubscription, stripe.StripeClient], stripe.Subscription],
    kind: str,
    message: Callable[[SubscriptionSnapshot], str],
) -> CancelResult:
    """Change the live subscription in Stripe, record Stripe's answer and tell the person.

    `check` refuses (raises) when there is nothing to do. It runs on what we have stored,
    before the lock and again under it, so the second press of a double click finds the
    first one's change and is refused instead of repeated.
    """
    user_id = _id(user)
    live = _live(session, user, nothing_to_do)
    check(live)
    _limit_stripe_requests(user)  # only a change that will call Stripe counts
    current = [live]  # what the change is made from: re-read under the lock

    def still() -> None:
        now = _live(session, user, nothing_to_do)
        if now.id != live.id:
            raise BillingError(nothing_to_do, kind="conflict")
        check(now)
        current[0] = now

    try:
        synced = sync.change_subscription(
            session=session,
            subscription_id=live.id,
            user_id=user_id,
            call=lambda client: call(current[0], client),
            check=still,
        )
    except locks.LockTimeout as exc:
        raise BillingError(ATTEMPT_IN_PROGRESS, kind="conflict") from exc
    except stripe.InvalidRequestError as exc:
        raise _refused_change(session, user, live, exc) from exc
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    text = message(synced.snapshot)
    notifications.tell(session, user_id=user_id, kind=kind, text=text)
    return CancelResult(repository.current_subscription(session, user_id), text)


def _refused_change(
    session: Session, user: User, live: repository.LiveSubscription, exc: stripe.StripeError
) -> BillingError:
    """Stripe refused a change we thought possible: the subscription changed there meanwhile
    (ended, or cancelled in the customer portal, before its webhook reached us). Record what
    Stripe has now, and say so."""
    try:
        snapshot = sync.sync_subscription(
            session=session, subscription_id=live.id, user_id=_id(user)
        ).snapshot
    except (stripe.StripeError, locks.LockTimeout):
        return _translate(exc)
    if not SubscriptionStatus(snapshot.status).is_live:
        return BillingError("Your subscription has already ended.", kind="conflict")
    now = repository.live_subscription(session, _id(user))
    if now is None or now.id != live.id or now.view != live.view:
        logger.info("Stripe refused a subscription change (%s): changed there", exc.code)
        return BillingError(CHANGED_MEANWHILE, kind="conflict")
    # Unchanged, and still refused (a subscription schedule manages it, say): trying again
    # will not help, and the operator should hear of it.
    logger.error("Stripe refused a subscription change: %s (%s)", exc.code or "no code", exc)
    return BillingError(CHANGE_REFUSED, kind="conflict")


def _period_end(value: datetime | None) -> str:
    return format_date(value, PERIOD_END_FALLBACK)


def cancel_subscription(*, session: Session, user: User, at_period_end: bool) -> CancelResult:
    """Cancel the user's live subscription, now or at the end of the paid period.

    Raises:
        BillingError: (conflict) no live subscription, or already set to end at period end;
            (limited) too many requests to Stripe from this person.
    """

    def not_yet_ending(live: repository.LiveSubscription) -> None:
        if at_period_end and live.view.cancel_at_period_end:
            raise BillingError(
                "Your subscription is already set to end on "
                f"{_period_end(live.view.cancel_at or live.view.current_period_end)}.",
                kind="conflict",
            )

    nothing = "You have no active subscription to cancel."
    if at_period_end:
        return _change(
            session,
            user,
            nothing,
            not_yet_ending,
            lambda live, c: c.v1.subscriptions.update(
                live.id, params={"cancel_at_period_end": True}
            ),
            "canceled",
            lambda snapshot: (
                "Your subscription is cancelled. You keep access until "
                f"{_period_end(snapshot.current_period_end)}."
            ),
        )
    return _change(
        session,
        user,
        nothing,
        not_yet_ending,
        lambda live, c: c.v1.subscriptions.cancel(live.id),
        "canceled",
        lambda _: "Your subscription is cancelled and has ended.",
    )


def _undo_ending(
    live: repository.LiveSubscription, client: stripe.StripeClient
) -> stripe.Subscription:
    """Stripe's call that undoes a scheduled end, however it was scheduled.

    Set to end by the portal in flexible billing mode, only `cancel_at` is set and unsetting
    it undoes that; set by `cancel_at_period_end`, clearing that does. Our row may lag
    behind Stripe (a portal change whose webhook is still on its way), so if Stripe's answer
    still ends, the other way is undone too.
    """
    if live.view.ends_by_cancel_at:
        updated = client.v1.subscriptions.update(live.id, params={"cancel_at": ""})
    else:
        updated = client.v1.subscriptions.update(live.id, params={"cancel_at_period_end": False})
    if updated.cancel_at_period_end:
        updated = client.v1.subscriptions.update(live.id, params={"cancel_at_period_end": False})
    if updated.cancel_at:
        updated = client.v1.subscriptions.update(live.id, params={"cancel_at": ""})
    return updated


def resume_subscription(*, session: Session, user: User) -> CancelResult:
    """Undo a cancellation at period end (before the period ends).

    Raises:
        BillingError: (conflict) nothing to undo; (limited) too many requests to Stripe from
            this person.
    """
    nothing = "Your subscription is not set to end, so there is nothing to undo."

    def ending(live: repository.LiveSubscription) -> None:
        if not live.view.cancel_at_period_end:
            raise BillingError(nothing, kind="conflict")

    return _change(
        session,
        user,
        nothing,
        ending,
        _undo_ending,
        "resumed",
        lambda _: "Your subscription will renew as usual.",
    )


def dashboard(*, session: Session, user: User) -> DashboardView:
    """Everything the dashboard shows: the subscription, recent messages, and a version."""
    user_id = _id(user)
    changed = repository.last_changed_at(session, user_id)
    newest_message = notifications.latest_message_id(session, user_id=user_id)
    return DashboardView(
        subscription=repository.current_subscription(session, user_id),
        messages=notifications.recent_messages(session, user_id=user_id),
        version=f"{changed.isoformat() if changed else '-'}/{newest_message}",
        ever_subscribed=repository.ever_subscribed(session, user_id),
    )


CHECKOUT_SESSION_ID = re.compile(r"cs_[A-Za-z0-9_]{1,250}")  # whole string: fullmatch
NOT_YOUR_CHECKOUT = "That checkout session is not yours, or does not exist."


def _app_url(path: str) -> str:
    return get_settings().app_url.rstrip("/") + path


def expire_open_checkouts(client: stripe.StripeClient, customer_id: str) -> None:
    """Close the person's open Checkout pages (call it under their subscribe lock).

    Before subscribing another way: otherwise finishing one later would start a second
    subscription (which `record_checkout` would then cancel, after its first payment). And
    at the card-testing limit (`handlers.on_card_declined`): Stripe's page takes cards too.
    """
    listed = client.v1.checkout.sessions.list(params={"customer": customer_id, "status": "open"})
    for item in listed.auto_paging_iter():
        client.v1.checkout.sessions.expire(item.id)


def _start_checkout_locked(session: Session, user: User) -> str:
    # Again under the lock: the card-testing handler expires open Checkout pages under it,
    # so a page made as the limit is reached is either expired there or refused here.
    _limit_declines(session, user)
    client = get_client()
    customer_id = ensure_customer(session=session, user=user, client=client)
    # A subscription Stripe has but we have not recorded yet (a paid Checkout whose return
    # page and webhook have not come): recorded now, so the check below refuses a second.
    _adopt_unrecorded(session, user, customer_id)
    _settle_open_attempts(client, session, user)
    # One open Checkout per person: a second click, a retry or another tab gets the same page,
    # unless it sells a price that is no longer the plan's (the merchant changed it): that
    # page is expired, and a new one made. Listed newest first; the newest expired one goes
    # into the key below.
    price_id = catalog.default_price_id()
    listed = client.v1.checkout.sessions.list(params={"customer": customer_id, "limit": 100})
    last_expired = "none"
    for item in listed.data:
        existing = read_checkout_session(item)
        if existing.status == "open" and existing.client_reference_id == str(_id(user)):
            if existing.url and existing.price_id == price_id:
                return existing.url
            client.v1.checkout.sessions.expire(existing.id)
            if last_expired == "none":
                last_expired = existing.id
        elif existing.status == "expired" and last_expired == "none":
            last_expired = existing.id
    attempt = repository.attempt_number(session, _id(user))
    # A retried request (same attempt, nothing expired meanwhile) gets the same session from
    # Stripe. Once that session has expired (the person went back, or tried a card), the key
    # is a new one: Stripe would otherwise replay the dead session's page for 24 hours. So it
    # is after a server error Stripe keeps under the key (`_key_moved_on`).
    key = f"checkout-{_id(user)}-{customer_id}-{attempt}-{last_expired}-{_key_moves(user)}"
    try:
        created = _create_checkout(client, user, customer_id, price_id, key)
    except stripe.StripeError as exc:
        _key_moved_on(user, exc)
        raise
    if not created.url:
        raise BillingError(UNAVAILABLE, kind="unavailable")
    return created.url


def _create_checkout(
    client: stripe.StripeClient, user: User, customer_id: str, price_id: str, key: str
) -> stripe.checkout.Session:
    """Stripe's call making `user`'s Checkout Session for `price_id` under `key`."""
    return client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer_id,
            "client_reference_id": str(_id(user)),
            "line_items": [{"price": price_id, "quantity": 1}],
            "metadata": {"user_id": str(_id(user)), "price": price_id},
            "subscription_data": {"metadata": {**APP_METADATA, "user_id": str(_id(user))}},
            "success_url": _app_url(
                f"{routes.CHECKOUT_COMPLETE}?session_id={{CHECKOUT_SESSION_ID}}"
            ),
            "cancel_url": _app_url(f"{routes.PLAN}?checkout=cancelled"),
        },
        options={"idempotency_key": key},
    )


def start_checkout(*, session: Session, user: User) -> str:
    """The URL of a Stripe Checkout page subscribing `user` to the default plan.

    Refuses a person who already has a subscription (conflict), and one at the card-testing
    limit (limited), as the card form does: Stripe's page takes cards too; and one past
    their Stripe requests (limited, `_limit_stripe_requests`). Runs under the person's
    subscribe lock, like `start_subscription`, and reuses their open Checkout Session.
    """
    _limit_declines(session, user)
    _limit_stripe_requests(user)  # each start reads Stripe (unrecorded subscriptions, pages)
    session.commit()  # hold no transaction while waiting for the lock
    try:
        with sync.subscriber_lock(_id(user)):
            return _with_customer_replaced_if_gone(
                session, user, lambda: _start_checkout_locked(session, user)
            )
    except locks.LockTimeout as exc:
        raise BillingError(ATTEMPT_IN_PROGRESS, kind="conflict") from exc
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def complete_checkout(*, session: Session, user: User, checkout_session_id: str) -> SubscribeResult:
    """Back from Stripe Checkout: record the subscription now, webhook or not.

    Re-reads the session from Stripe and checks it belongs to `user` (its customer is theirs
    and it names them); someone else's or an unknown id is refused alike (forbidden).

    Raises:
        BillingError: forbidden (not theirs), conflict (not completed, or already
            subscribed), limited (too many requests to Stripe from this person).
    """
    if not CHECKOUT_SESSION_ID.fullmatch(checkout_session_id or ""):
        raise BillingError(NOT_YOUR_CHECKOUT, kind="forbidden")
    # Counted: made-up session ids would each cost a Stripe read.
    _limit_stripe_requests(user)
    try:
        checkout = sync.read_checkout(checkout_session_id)
        if sync.checkout_owner(session, checkout) != _id(user):
            raise BillingError(NOT_YOUR_CHECKOUT, kind="forbidden")
        if checkout.status == "expired":
            raise BillingError(
                "That checkout has expired. Nothing was charged; please start again.",
                kind="conflict",
            )
        fulfilled = sync.record_checkout(session, checkout)
    except stripe.InvalidRequestError as exc:
        if exc.code == "resource_missing":
            raise BillingError(NOT_YOUR_CHECKOUT, kind="forbidden") from exc
        raise _translate(exc, payment_sent=True) from exc
    except locks.LockTimeout as exc:
        raise BillingError(ATTEMPT_IN_PROGRESS, kind="conflict") from exc
    except stripe.StripeError as exc:  # back from paying on Stripe's page, maybe
        raise _translate(exc, payment_sent=True) from exc
    if fulfilled is None:
        raise BillingError("Checkout is not finished yet.", kind="conflict")
    if fulfilled.duplicate:
        raise AlreadySubscribed()
    current = repository.current_subscription(session, _id(user))
    status = fulfilled.synced.snapshot.status
    if SubscriptionStatus(status).is_live:
        return SubscribeResult(status="active", subscription=current)
    if status == "incomplete":  # paid, the payment still settling: its webhook activates it
        return SubscribeResult(status="processing", subscription=current)
    # Ended since (cancelled, or never paid): "processing" would have a client wait forever.
    if current is not None and current.is_live:
        raise AlreadySubscribed()
    raise BillingError(CHECKOUT_ENDED, kind="conflict")


def open_billing_portal(*, session: Session, user: User) -> str:
    """The URL of Stripe's customer portal for `user`, returning to the dashboard.

    Only for someone who has subscribed (there is nothing else to manage there). The portal
    takes cards too (a new payment method), on SetupIntents Stripe makes for it, which our
    one-declined-card-per-form rule leaves alone (a person fixing their card there must not
    find the form gone): so a throwaway account cannot use it to check cards, and a person
    with no card attempts left gets no portal either.

    Raises:
        BillingError: conflict when the person never subscribed; limited (card checks, or
            too many requests to Stripe from this person).
    """
    _limit_stripe_requests(user)
    _limit_declines(session, user)
    # Decided before `_with_customer_replaced_if_gone`: someone refused here gets no new
    # Stripe customer linked on the way.
    customer_id = repository.customer_id_for_user(session, _id(user))
    if customer_id is None or not _has_subscribed(session, user, customer_id):
        raise BillingError(
            "You have no billing account yet. Subscribe first, then manage billing here.",
            kind="conflict",
        )

    def create() -> stripe.billing_portal.Session:
        # The linked customer, maybe replaced on the retry.
        linked = repository.customer_id_for_user(session, _id(user)) or customer_id
        return get_client().v1.billing_portal.sessions.create(
            params={"customer": linked, "return_url": _app_url(routes.DASHBOARD)}
        )

    try:
        portal = _with_customer_replaced_if_gone(session, user, create)
    except stripe.StripeError as exc:
        raise _translate(exc, about_account=True) from exc
    return portal.url


def _has_subscribed(session: Session, user: User, customer_id: str) -> bool:
    """Whether the person has ever had a subscription go live: by our rows, else by a paid
    invoice at Stripe (a past subscriber whose subscription we first heard of once it had
    ended, after a restore or a late backlog, has no live row in our records)."""
    if repository.ever_subscribed(session, _id(user)):
        return True
    try:
        paid = get_client().v1.invoices.list(
            params={"customer": customer_id, "status": "paid", "limit": 1}
        )
    except stripe.StripeError as exc:
        if isinstance(exc, stripe.InvalidRequestError) and exc.code == "resource_missing":
            return False  # Stripe does not know the customer: no invoices of theirs
        raise _translate(exc, about_account=True) from exc
    return bool(paid.data)


INVOICE_HISTORY_LIMIT = 24


def list_invoices(*, session: Session, user: User, asked: bool = True) -> InvoiceHistory:
    """The person's `INVOICE_HISTORY_LIMIT` latest invoices, newest first, drafts left out
    (they are not bills yet); `has_more` when Stripe holds older ones (the portal lists
    them all).

    `asked`: the person's own request (a page load, the API), counted against their Stripe
    requests (`ratelimit.before_stripe_request`); False for the live page's re-read after a
    change, which Stripe's own events pace.

    Raises:
        BillingError: limited, too many requests to Stripe from this person.
    """
    customer_id = repository.customer_id_for_user(session, _id(user))
    if customer_id is None:
        return InvoiceHistory([])  # nothing asked of Stripe: not counted
    if asked:
        _limit_stripe_requests(user)
    try:
        listed = get_client().v1.invoices.list(
            params={"customer": customer_id, "limit": INVOICE_HISTORY_LIMIT}
        )
    except stripe.StripeError as exc:
        raise _translate(exc, about_account=True) from exc
    records = [read_invoice_record(item) for item in listed.data]
    shown = [r for r in records if r.status and r.status != "draft"]
    shown.sort(key=lambda r: r.created.timestamp() if r.created else 0, reverse=True)
    return InvoiceHistory([invoice_view_of(r) for r in shown], bool(listed.has_more))


def publishable_config() -> dict[str, str]:
    """What the browser needs to load Stripe.js: the publishable key and the script URL."""
    settings = get_settings()
    return {
        "publishable_key": settings.stripe_publishable_key or "",
        "js_url": settings.stripe_js_url,
    }
