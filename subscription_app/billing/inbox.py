"""The transactional inbox of webhook events: store once, claim, finish.

Storing is idempotent on the event id. Claiming hands each due event to exactly one worker:
on PostgreSQL with `FOR UPDATE SKIP LOCKED`, on SQLite with a compare-and-set update. A claim
is a lease (`locked_by`, `locked_until`): if its worker dies, the event is claimed again once
the lease runs out, so nothing is lost across crashes and restarts.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, bindparam, or_, text, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import Update
from sqlmodel import Session, col, select

from subscription_app import crypto
from subscription_app.billing.webhooks import VerifiedEvent
from subscription_app.models import PENDING_EVENT, EventStatus, StripeEvent, utcnow

logger = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 5
# A temporary failure (Stripe or the database unreachable, rate limited, a lock not got in
# time) says nothing about the event: it does not count towards `MAX_ATTEMPTS`, and the
# event is retried for as long as Stripe itself retries a delivery (3 days from receipt),
# less often the longer the outage has lasted (a tenth of the event's age, 2 s to 5 min).
OUTAGE_GIVE_UP = timedelta(days=3)
OUTAGE_RETRY_MIN, OUTAGE_RETRY_MAX = timedelta(seconds=2), timedelta(minutes=5)
ERROR_MAX_CHARS = 2000


def backoff(attempts: int) -> timedelta:
    """Delay before retry number `attempts` (1-based): 2 s, 4 s, 8 s ... capped at 5 min."""
    return timedelta(seconds=min(300, 2**attempts))


def store(session: Session, event: VerifiedEvent) -> bool:
    """Save a verified event (payload encrypted). False if it was stored before (duplicate)."""
    return event.id in store_many(session, [event])


def store_many(session: Session | Connection, events: Sequence[VerifiedEvent]) -> set[str]:
    """Save verified events in one statement; return the ids that were new.

    One `INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING event_id`: a repeat delivery
    (stored before, by a concurrent request, or twice in `events`) is skipped by the database
    itself, with no read first and no savepoint. The caller commits (or passes a connection
    in autocommit mode, where the statement is its own transaction).
    """
    if not events:
        return set()
    connection = session.connection() if isinstance(session, Session) else session
    autocommit = connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    if not autocommit and not connection.in_transaction():
        # The driver's cursor below would not begin SQLAlchemy's transaction (a Session's
        # connection is always in one): begin it, so the caller's commit or rollback counts.
        connection.begin()
    sql, values = store_statement(connection.dialect, events)
    # Straight to the driver: on this path (every webhook, in bursts) SQLAlchemy's statement
    # execution cost more than the database's insert. The driver's cursor runs in the
    # connection's transaction (or autocommit).
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, values)
        return {event_id for (event_id,) in cursor.fetchall()}
    finally:
        cursor.close()


def store_statement(dialect: Dialect, events: Sequence[VerifiedEvent]) -> tuple[str, list[Any]]:
    """`store_many`'s statement for `dialect`'s driver, and its parameters (payloads encrypted).

    One multi-row `INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING event_id`; each value
    has been through its column type's own conversion, as SQLAlchemy would send it. For
    callers that run it on a driver connection of their own (the intake's asynchronous one).
    """
    now = utcnow()
    values: list[Any] = []
    for event in events:
        row = {
            "event_id": event.id,
            "type": event.type,
            "stripe_created_at": event.created,
            "livemode": event.livemode,
            "payload_enc": crypto.encrypt(event.raw, purpose=crypto.Purpose.EVENT_PAYLOAD),
            "status": EventStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "received_at": now,
        }
        for name, convert in _bind_processors(dialect):
            values.append(convert(row[name]) if convert else row[name])
    return _store_sql(dialect.name, dialect.paramstyle, len(events)), values


_STORED_COLUMNS = (
    "event_id",
    "type",
    "stripe_created_at",
    "livemode",
    "payload_enc",
    "status",
    "attempts",
    "next_attempt_at",
    "received_at",
)
# Parameters per stored event in `store_statement`.
COLUMNS = len(_STORED_COLUMNS)


@lru_cache(maxsize=4)
def _bind_processors(dialect: Dialect) -> tuple[tuple[str, Any], ...]:
    """Each stored column's value conversion for `dialect` (None where there is none)."""
    table = cast(Table, sa_inspect(StripeEvent).local_table)
    return tuple(
        (name, table.c[name].type._cached_bind_processor(dialect)) for name in _STORED_COLUMNS
    )


@lru_cache(maxsize=64)
def _store_sql(dialect_name: str, paramstyle: str, rows: int) -> str:
    """`INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING event_id` for `rows` rows."""
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}[paramstyle]
    row = "(" + ", ".join([mark] * len(_STORED_COLUMNS)) + ")"
    return (
        # Only constants and placeholders go into the text; the values are parameters.
        f"INSERT INTO stripe_event ({', '.join(_STORED_COLUMNS)}) "  # noqa: S608
        f"VALUES {', '.join([row] * rows)} "
        "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    )


@dataclass(frozen=True)
class ClaimedEvent:
    """An event this worker holds the lease on."""

    row_id: int
    event_id: str
    type: str
    created: datetime
    attempts: int
    lease_token: str
    payload: dict
    locked_until: datetime | None = None  # when the lease runs out (unless renewed)
    received_at: datetime | None = None


def _events_table() -> Table:
    """The stripe_event table, for Core statements (no ORM work per statement)."""
    return cast(Table, sa_inspect(StripeEvent).local_table)


def _due(now: datetime) -> ColumnElement[bool]:
    return and_(
        text(PENDING_EVENT),  # a literal, so the partial index of pending events serves it
        col(StripeEvent.next_attempt_at) <= now,
        or_(col(StripeEvent.locked_until).is_(None), col(StripeEvent.locked_until) < now),
    )


def claim(session: Session, *, limit: int = 20) -> list[ClaimedEvent]:
    """Lease up to `limit` due events to this caller (oldest Stripe events first). Commits.

    One statement takes the lease and returns the events (`UPDATE ... RETURNING`): on
    PostgreSQL the due rows are picked inside it (`FOR UPDATE SKIP LOCKED`, so two workers
    never wait on or take the same row); on SQLite, which has no row locks, they are picked
    first and the update is a compare-and-set that only matches rows still due, so of two
    workers only one takes each row.
    """
    now = utcnow()
    token = uuid.uuid4().hex
    table = _events_table()
    due = (
        select(table.c.id)
        .where(_due(now))
        .order_by(table.c.stripe_created_at, table.c.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        where: list[ColumnElement[bool]] = [table.c.id.in_(due.with_for_update(skip_locked=True))]
    else:
        candidates = list(session.exec(due).all())
        if not candidates:
            session.commit()
            return []
        where = [table.c.id.in_(candidates), _due(now)]
    rows = (
        session.connection()
        .execute(
            update(table)
            .where(*where)
            .values(locked_by=token, locked_until=now + LEASE)
            .returning(
                table.c.id,
                table.c.event_id,
                table.c.type,
                table.c.stripe_created_at,
                table.c.attempts,
                table.c.payload_enc,
                table.c.locked_until,
                table.c.received_at,
            )
        )
        .all()
    )
    session.commit()
    claimed: list[ClaimedEvent] = []
    # RETURNING keeps no order: the oldest Stripe events first, as picked.
    for row in sorted(rows, key=lambda r: (r.stripe_created_at, r.id)):
        try:
            payload = json.loads(
                crypto.decrypt(row.payload_enc, purpose=crypto.Purpose.EVENT_PAYLOAD)
            )
        except (crypto.DecryptionError, ValueError) as exc:
            # A payload this worker cannot read: a failed attempt of that event alone, so the
            # rest of the batch goes ahead instead of the whole claim failing again and again.
            # A key this worker lacks (a rotation half rolled out) is waited out like an
            # outage, as a worker that has it may read the event; a tampered or malformed
            # payload, or one that decrypts but is not JSON, never will be read.
            logger.error("webhook event %s: stored payload unreadable: %s", row.id, exc)
            fail(
                session,
                _claimed(row, token, {}),
                f"The stored payload could not be read: {exc}",
                temporary=isinstance(exc, crypto.UnknownKeyError),
            )
            continue
        claimed.append(_claimed(row, token, payload))
    return claimed


def _claimed(row: Any, token: str, payload: dict) -> ClaimedEvent:
    return ClaimedEvent(
        row_id=row.id,
        event_id=row.event_id,
        type=row.type,
        created=row.stripe_created_at,
        attempts=row.attempts,
        lease_token=token,
        payload=payload,
        locked_until=row.locked_until,
        received_at=row.received_at,
    )


def renew(session: Session, lease_token: str) -> datetime:
    """Extend the lease of every event of one claim not finished yet; returns its new end.

    A batch takes as long as its Stripe calls: its worker renews the lease while working
    through it, so no other worker takes the rest over meanwhile. An event another worker
    took over already is not ours to renew (its `locked_by` is theirs). Commits.
    """
    until = utcnow() + LEASE
    _update_lease(session, lease_token, locked_until=until)
    return until


def still_held(session: Session, lease_token: str) -> set[int]:
    """The row ids of one claim's unfinished events that are still its own (not taken over
    by another worker after its lease ran out)."""
    table = _events_table()
    rows = session.connection().execute(
        select(table.c.id).where(text(PENDING_EVENT), table.c.locked_by == lease_token)
    )
    held = {row_id for (row_id,) in rows}
    session.commit()
    return held


def release(session: Session, lease_token: str) -> int:
    """Give up the lease of every event of one claim not finished yet; returns how many.

    For a processor that stops in the middle of a batch: the rest is due again at once for
    any worker, instead of when the lease would have run out. Commits.
    """
    return _update_lease(session, lease_token, locked_by=None, locked_until=None)


def _update_lease(session: Session, lease_token: str, **values: Any) -> int:
    """Set `values` on the unfinished events of one claim (not those taken over); commits."""
    table = _events_table()
    rows = (
        session.connection()
        .execute(
            update(table)
            .where(text(PENDING_EVENT), table.c.locked_by == lease_token)
            .values(**values)
        )
        .rowcount
    )
    session.commit()
    return rows


def _mine(event: ClaimedEvent) -> ColumnElement[bool]:
    return and_(
        col(StripeEvent.id) == event.row_id,
        col(StripeEvent.locked_by) == event.lease_token,
        col(StripeEvent.status) == EventStatus.PENDING.value,
    )


def _finish_statement() -> Update:
    table = _events_table()
    return (
        update(table)
        .where(
            table.c.id == bindparam("row_id"),
            table.c.locked_by == bindparam("lease_token"),
            table.c.status == EventStatus.PENDING.value,
        )
        .values(
            status=bindparam("new_status"),
            processed_at=bindparam("processed_at"),
            locked_by=None,
            locked_until=None,
            attempts=bindparam("new_attempts"),
            last_error=bindparam("note"),
        )
    )


# Built once: the finish runs for every event, and building the statement cost more than
# running it.
_FINISH = _finish_statement()


def finish(session: Session, event: ClaimedEvent, status: EventStatus, note: str | None) -> bool:
    """Mark the event done or skipped, in the caller's transaction. False if the lease was lost."""
    result = session.connection().execute(
        _FINISH,
        {
            "row_id": event.row_id,
            "lease_token": event.lease_token,
            "new_status": status.value,
            "processed_at": utcnow(),
            "new_attempts": event.attempts + 1,
            "note": note[:ERROR_MAX_CHARS] if note else None,
        },
    )
    return result.rowcount == 1


def fail(
    session: Session, event: ClaimedEvent, error: str, *, temporary: bool = False
) -> EventStatus:
    """Record a failed attempt: retry later with backoff, or give up after MAX_ATTEMPTS.

    A `temporary` failure (an outage, not the event's fault) is not counted: the event is
    retried until `OUTAGE_GIVE_UP` after its receipt, a tenth of its age later each time.
    """
    now = utcnow()
    if temporary:
        age = now - (event.received_at or now)
        attempts = event.attempts
        give_up = age >= OUTAGE_GIVE_UP
        delay = min(OUTAGE_RETRY_MAX, max(OUTAGE_RETRY_MIN, age / 10))
    else:
        attempts = event.attempts + 1
        give_up = attempts >= MAX_ATTEMPTS
        delay = backoff(attempts)
    status = EventStatus.FAILED if give_up else EventStatus.PENDING
    session.exec(
        update(StripeEvent)
        .where(_mine(event))
        .values(
            status=status.value,
            attempts=attempts,
            next_attempt_at=now + delay,
            locked_by=None,
            locked_until=None,
            last_error=error[:ERROR_MAX_CHARS],
            processed_at=now if give_up else None,
        )
    )
    session.commit()
    return status
