"""Webhook event handlers, one per event type, registered with `@handles(...)`.

Stripe is the source of truth: every subscription and invoice event re-reads the
subscription from Stripe and applies it through `sync.sync_subscription` (under the
subscription's lock, committed before the lock is released), so events that arrive late,
twice or out of order cannot roll a row back. The processor runs each handler in
`sync.one_transaction`: the handler's writes (the subscription's row, notifications and
queued email) commit together with the event's finish, so each is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlmodel import Session

from subscription_app import db, notifications
from subscription_app.billing import card_testing, repository, service, sync
from subscription_app.billing.client import get_client
from subscription_app.billing.inbox import ClaimedEvent
from subscription_app.billing.reader import made_by_us, read_invoice
from subscription_app.billing.views import PAYMENT_FAILED_FINAL_TEXT, PAYMENT_FAILED_TEXT
from subscription_app.models import LIVE_STATUSES, EventStatus, User

ACTION_REQUIRED_TEXT = (
    "Your bank asked you to confirm a payment. Check your email from Stripe to complete it."
)


@dataclass
class HandlerResult:
    """What a handler did: done or skipped (with why), and whose pages to refresh."""

    status: EventStatus = EventStatus.DONE
    note: str | None = None
    changed_users: set[int] = field(default_factory=set)


Handler = Callable[[Session, ClaimedEvent], HandlerResult]
_REGISTRY: dict[str, Handler] = {}


def handles(*event_types: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of these event types."""

    def register(handler: Handler) -> Handler:
        for event_type in event_types:
            if event_type in _REGISTRY:
                raise ValueError(f"two handlers for {event_type}")
            _REGISTRY[event_type] = handler
        return handler

    return register


def handled_types() -> list[str]:
    """Every event type with a handler."""
    return sorted(_REGISTRY)


def dispatch(session: Session, event: ClaimedEvent) -> HandlerResult:
    """Run the handler for `event.type`; unknown types are skipped and recorded."""
    handler = _REGISTRY.get(event.type)
    if handler is None:
        return HandlerResult(EventStatus.SKIPPED, f"no handler for {event.type}")
    return handler(session, event)


NOT_LINKED = "customer is not linked to any user"


@handles(
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
)
def on_subscription_changed(session: Session, event: ClaimedEvent) -> HandlerResult:
    """Something changed: apply what Stripe says about the subscription now.

    The event's own copy may be older than another event's of the same second, so it only
    tells us which subscription to re-read (see `billing/sync.py`).
    """
    subscription_id = event.payload["data"]["object"].get("id")
    if not isinstance(subscription_id, str) or not subscription_id:
        return HandlerResult(EventStatus.SKIPPED, "event names no subscription")
    synced = sync.sync_subscription(session=session, subscription_id=subscription_id)
    if synced.user_id is None:
        return HandlerResult(EventStatus.SKIPPED, NOT_LINKED)
    return HandlerResult(changed_users={synced.user_id} if synced.changed else set())


@dataclass(frozen=True)
class _Due:
    """A payment of a live subscription still owed when its event is applied."""

    # Stripe will try to collect it again (Smart Retries): `next_payment_attempt` is set.
    retrying: bool


@dataclass(frozen=True)
class _Refreshed:
    """What an invoice event's handler learnt: whose subscription, or why it is not ours."""

    user_id: int | None
    why: str | None = None
    # Only for events asking us to tell the person (`about_a_payment_due`): the payment is
    # still owed now, on a live subscription; None when there is nothing to tell.
    due: _Due | None = None


def _refresh_from_stripe(
    session: Session, event: ClaimedEvent, *, about_a_payment_due: bool = False
) -> _Refreshed:
    """Re-read the invoice's subscription from Stripe and record it.

    `about_a_payment_due`: the event asks us to tell the person (a failure, a bank's check),
    so whether its invoice is still owed now is judged too (`due`, see `_still_due`).
    """
    invoice = read_invoice(event.payload["data"]["object"])
    if not invoice.subscription_id:
        return _Refreshed(None, "invoice has no subscription")
    due = None
    if about_a_payment_due and _maybe_ours(session, invoice.subscription_id, invoice.customer_id):
        due = _still_due(invoice.subscription_id, invoice.id)
    # The invoice does not carry the subscription's new state: read it from Stripe.
    synced = sync.sync_subscription(session=session, subscription_id=invoice.subscription_id)
    if synced.user_id is None:
        return _Refreshed(None, NOT_LINKED)
    if not synced.our_plan:
        # Recorded by the sync above; but its payments are another product's business.
        return _Refreshed(None, "subscription to another price")
    return _Refreshed(synced.user_id, due=due)


