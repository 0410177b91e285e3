"""Apply what Stripe says about a subscription: the one path for every write of its row.

Webhook handlers, our own calls that change a subscription (create, cancel, resume), the
3-D Secure confirmation and resync all end here. Two rules make the row converge on Stripe's
latest state whatever order events arrive in, and however many workers run:

1. Nothing compares clocks. Stripe's event time has whole seconds, and two events of one
   second have no order, so an event is only a hint that something changed: we re-read the
   subscription from Stripe (as dj-stripe and Pay do) and apply that.
2. Reading Stripe and writing the row happen under one lock per subscription, and the write
   commits before the lock is released. So whoever applies later also read later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import stripe
from sqlmodel import Session

from subscription_app import locks
from subscription_app.billing import catalog, repository
from subscription_app.billing.client import get_client
from subscription_app.billing.reader import (
    CheckoutSnapshot,
    SubscriptionSnapshot,
    read_checkout_session,
    read_invoice,
    read_subscription,
)
from subscription_app.models import SubscriptionStatus

logger = logging.getLogger(__name__)

# Waiting for a second subscription's lock while holding one: short, so two workers that
# happen to take the same two locks in opposite order give up quickly and retry.
NESTED_LOCK_TIMEOUT_SECONDS = 5.0


@contextmanager
def subscription_lock(
    subscription_id: str, session: Session, *, timeout: float | None = None
) -> Iterator[None]:
    """Hold the lock of one Stripe subscription (named by a hash of its id, not the id).

    If the block fails, `session`'s transaction is rolled back before the lock is released:
    the next holder must not find our half-done write, and on SQLite our open write
    transaction would otherwise block the release of the lease itself ("database is locked").
    """
    # Named by a plain hash of the id, not by its blind index: that is keyed, and processes
    # of a rolling key rotation (old and new index key first) must take the same lock.
    name = f"subscription:{hashlib.sha256(subscription_id.encode()).hexdigest()}"
    with locks.hold(name, **({"timeout": timeout} if timeout else {})):
        try:
            yield
        except BaseException:
            session.rollback()
            raise


@contextmanager
def subscriber_lock(user_id: int) -> Iterator[None]:
    """Hold the lock that serializes one person's subscribe attempts (all workers)."""
    with locks.hold(f"subscriber:{user_id}"):
        yield


@dataclass(frozen=True)
class Synced:
    """What Stripe said, whose row it is (None: no user of ours), whether the row changed,
    and whether it is a subscription to our plan (False: another price, recorded only)."""

    snapshot: SubscriptionSnapshot
    user_id: int | None
    changed: bool
    our_plan: bool = True


def _is_our_plan(session: Session, snapshot: SubscriptionSnapshot) -> bool:
    """Whether a subscription is to our plan. Once ours, always ours.

    By the mark our own form and Checkout pages leave in its metadata (on any write), else
    by its price when the row is first written. A row that was ours stays ours: if
    the merchant later changes STRIPE_PRICE_ID, existing subscribers must not vanish from their
    dashboards, and no price lookup is needed for them.
    """
    return _our_plan_by_row(repository.is_our_plan(session, snapshot.id), snapshot)


def _our_plan_by_row(row_is_ours: bool, snapshot: SubscriptionSnapshot) -> bool:
    if row_is_ours or snapshot.made_for_our_plan:
        # Made by our own form or Checkout page for our plan: ours whatever its price is now
        # (the merchant may have changed the plan's price since), on every path alike.
        return True
    return snapshot.price_id is not None and snapshot.price_id == catalog.default_price_id()


def owner_of(session: Session, subscription_id: str, customer_id: str | None) -> int | None:
    """The user a subscription belongs to: by our row, else through its customer.

    A subscription we never recorded (made in the portal, in the Stripe dashboard, or still
    on its way back from our own create call) is still ours when its customer is.
    """
    return _owner_by_row(
        session, repository.user_id_for_subscription(session, subscription_id), customer_id
    )


def _owner_by_row(session: Session, row_user_id: int | None, customer_id: str | None) -> int | None:
    if row_user_id is None and customer_id:
        return repository.user_id_for_customer(session, customer_id)
    return row_user_id


