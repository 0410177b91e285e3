"""Database tables (SQLModel).

Stripe identifiers (customer and subscription IDs) are never stored in plain text: each is
kept as ciphertext (`*_enc`, see `subscription_app.crypto`) next to a keyed hash
(`*_hash`, a blind index) that lets us find a row by the ID a webhook names.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite has no timezone type and hands back naive datetimes; this makes both backends
    behave the same so comparisons (event ordering) never mix naive and aware values.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC values")
        return value.astimezone(UTC)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _ts(nullable: bool = True, **kwargs: Any) -> Any:
    # `Any`, as `Field` itself returns: the value stands in for the column's default.
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, **kwargs)


class SubscriptionStatus(enum.StrEnum):
    """Every status Stripe gives a subscription."""

    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    TRIALING = "trialing"
    UNPAID = "unpaid"
    PAUSED = "paused"

    @property
    def is_live(self) -> bool:
        """A live subscription blocks starting another one."""
        return self in LIVE_STATUSES

    @property
    def is_open(self) -> bool:
        """Live, or a first payment still in progress: at most one per person."""
        return self in OPEN_STATUSES


LIVE_STATUSES = frozenset(
    {
        SubscriptionStatus.ACTIVE,
        SubscriptionStatus.TRIALING,
        SubscriptionStatus.PAST_DUE,
        SubscriptionStatus.UNPAID,
        SubscriptionStatus.PAUSED,
    }
)
OPEN_STATUSES = LIVE_STATUSES | {SubscriptionStatus.INCOMPLETE}
# The database's last guard against two subscriptions for one person (see `Subscription`).
ONE_OPEN_SUBSCRIPTION_WHERE = "our_plan AND status IN ({})".format(
    ", ".join(f"'{status.value}'" for status in sorted(OPEN_STATUSES))
)


class EventStatus(enum.StrEnum):
    """Processing state of a received webhook event."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


def _enum_check(column: str, enum_cls: type[enum.StrEnum], name: str) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{member.value}'" for member in enum_cls)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=name)


class User(SQLModel, table=True):
    """A person with an account. `email` is validated and normalised (lower-case)."""

    __tablename__ = "user_account"  # "user" is a reserved word in PostgreSQL

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=254, sa_column_kwargs={"unique": True}, index=True)
    password_hash: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class AuthSession(SQLModel, table=True):
    """A login. Browser sessions and API tokens both point at one; logout revokes it."""

    __tablename__ = "auth_session"

    id: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="user_account.id", index=True, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    revoked_at: datetime | None = _ts()
    # The logins that took turns in one browser's session cookie share the id of the first
    # (None: a group of its own). Logging out ends the group (`accounts.revoke_session`), so
    # a tab still holding a login the cookie no longer names cannot keep acting.
    browser_id: str | None = Field(default=None, max_length=64, index=True)