def _maybe_ours(session: Session, subscription_id: str, customer_id: str | None) -> bool:
    """Whether a subscription may be one of our plan's: someone of ours holds it, and our row
    (if we have one) does not say it is another product's. Others' payments cost no reads."""
    row = repository.subscription_row(session, subscription_id)
    if row is not None:
        return row.our_plan
    return sync.owner_of(session, subscription_id, customer_id) is not None


def _still_due(subscription_id: str, invoice_id: str) -> _Due | None:
    """Whether the person is to be told of this invoice's payment now: their subscription is
    live and the invoice still open. None when there is nothing to tell.

    Judged when the event is applied, maybe long after Stripe sent it (a backlog, an outage,
    a delivery retried for days), and before the sync writes (no write lock is held while
    Stripe answers). Nothing to tell:
    - paid (a later retry, or the person fixed their card in the portal, or finished the
      bank's check), voided or written off since: "your payment failed" would be false;
    - the subscription is not live: a sign-up's first payment, which the person handles on
      our page (or Checkout's), where an attempt that fails is undone, never retried; or a
      subscription Stripe ended after its last retry, which the dashboard shows as ended.
    A sign-up whose subscription is live while its first invoice is unpaid (a bank debit
    failing days later: Stripe makes the subscription active while it is processing) is
    told like a renewal. The subscription is read first: a payment completing between the
    two reads makes the invoice read paid, never a live subscription beside an invoice read
    before it was paid.
    """
    if sync.fetch_subscription(subscription_id).status not in LIVE_STATUSES:
        return None
    invoice = read_invoice(get_client().v1.invoices.retrieve(invoice_id))
    if invoice.status != "open":
        return None
    return _Due(retrying=invoice.next_payment_attempt is not None)


@handles("invoice.paid")
def on_invoice_paid(session: Session, event: ClaimedEvent) -> HandlerResult:
    """A payment went through: the subscription is (again) active; refresh it."""
    refreshed = _refresh_from_stripe(session, event)
    if refreshed.user_id is None:
        return HandlerResult(EventStatus.SKIPPED, refreshed.why)
    return HandlerResult(changed_users={refreshed.user_id})


@handles("invoice.payment_failed")
def on_invoice_payment_failed(session: Session, event: ClaimedEvent) -> HandlerResult:
    """A payment failed: refresh the subscription (past_due) and tell the user, if it is
    still owed (`_still_due`), saying whether Stripe will try again.

    We rely on Stripe's Smart Retries and never retry charges ourselves.
    """
    refreshed = _refresh_from_stripe(session, event, about_a_payment_due=True)
    if refreshed.user_id is None:
        return HandlerResult(EventStatus.SKIPPED, refreshed.why)
    if refreshed.due is not None:
        notifications.tell(
            session,
            user_id=refreshed.user_id,
            kind="payment_failed",
            text=PAYMENT_FAILED_TEXT if refreshed.due.retrying else PAYMENT_FAILED_FINAL_TEXT,
        )
    return HandlerResult(changed_users={refreshed.user_id})


@handles("invoice.payment_action_required")
def on_invoice_action_required(session: Session, event: ClaimedEvent) -> HandlerResult:
    """The bank wants the customer to authenticate a payment: tell the user, if it is still
    owed (`_still_due`; a sign-up's check runs on our page, or Checkout's, while the
    person is there)."""
    refreshed = _refresh_from_stripe(session, event, about_a_payment_due=True)
    if refreshed.user_id is None:
        return HandlerResult(EventStatus.SKIPPED, refreshed.why)
    if refreshed.due is not None:
        notifications.tell(
            session,
            user_id=refreshed.user_id,
            kind="payment_action_required",
            text=ACTION_REQUIRED_TEXT,
        )
    return HandlerResult(changed_users={refreshed.user_id})