def _apply(
    session: Session,
    snapshot: SubscriptionSnapshot,
    user_id: int | None,
    only_if_new: bool,
    *,
    commit: bool = True,
    ours: bool = False,
    done_in_stripe: bool = False,
) -> Synced:
    # Asked of Stripe before our row is read, so no database transaction waits on Stripe.
    # `done_in_stripe`: the snapshot is the answer to a change Stripe has made (a cancel):
    # a failed read must not report that change as failed; the row keeps what it said.
    asked = True
    try:
        retrying = payment_retrying(snapshot)
    except stripe.StripeError:
        if not done_in_stripe:
            raise
        logger.warning("could not ask Stripe whether it will retry a past-due payment")
        asked, retrying = False, None
    # One read of our row gives its owner, whether it is ours, and what the write compares
    # against (`owner_of`, `_is_our_plan` and `apply_snapshot` would each read it again).
    row = repository.subscription_row(session, snapshot.id)
    if not asked and row is not None:
        retrying = row.payment_retrying  # kept as it was
    snapshot = dataclasses.replace(snapshot, payment_retrying=retrying)
    owner = (
        user_id
        if user_id is not None
        else _owner_by_row(session, row.user_id if row else None, snapshot.customer_id)
    )
    if owner is None:
        return Synced(snapshot, None, False)
    # A subscription to another price of the same Stripe account is recorded as such: it is
    # neither shown as our plan nor counted against the one-open-subscription rule.
    # `ours`: made by our own Checkout for our plan, whatever its price is now.
    our_plan = ours or _our_plan_by_row(bool(row and row.our_plan), snapshot)
    # First heard of once it had ended (a backlog, a restore and resync, a Checkout paid and
    # cancelled before its return page): whether it ever went live is Stripe's to say, or the
    # person's past subscription would be hidden from them (see `repository.ever_subscribed`).
    went_live = row is None and snapshot.status == "canceled" and _ever_paid(snapshot.id)
    try:
        changed = repository.apply_snapshot(
            session,
            user_id=owner,
            snapshot=snapshot,
            only_if_new=only_if_new,
            our_plan=our_plan,
            row=row,
            went_live=went_live,
        )
    except repository.SecondOpenSubscription:
        # Our other open row may be stale (its own events still on the way): ask Stripe about
        # it first. If Stripe really has two open subscriptions, the error stands. End our
        # transaction before taking another lock: on SQLite it holds the write lock, which
        # the other lock's lease needs.
        session.rollback()
        _refresh_other_open(session, owner, snapshot.id)
        changed = repository.apply_snapshot(
            session,
            user_id=owner,
            snapshot=snapshot,
            only_if_new=only_if_new,
            our_plan=our_plan,
            went_live=went_live,
        )
    # Committed before the caller releases the lock: the next holder must see this write.
    # (`commit=False`: the caller commits it before releasing the lock; see `one_transaction`.)
    if commit:
        session.commit()
    return Synced(snapshot, owner, changed, our_plan)


def _ever_paid(subscription_id: str) -> bool:
    """Whether Stripe holds a paid invoice of this subscription: it went live (a trial's is a
    paid one of $0); one undone while waiting for its first payment has none."""
    paid = get_client().v1.invoices.list(
        params={"subscription": subscription_id, "status": "paid", "limit": 1}
    )
    return bool(paid.data)


def payment_retrying(snapshot: SubscriptionSnapshot) -> bool | None:
    """Whether Stripe will try a past-due subscription's payment again (None when it is not
    past due): the dashboard promises a retry only if so (`Subscription.payment_retrying`).

    True while its latest invoice is open with a `next_payment_attempt`. False once Stripe
    will not: open with none (the retries are used up and the merchant's setting leaves the
    subscription past due, or the merchant collects by hand), or voided or marked
    uncollectible. None (not known) if the invoice was paid since the subscription was read
    (its own event brings the next state) or is a draft. One read, only for a past-due
    subscription, after the subscription's (as `handlers._still_due` reads).

    Raises:
        stripe.StripeError: Stripe could not be asked.
    """
    if snapshot.status != "past_due" or not snapshot.latest_invoice_id:
        return None
    invoice = read_invoice(get_client().v1.invoices.retrieve(snapshot.latest_invoice_id))
    if invoice.status == "open":
        return invoice.next_payment_attempt is not None
    return False if invoice.status in ("void", "uncollectible") else None


def _refresh_other_open(session: Session, user_id: int, except_id: str) -> None:
    for other in repository.open_subscriptions(session, user_id):
        if other.id == except_id:
            continue
        with subscription_lock(other.id, session, timeout=NESTED_LOCK_TIMEOUT_SECONDS):
            current = fetch_subscription(other.id)
            current = dataclasses.replace(current, payment_retrying=payment_retrying(current))
            repository.apply_snapshot(
                session,
                user_id=user_id,
                snapshot=current,
                our_plan=True,  # an open row of ours
            )
            session.commit()


