"""The only code that writes billing rows. Stripe IDs go in encrypted, lookups go by hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from subscription_app import crypto
from subscription_app.billing.reader import SubscriptionSnapshot
from subscription_app.models import (
    BillingCustomer,
    Notification,
    Subscription,
    SubscriptionStatus,
    utcnow,
)


@dataclass(frozen=True)
class SubscriptionView:
    """What pages and the API show of a subscription (no Stripe IDs)."""

    status: str
    price_id: str
    started_at: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    ended_at: datetime | None

    @property
    def is_live(self) -> bool:
        """Active, trialing, past due, unpaid or paused: the user has a subscription."""
        return SubscriptionStatus(self.status).is_live


def _view(row: Subscription) -> SubscriptionView:
    return SubscriptionView(
        status=row.status,
        price_id=row.price_id,
        started_at=row.started_at,
        current_period_end=row.current_period_end,
        cancel_at_period_end=row.cancel_at_period_end,
        canceled_at=row.canceled_at,
        ended_at=row.ended_at,
    )


# Customers -------------------------------------------------------------------


def customer_id_for_user(session: Session, user_id: int) -> str | None:
    """The user's Stripe customer id, decrypted, or None."""
    row = session.exec(select(BillingCustomer).where(BillingCustomer.user_id == user_id)).first()
    return crypto.decrypt(row.stripe_customer_id_enc) if row else None


def user_id_for_customer(session: Session, customer_id: str) -> int | None:
    """The user that owns a Stripe customer id, or None."""
    row = session.exec(
        select(BillingCustomer).where(
            BillingCustomer.stripe_customer_id_hash == crypto.blind_index(customer_id)
        )
    ).first()
    return row.user_id if row else None


def save_customer(session: Session, user_id: int, customer_id: str) -> str:
    """Link a Stripe customer to a user. If another request linked one first, keep that one."""
    row = BillingCustomer(
        user_id=user_id,
        stripe_customer_id_enc=crypto.encrypt(customer_id),
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


# Subscriptions -----------------------------------------------------------------


def _row_by_stripe_id(session: Session, subscription_id: str) -> Subscription | None:
    return session.exec(
        select(Subscription).where(
            Subscription.stripe_subscription_id_hash == crypto.blind_index(subscription_id)
        )
    ).first()


def _current_row(session: Session, user_id: int) -> Subscription | None:
    rows = session.exec(
        select(Subscription)
        .where(Subscription.user_id == user_id)
        .order_by(col(Subscription.created_at).desc(), col(Subscription.id).desc())
    ).all()
    for row in rows:
        if SubscriptionStatus(row.status).is_live:
            return row
    return rows[0] if rows else None


def current_subscription(session: Session, user_id: int) -> SubscriptionView | None:
    """The user's live subscription if any, else their most recent one, else None."""
    row = _current_row(session, user_id)
    return _view(row) if row else None


def live_subscription_id(session: Session, user_id: int) -> str | None:
    """The Stripe id of the user's live subscription, decrypted, or None."""
    row = _current_row(session, user_id)
    if row is None or not SubscriptionStatus(row.status).is_live:
        return None
    return crypto.decrypt(row.stripe_subscription_id_enc)


def latest_subscription_id(session: Session, user_id: int) -> str | None:
    """The Stripe id of the user's most relevant subscription (live first), or None."""
    row = _current_row(session, user_id)
    return crypto.decrypt(row.stripe_subscription_id_enc) if row else None


def apply_snapshot(
    session: Session,
    *,
    user_id: int,
    snapshot: SubscriptionSnapshot,
    observed_at: datetime,
) -> bool:
    """Insert or update the row for `snapshot`, unless we already hold newer state.

    `observed_at` is when Stripe produced this state (an event's `created`, or the time of
    our own API call). Returns True when the row changed.
    """
    row = _row_by_stripe_id(session, snapshot.id)
    now = utcnow()
    if row is None:
        row = Subscription(
            user_id=user_id,
            stripe_customer_id_enc=crypto.encrypt(snapshot.customer_id),
            stripe_customer_id_hash=crypto.blind_index(snapshot.customer_id),
            stripe_subscription_id_enc=crypto.encrypt(snapshot.id),
            stripe_subscription_id_hash=crypto.blind_index(snapshot.id),
            price_id=snapshot.price_id or "",
            status=snapshot.status,
            created_at=now,
        )
    elif row.stripe_updated_at is not None and observed_at < row.stripe_updated_at:
        return False  # an older state must never roll the row back
    row.price_id = snapshot.price_id or row.price_id
    row.status = SubscriptionStatus(snapshot.status).value
    row.started_at = snapshot.started_at
    row.current_period_end = snapshot.current_period_end
    row.cancel_at_period_end = snapshot.cancel_at_period_end
    row.canceled_at = snapshot.canceled_at
    row.ended_at = snapshot.ended_at
    row.stripe_updated_at = observed_at
    row.updated_at = now
    session.add(row)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # A concurrent writer inserted the same subscription: update theirs instead.
        session.expunge(row)
        return apply_snapshot(session, user_id=user_id, snapshot=snapshot, observed_at=observed_at)
    return True


def delete_subscription(session: Session, subscription_id: str) -> None:
    """Forget a subscription row (used when a first payment failed and nothing was bought)."""
    row = _row_by_stripe_id(session, subscription_id)
    if row is not None:
        session.delete(row)
        session.flush()


def user_id_for_subscription(session: Session, subscription_id: str) -> int | None:
    """The user a Stripe subscription id belongs to, by our row or through its customer."""
    row = _row_by_stripe_id(session, subscription_id)
    return row.user_id if row else None


# Notifications -------------------------------------------------------------------


def add_notification(session: Session, user_id: int, kind: str, text: str) -> None:
    """Leave an in-app message for the user."""
    session.add(Notification(user_id=user_id, kind=kind, text=text[:1000]))
    session.flush()


def recent_notifications(session: Session, user_id: int, limit: int = 5) -> list[Notification]:
    """The user's newest messages, newest first."""
    return list(
        session.exec(
            select(Notification)
            .where(Notification.user_id == user_id)
            .order_by(col(Notification.created_at).desc(), col(Notification.id).desc())
            .limit(limit)
        ).all()
    )


def subscription_version(session: Session, user_id: int) -> str:
    """A value that changes whenever the user's billing rows change (for live pages)."""
    latest = session.exec(
        select(Subscription.updated_at)
        .where(Subscription.user_id == user_id)
        .order_by(col(Subscription.updated_at).desc())
        .limit(1)
    ).first()
    notes = session.exec(
        select(Notification.id)
        .where(Notification.user_id == user_id)
        .order_by(col(Notification.id).desc())
        .limit(1)
    ).first()
    return f"{latest.isoformat() if latest else '-'}/{notes or 0}"
