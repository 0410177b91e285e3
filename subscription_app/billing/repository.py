"""The only code that writes billing rows. Stripe IDs go in encrypted, lookups go by hash."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from subscription_app import changes, crypto
from subscription_app.billing.reader import SubscriptionSnapshot
from subscription_app.billing.views import SubscriptionView, view_of
from subscription_app.models import (
    OPEN_STATUSES,
    BillingCustomer,
    Subscription,
    SubscriptionStatus,
    utcnow,
)


def _seal(stripe_id: str) -> str:
    return crypto.encrypt(stripe_id, purpose=crypto.Purpose.STRIPE_ID)


def _unseal(stored: str) -> str:
    return crypto.decrypt(stored, purpose=crypto.Purpose.STRIPE_ID)


# Customers -------------------------------------------------------------------


def customer_id_for_user(session: Session, user_id: int) -> str | None:
    """The user's Stripe customer id, decrypted, or None."""
    row = session.exec(select(BillingCustomer).where(BillingCustomer.user_id == user_id)).first()
    return _unseal(row.stripe_customer_id_enc) if row else None


def user_id_for_customer(session: Session, customer_id: str) -> int | None:
    """The user that owns a Stripe customer id, or None."""
    row = session.exec(
        select(BillingCustomer).where(
            col(BillingCustomer.stripe_customer_id_hash).in_(crypto.blind_indexes(customer_id))
        )
    ).first()
    return row.user_id if row else None