# Re-reads shared by the events of one processor batch (see `reads_shared_from_now`).
_shared_reads: ContextVar[dict[str, Synced] | None] = ContextVar("shared_reads", default=None)


@contextmanager
def reads_shared_from_now() -> Iterator[None]:
    """Within this block, re-read each subscription from Stripe at most once.

    For the webhook processor, entered right after it claims a batch: every event of the
    batch was received before the claim, so one re-read made after it is at least as new as
    what any of them reports. A burst of events about one subscription (Stripe sends several
    for one change) then costs one Stripe call and one write, not one each.
    """
    token = _shared_reads.set({})
    try:
        yield
    finally:
        _shared_reads.reset(token)


class Transaction:
    """The caller's transaction in `one_transaction`: commit it with `commit()`."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.locks = ExitStack()  # subscription locks held until the caller commits
        self.reads: dict[str, Synced] = {}  # shared with the batch once committed

    def commit(self) -> None:
        """Commit the session, then release the locks its writes were made under."""
        self.session.commit()
        shared = _shared_reads.get()
        if shared is not None:
            shared.update(self.reads)
        self.reads.clear()
        self.locks.close()


_transaction: ContextVar[Transaction | None] = ContextVar("transaction", default=None)


@contextmanager
def one_transaction(session: Session) -> Iterator[Transaction]:
    """Within this block, `sync_subscription` on `session` leaves its write to the caller.

    For the webhook processor: the subscription's write, what the handler adds to it and the
    event's own finish commit together (`Transaction.commit`), which saves a commit per event
    and never leaves a write without its finish. The subscription's lock stays held until
    that commit, so the rule that a write commits before its lock is released still holds. A
    second sync in the block (another subscription) first commits the transaction so far and
    releases the lock it was made under, as `sync_subscription` always does: no lock is
    taken while another is held. Leaving the block without committing rolls everything back
    (the lease was lost, or the handler failed) before the locks are released.
    """
    transaction = Transaction(session)
    token = _transaction.set(transaction)
    try:
        yield transaction
    finally:
        _transaction.reset(token)
        try:
            if session.in_transaction():
                session.rollback()  # not committed: the next holder must not find it
        finally:
            transaction.reads.clear()
            transaction.locks.close()


def fetch_subscription(
    subscription_id: str, *, expand: list[str] | None = None
) -> SubscriptionSnapshot:
    """Read a subscription from Stripe, as a snapshot.

    The hot path of webhook processing (every event re-reads its subscription), so the
    SDK's `raw_request` is used: Stripe's JSON goes straight into the snapshot, without the
    SDK building its `StripeObject` tree and `read_subscription` turning that back into a
    dict (together ~1 ms of CPU per read, a sixth of what applying an event costs). Errors
    are the SDK's usual `stripe.StripeError`s.
    """
    # The SDK's TypedDict: mypy checks every key against Stripe's API.
    params: stripe.params.SubscriptionRetrieveParams = {"expand": expand} if expand else {}
    path = f"/v1/subscriptions/{quote(subscription_id, safe='')}"
    return read_subscription(get_client().raw_request("get", path, **params).data)


def sync_subscription(
    *,
    session: Session,
    subscription_id: str,
    user_id: int | None = None,
    expand: list[str] | None = None,
    ours: bool = False,
) -> Synced:
    """Re-read a subscription from Stripe and apply it to our row (creating it if needed).

    `ours`: the subscription was made for our plan (our own Checkout Session's), so it is
    recorded as our plan even if it is at a price the plan no longer has.

    Idempotent; safe to call from any worker at any time. Commits (within `one_transaction`,
    the caller commits, with the lock still held).

    Raises:
        stripe.StripeError: Stripe could not be asked; nothing was applied (retry later).
        locks.LockTimeout: another worker held the subscription for too long.
    """
    shared = _shared_reads.get()
    shareable = shared is not None and not expand and user_id is None
    if shared is not None and shareable and subscription_id in shared:
        return dataclasses.replace(shared[subscription_id], changed=False)
    transaction = _transaction.get()
    if transaction is not None and transaction.session is not session:
        transaction = None
    if transaction is not None:
        transaction.commit()  # an earlier write of this transaction, and its lock
    session.commit()  # read below only after the lock is held
    with ExitStack() as held:
        held.enter_context(subscription_lock(subscription_id, session))
        synced = _apply(
            session,
            fetch_subscription(subscription_id, expand=expand),
            user_id,
            only_if_new=False,
            commit=transaction is None,
            ours=ours,
        )
        if transaction is not None:
            # Written, not committed: the caller commits, then the lock is released.
            transaction.locks.enter_context(held.pop_all())
    if shareable and shared is not None:
        if transaction is not None:
            transaction.reads[subscription_id] = synced
        else:
            shared[subscription_id] = synced
    return synced


def change_subscription(
    *,
    session: Session,
    subscription_id: str,
    user_id: int,
    call: Callable[[stripe.StripeClient], Any],
    check: Callable[[], None] | None = None,
) -> Synced:
    """Change a subscription in Stripe (`call`) and apply Stripe's answer, under its lock.

    Any event about a later change waits for the lock and then reads a later state, so our
    answer can never overwrite it. `check`, if given, runs first under the lock (in a fresh
    transaction) and may raise to refuse: a precondition read before the lock may have been
    changed by a request that held it meanwhile (the first of a double click). Commits.
    """
    session.commit()
    with subscription_lock(subscription_id, session):
        if check is not None:
            check()
        updated = call(get_client())
        return _apply(
            session, read_subscription(updated), user_id, only_if_new=False, done_in_stripe=True
        )


def record_created(*, session: Session, user_id: int, snapshot: SubscriptionSnapshot) -> Synced:
    """Record a subscription our own create call returned, unless a webhook already did.

    A webhook handler that got there first read Stripe later than our create call answered,
    so its row stands. Commits.
    """
    session.commit()
    with subscription_lock(snapshot.id, session):
        return _apply(session, snapshot, user_id, only_if_new=True)


def read_checkout(checkout_session_id: str) -> CheckoutSnapshot:
    """Re-read a Checkout Session from Stripe (the return page's id or a webhook's object).

    Raises:
        stripe.StripeError: e.g. `InvalidRequestError` (resource_missing) for an unknown id.
    """
    return read_checkout_session(get_client().v1.checkout.sessions.retrieve(checkout_session_id))


@dataclass(frozen=True)
class Fulfilled:
    """What recording a completed Checkout Session did.

    `duplicate`: the person already had another live subscription, so the one this checkout
    made was cancelled in Stripe at once (one subscription per person, whichever path).
    """

    synced: Synced
    duplicate: bool = False


def checkout_owner(session: Session, checkout: CheckoutSnapshot) -> int | None:
    """Our user a Checkout Session belongs to: its customer is theirs and it names them."""
    if not checkout.customer_id:
        return None
    owner = repository.user_id_for_customer(session, checkout.customer_id)
    if owner is None or checkout.client_reference_id != str(owner):
        return None
    return owner


def record_checkout(session: Session, checkout: CheckoutSnapshot) -> Fulfilled | None:
    """Record the subscription a completed Checkout Session made; None if there is none.

    The one path for the return page and `checkout.session.completed` (and, through the
    subscription's own events, the same `sync_subscription` as every other write), so the
    race between them ends in one row whichever comes first. Idempotent. Commits.
    """
    owner = checkout_owner(session, checkout)
    if (
        owner is None
        or checkout.mode != "subscription"
        or checkout.status != "complete"
        or not checkout.subscription_id
    ):
        return None
    try:
        return Fulfilled(
            sync_subscription(
                # Our page, for our plan: paid at the price it showed, even if the merchant
                # has changed the plan's price since, it is the person's subscription. (Its
                # subscription carries our mark too, so its own webhooks agree; pages opened
                # before the mark was written are known to be ours only here.)
                session=session,
                subscription_id=checkout.subscription_id,
                user_id=owner,
                ours=True,
            )
        )
    except repository.SecondOpenSubscription:
        # Subscribed another way meanwhile (the Elements form in another tab): keep the first
        # subscription and cancel this newer one, so nobody pays twice from now on.
        logger.error("a completed checkout met another live subscription; cancelling the new one")
        with subscription_lock(checkout.subscription_id, session):
            # The return page and the checkout's webhook may both get here, each having read
            # the subscription before the other cancelled it: cancel only what still runs
            # (Stripe refuses to cancel an ended one as "No such subscription").
            current = fetch_subscription(checkout.subscription_id)
            if SubscriptionStatus(current.status).is_open:
                current = read_subscription(
                    get_client().v1.subscriptions.cancel(checkout.subscription_id)
                )
            synced = _apply(session, current, owner, only_if_new=False, ours=True)
        return Fulfilled(synced, duplicate=True)