@handles("checkout.session.completed")
def on_checkout_completed(session: Session, event: ClaimedEvent) -> HandlerResult:
    """Stripe Checkout finished: record its subscription, exactly as the return page does.

    The session is re-read from Stripe (the event's copy is only a hint) and applied through
    `sync.record_checkout`, so return page, this event and the subscription's own events
    converge on one row in any order.
    """
    checkout_session_id = event.payload["data"]["object"].get("id")
    if not isinstance(checkout_session_id, str) or not checkout_session_id:
        return HandlerResult(EventStatus.SKIPPED, "event names no checkout session")
    fulfilled = sync.record_checkout(session, sync.read_checkout(checkout_session_id))
    if fulfilled is None:
        return HandlerResult(EventStatus.SKIPPED, "not a completed subscription checkout of ours")
    user_id = fulfilled.synced.user_id
    return HandlerResult(changed_users={user_id} if user_id is not None else set())


def _declined_by_the_bank(intent: dict) -> bool:
    """A card error (a decline), not a failed 3-D Secure check, which the person retries on
    the same card form (our page asks for a new form only after a decline)."""
    error = intent.get("last_setup_error")
    return isinstance(error, dict) and error.get("type") == "card_error"


@handles("setup_intent.setup_failed", "payment_intent.payment_failed")
def on_card_declined(session: Session, event: ClaimedEvent) -> HandlerResult:
    """Stripe declined a card checked on one of a person's SetupIntents or PaymentIntents.

    Counted towards the person's card-testing limit whether or not our page saw it (a
    script holding an intent's client secret can ask Stripe directly). A declined
    SetupIntent is cancelled, so a card form checks one declined card. At the limit, the
    person's SetupIntents are cancelled and their attempts still waiting for a first payment
    are undone, so no more cards can be tried on them (see `card_testing`).
    """
    intent = event.payload["data"]["object"]
    intent_id, customer = intent.get("id"), intent.get("customer")
    if isinstance(customer, dict):  # expanded
        customer = customer.get("id")
    if not isinstance(intent_id, str) or not intent_id:
        return HandlerResult(EventStatus.SKIPPED, "event names no intent")
    if not isinstance(customer, str) or not customer:
        return HandlerResult(EventStatus.SKIPPED, "intent has no customer")
    user_id = repository.user_id_for_customer(session, customer)
    if user_id is None:
        return HandlerResult(EventStatus.SKIPPED, NOT_LINKED)
    if event.type == "payment_intent.payment_failed" and not any(
        open_attempt.status == "incomplete"
        for open_attempt in repository.open_subscriptions(session, user_id)
    ):
        # A script can only try cards on a first payment's PaymentIntent (its client secret
        # is handed out for 3-D Secure). Other payments failing (a renewal, a past-due
        # invoice paid on Stripe's page, a charge the merchant made) are not card testing.
        return HandlerResult(EventStatus.SKIPPED, "no first payment waiting")
    card_testing.record_decline(
        session, user_id=user_id, event_id=event.event_id, declined_at=event.created
    )
    # Committed before counting and before calling Stripe:
    # - of two processors counting this person's declines at once, the later to commit sees
    #   both (each counts after its own commit), so the limit is never missed;
    # - no write lock is held while waiting on Stripe (on SQLite it would stop every writer);
    # - a failed cancel keeps the decline: the retry (or the next decline) cancels again.
    # Applying the event again counts nothing twice (one row per event).
    session.commit()
    over_limit = card_testing.retry_after(session, user_id=user_id) is not None
    session.commit()  # no transaction left open while Stripe and locks are waited for
    if not over_limit:
        if (
            event.type == "setup_intent.setup_failed"
            and _declined_by_the_bank(intent)
            # Our card form's: one declined card per form. Not the customer portal's, where
            # the person is fixing a card on Stripe's page and would find it broken.
            and made_by_us(intent)
        ):
            card_testing.stop_this_card_check(intent_id)
        return HandlerResult()
    card_testing.stop_card_checks(customer)
    # Their Checkout pages too, under their subscribe lock: a page being made meanwhile is
    # either expired here or refused by its own check of the limit under the lock.
    with sync.subscriber_lock(user_id):
        service.expire_open_checkouts(get_client(), customer)
    # On a session of its own: the undo commits under its locks, as in a request, instead
    # of being left to this event's transaction (`sync.one_transaction`). Its row writes
    # refresh the person's open pages themselves.
    with Session(db.get_engine()) as own:
        user = own.get(User, user_id)
        if user is not None:
            service.stop_first_payments(session=own, user=user)
    return HandlerResult()