class BillingCustomer(SQLModel, table=True):
    """The Stripe customer that belongs to a user (one per user)."""

    __tablename__ = "billing_customer"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(
        foreign_key="user_account.id", sa_column_kwargs={"unique": True}, ondelete="CASCADE"
    )
    stripe_customer_id_enc: str = Field(max_length=512)
    stripe_customer_id_hash: str = Field(
        max_length=64, sa_column_kwargs={"unique": True}, index=True
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Subscription(SQLModel, table=True):
    """Our copy of a Stripe subscription. Stripe is the source of truth; webhooks update it."""

    __tablename__ = "subscription"
    __table_args__ = (
        _enum_check("status", SubscriptionStatus, "ck_subscription_status"),
        # At most one live or in-progress subscription per person, whatever the code above does.
        sa.Index(
            "uq_subscription_one_open_per_user",
            "user_id",
            unique=True,
            sqlite_where=sa.text(ONE_OPEN_SUBSCRIPTION_WHERE),
            postgresql_where=sa.text(ONE_OPEN_SUBSCRIPTION_WHERE),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user_account.id", index=True, ondelete="CASCADE")
    stripe_customer_id_enc: str = Field(max_length=512)
    stripe_customer_id_hash: str = Field(max_length=64, index=True)
    stripe_subscription_id_enc: str = Field(max_length=512)
    stripe_subscription_id_hash: str = Field(
        max_length=64, sa_column_kwargs={"unique": True}, index=True
    )
    price_id: str = Field(max_length=255)
    status: str = Field(max_length=32, index=True)
    started_at: datetime | None = _ts()
    current_period_end: datetime | None = _ts()
    cancel_at_period_end: bool = Field(default=False)
    # When a subscription set to end will end (Stripe's `cancel_at`): in flexible billing
    # mode the customer portal sets only this, leaving `cancel_at_period_end` false.
    cancel_at: datetime | None = _ts()
    canceled_at: datetime | None = _ts()
    ended_at: datetime | None = _ts()
    # When Stripe's state was last applied. Informational only: Stripe's clock (whole seconds)
    # and ours are never compared; ordering comes from re-reading Stripe under a lock.
    stripe_updated_at: datetime | None = _ts()
    # Became live at least once. An attempt whose first payment never went through is kept
    # (as Stripe reports it) but is not shown as a subscription.
    activated: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    # The subscription is to our plan's price. Another price of the same Stripe account (sold
    # elsewhere, or made in the Stripe dashboard) is recorded, but never shown or counted as
    # our plan.
    our_plan: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    # Past due only: whether Stripe will try the payment again (False: its retries are used
    # up, or the merchant collects by hand), so the dashboard never promises a retry that
    # will not come. None when not past due, or not known (`sync.payment_retrying`).
    payment_retrying: bool | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


# The condition of the pending-events index, written as a literal: a query must say it in
# these words (not with a bound parameter) for SQLite and PostgreSQL to use that index.
PENDING_EVENT = "stripe_event.status = 'pending'"


class StripeEvent(SQLModel, table=True):
    """A received, verified webhook event: stored first, processed later (transactional inbox)."""

    __tablename__ = "stripe_event"
    __table_args__ = (
        _enum_check("status", EventStatus, "ck_stripe_event_status"),
        # Only events still to process, in claim order (migration 0006).
        sa.Index(
            "ix_stripe_event_pending",
            "stripe_created_at",
            "id",
            postgresql_where=sa.text(PENDING_EVENT),
            sqlite_where=sa.text(PENDING_EVENT),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=255, sa_column_kwargs={"unique": True})
    type: str = Field(max_length=255)
    stripe_created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    livemode: bool = Field(default=False)
    # The raw event JSON, encrypted: it names customers and subscriptions.
    payload_enc: str = Field(sa_type=sa.Text)
    status: str = Field(default=EventStatus.PENDING.value, max_length=16)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # Lease of the worker processing it (see billing/inbox.py).
    locked_by: str | None = Field(default=None, max_length=64)
    locked_until: datetime | None = _ts()
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    processed_at: datetime | None = _ts()


class Notification(SQLModel, table=True):
    """An in-app message for a user (payment failed, subscription cancelled, ...)."""

    __tablename__ = "notification"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user_account.id", index=True, ondelete="CASCADE")
    kind: str = Field(max_length=64)
    text: str = Field(max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    read_at: datetime | None = _ts()


class AppLock(SQLModel, table=True):
    """A named lease (SQLite's stand-in for PostgreSQL advisory locks; see `locks.py`)."""

    __tablename__ = "app_lock"

    name: str = Field(primary_key=True, max_length=128)
    holder: str = Field(max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class OutboxEmail(SQLModel, table=True):
    """An email to send, written in the transaction that decided to send it (an outbox).

    The webhook processor of each worker delivers due rows after that transaction commits
    (see `notifications.deliver_due`), so a rolled-back change sends nothing and an SMTP
    outage delays mail without undoing what the person did. The address is read from the
    user's row at sending time.
    """

    __tablename__ = "outbox_email"
    __table_args__ = (sa.Index("ix_outbox_email_due", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user_account.id", index=True, ondelete="CASCADE")
    subject: str = Field(max_length=255)
    body: str = Field(sa_type=sa.Text)
    # pending → sent, or failed after MAX_ATTEMPTS (see notifications.py).
    status: str = Field(default="pending", max_length=16)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # A worker's claim while it talks to the SMTP server; another may take over after it.
    claimed_until: datetime | None = _ts()
    last_error: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    sent_at: datetime | None = _ts()


class CardDecline(SQLModel, table=True):
    """A card Stripe declined on one of a person's SetupIntents or first payments, as its
    webhook said.

    Counted towards the person's card-testing limit (`billing/card_testing.py`): a script
    holding a client secret our page was given can ask Stripe to check cards without telling
    our page, but not without Stripe telling us. One row per Stripe event, so a redelivery
    counts once; rows older than the limit's window are deleted as new ones arrive.
    """

    __tablename__ = "card_decline"
    __table_args__ = (sa.Index("ix_card_decline_user_declined", "user_id", "declined_at"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user_account.id", ondelete="CASCADE")
    event_id: str = Field(max_length=255, sa_column_kwargs={"unique": True})
    # Stripe's time of the event (when the card was declined), not when it reached us.
    declined_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