def save_customer(session: Session, user_id: int, customer_id: str) -> str:
    """Link a Stripe customer to a user. If another request linked one first, keep that one."""
    row = BillingCustomer(
        user_id=user_id,
        stripe_customer_id_enc=_seal(customer_id),
        stripe_customer_id_hash=crypto.blind_index(customer_id),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        existing = customer_id_for_user(session, user_id)
        if existing is None:
            raise
        return existing
    return customer_id


def replace_customer(session: Session, user_id: int, old_id: str, new_id: str) -> str:
    """Link `new_id` to the user in place of `old_id` (gone from Stripe); the linked id after.

    Only if `old_id` is still the linked one: of two requests replacing it at once, the
    second keeps the first's new customer. The caller commits.
    """
    session.exec(
        update(BillingCustomer)
        .where(
            col(BillingCustomer.user_id) == user_id,
            col(BillingCustomer.stripe_customer_id_hash).in_(crypto.blind_indexes(old_id)),
        )
        .values(
            stripe_customer_id_enc=_seal(new_id),
            stripe_customer_id_hash=crypto.blind_index(new_id),
        )
    )
    return customer_id_for_user(session, user_id) or new_id


# Subscriptions -----------------------------------------------------------------


# Built once (it runs for every webhook applied): our row by its blind indexes.
_BY_STRIPE_ID = select(Subscription).where(
    col(Subscription.stripe_subscription_id_hash).in_(bindparam("hashes", expanding=True))
)


def subscription_row(session: Session, subscription_id: str) -> Subscription | None:
    """Our row for a Stripe subscription id, or None.

    For a caller that needs several facts of the row and then writes it: pass it on to
    `apply_snapshot(row=...)`, so the row is read once. The row is read in the caller's
    transaction, so pass it on only within that transaction.
    """
    return session.exec(
        _BY_STRIPE_ID, params={"hashes": crypto.blind_indexes(subscription_id)}
    ).first()


class _Unread(enum.Enum):
    UNREAD = enum.auto()


UNREAD = _Unread.UNREAD


def _shown_rows(session: Session, user_id: int) -> list[Subscription]:
    """The user's rows that are (or were) a subscription, newest first.

    A first attempt that never went through (declined, abandoned 3-D Secure) stays stored as
    Stripe reports it, but is not shown to the person as a subscription.
    """
    rows = session.exec(
        select(Subscription)
        .where(Subscription.user_id == user_id, col(Subscription.our_plan))
        .order_by(col(Subscription.created_at).desc(), col(Subscription.id).desc())
    ).all()
    return [r for r in rows if r.activated or r.status == SubscriptionStatus.INCOMPLETE.value]


def ever_subscribed(session: Session, user_id: int) -> bool:
    """Whether any subscription of the user ever went live (paid, or trialing)."""
    return (
        session.exec(
            select(Subscription.id).where(
                Subscription.user_id == user_id, col(Subscription.activated)
            )
        ).first()
        is not None
    )


def _current_row(session: Session, user_id: int) -> Subscription | None:
    rows = _shown_rows(session, user_id)
    for row in rows:
        if SubscriptionStatus(row.status).is_live:
            return row
    return rows[0] if rows else None


def current_subscription(session: Session, user_id: int) -> SubscriptionView | None:
    """The user's live subscription if any, else their most recent one, else None."""
    row = _current_row(session, user_id)
    return view_of(row) if row else None


@dataclass(frozen=True)
class LiveSubscription:
    """The user's live subscription: its Stripe id (decrypted) and what people see of it."""

    id: str
    view: SubscriptionView


def live_subscription(session: Session, user_id: int) -> LiveSubscription | None:
    """The user's live subscription, or None (one read for both the id and the view)."""
    row = _current_row(session, user_id)
    if row is None or not SubscriptionStatus(row.status).is_live:
        return None
    return LiveSubscription(_unseal(row.stripe_subscription_id_enc), view_of(row))


@dataclass(frozen=True)
class OpenSubscription:
    """The user's one live or in-progress subscription."""

    id: str
    status: str


def open_subscriptions(session: Session, user_id: int) -> list[OpenSubscription]:
    """The user's live or in-progress (incomplete) subscriptions: one at most, by constraint."""
    rows = session.exec(
        select(Subscription).where(
            Subscription.user_id == user_id,
            col(Subscription.our_plan),
            col(Subscription.status).in_([s.value for s in OPEN_STATUSES]),
        )
    ).all()
    return [OpenSubscription(_unseal(r.stripe_subscription_id_enc), r.status) for r in rows]


def attempt_number(session: Session, user_id: int) -> int:
    """How many subscriptions of the user we have recorded (rows are never deleted).

    A subscribe attempt's idempotency key includes it: a retry of the same attempt (nothing
    recorded in between) repeats the key; the next attempt gets a new one.
    """
    return session.exec(
        select(func.count()).select_from(Subscription).where(Subscription.user_id == user_id)
    ).one()


def latest_subscription_id(session: Session, user_id: int) -> str | None:
    """The Stripe id of the user's most relevant subscription (live first), or None."""
    row = _current_row(session, user_id)
    return _unseal(row.stripe_subscription_id_enc) if row else None


class SecondOpenSubscription(Exception):
    """Stripe reports an open subscription for a person who already has another one."""


def apply_snapshot(
    session: Session,
    *,
    user_id: int,
    snapshot: SubscriptionSnapshot,
    our_plan: bool,
    only_if_new: bool = False,
    row: Subscription | _Unread | None = UNREAD,
    went_live: bool = False,
) -> bool:
    """Make our row for `snapshot.id` say what the snapshot says; True if anything changed.

    No clock decides here: callers hold the subscription's lock (see `billing/sync.py`) and
    pass what Stripe said while they held it, so the last writer has the newest state.
    `only_if_new` records a row only if there is none yet (a create call's answer must not
    overwrite what a webhook already read fresher). `our_plan` is False for a subscription to
    another price: stored, but not shown or counted as our plan. `row`: what
    `subscription_row` returned for `snapshot.id` in this transaction (read here if not given).
    `went_live`: Stripe says it was live once, though the snapshot is of its end (`activated`).

    Raises:
        SecondOpenSubscription: the user already has another live or in-progress row.
    """
    # Read outside the savepoint and change the row only inside it: SQLAlchemy flushes
    # pending changes when a savepoint begins (a row changed before it would hit the unique
    # index outside it and break the caller's transaction), and on SQLite a read inside the
    # savepoint would pin a snapshot that a concurrent commit makes unwritable ("database is
    # locked", which no busy timeout retries).
    if row is UNREAD:
        row = subscription_row(session, snapshot.id)
    if row is not None and only_if_new:
        return False
    status = SubscriptionStatus(snapshot.status)
    values = {
        "price_id": snapshot.price_id or (row.price_id if row else ""),
        "status": status.value,
        "started_at": snapshot.started_at,
        "current_period_end": snapshot.current_period_end,
        "cancel_at_period_end": snapshot.cancel_at_period_end,
        "cancel_at": snapshot.cancel_at,
        "canceled_at": snapshot.canceled_at,
        "ended_at": snapshot.ended_at,
        "activated": bool(row and row.activated) or status.is_live or went_live,
        "our_plan": our_plan,
        "payment_retrying": snapshot.payment_retrying,  # past due only (`sync.payment_retrying`)
    }
    if row is not None and all(getattr(row, name) == value for name, value in values.items()):
        return False
    created = row is None
    now = utcnow()
    try:
        with session.begin_nested():
            if row is None:
                row = Subscription(
                    user_id=user_id,
                    stripe_customer_id_enc=_seal(snapshot.customer_id),
                    stripe_customer_id_hash=crypto.blind_index(snapshot.customer_id),
                    stripe_subscription_id_enc=_seal(snapshot.id),
                    stripe_subscription_id_hash=crypto.blind_index(snapshot.id),
                    price_id=str(values["price_id"]),
                    status=status.value,
                    created_at=now,
                )
            for name, value in values.items():
                setattr(row, name, value)
            row.stripe_updated_at = now
            row.updated_at = now
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        # The savepoint is rolled back: a new row is gone from the session, an existing
        # row's changes are undone.
        if created and subscription_row(session, snapshot.id) is not None:
            # A concurrent writer inserted this subscription: update theirs instead.
            return apply_snapshot(
                session,
                user_id=user_id,
                snapshot=snapshot,
                our_plan=our_plan,
                only_if_new=only_if_new,
                went_live=went_live,
            )
        raise SecondOpenSubscription(
            "Stripe reports a second live or in-progress subscription for one user"
        ) from exc
    changes.mark(session, user_id)  # open pages re-read once this commits
    return True


def is_our_plan(session: Session, subscription_id: str) -> bool:
    """True when we hold a row for this subscription and it is to our plan."""
    row = subscription_row(session, subscription_id)
    return bool(row and row.our_plan)


def user_id_for_subscription(session: Session, subscription_id: str) -> int | None:
    """The user a Stripe subscription id belongs to, by our row or through its customer."""
    row = subscription_row(session, subscription_id)
    return row.user_id if row else None


def last_changed_at(session: Session, user_id: int) -> datetime | None:
    """When any of the user's subscription rows last changed (for live pages), or None."""
    return session.exec(
        select(Subscription.updated_at)
        .where(Subscription.user_id == user_id)
        .order_by(col(Subscription.updated_at).desc())
        .limit(1)
    ).first()
