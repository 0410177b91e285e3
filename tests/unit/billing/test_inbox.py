"""`billing/inbox.py`: webhook events are stored once, leased to one worker, then finished."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from subscription_app.billing import inbox
from subscription_app.billing.webhooks import VerifiedEvent
from subscription_app.models import EventStatus, StripeEvent
from tests.conftest import stripe_fixture


def _event(event_id: str | None = None, created: int | None = None) -> VerifiedEvent:
    """Stripe's published example event, optionally under another id and time."""
    data = stripe_fixture("event")
    if event_id is not None:
        data["id"] = event_id
    if created is not None:
        data["created"] = created
    return VerifiedEvent(
        id=data["id"],
        type=data["type"],
        created=datetime.fromtimestamp(data["created"], tz=UTC),
        livemode=bool(data["livemode"]),
        raw=json.dumps(data),
    )


@pytest.fixture
def now(clock, monkeypatch):
    """The inbox's clock, set a minute ahead of when the test's events are stored."""
    clock.advance(60)
    monkeypatch.setattr(inbox, "utcnow", clock)
    return clock


@pytest.fixture
def worker(db_engine):
    """Open sessions standing for other workers' connections."""
    opened: list[Session] = []

    def _open() -> Session:
        opened.append(Session(db_engine))
        return opened[-1]

    yield _open
    for s in opened:
        s.close()


def _stored(session: Session, event_id: str) -> StripeEvent:
    session.expire_all()
    return session.exec(select(StripeEvent).where(StripeEvent.event_id == event_id)).one()


def test_an_event_is_stored_once(session):
    event = _event()
    assert inbox.store(session, event)
    session.commit()
    assert not inbox.store(session, event)
    session.commit()

    rows = session.exec(select(StripeEvent)).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.event_id == "evt_1Pgc76B7WZ01zgkWwyRHS12y"
    assert row.type == "plan.created"
    assert row.stripe_created_at == datetime.fromtimestamp(1234567890, tz=UTC)
    assert row.status == EventStatus.PENDING.value
    assert row.attempts == 0
    assert "price_1PgafmB7WZ01zgkW6dKueIc5" not in row.payload_enc  # encrypted at rest


def test_a_batch_is_stored_as_the_orm_reads_it_each_event_once(db_engine, session):
    # store_many writes straight through the driver: every column must read back through
    # the ORM as the model declares it (aware times, booleans, the encrypted payload).
    first = _event("evt_batch_1", created=1_700_000_001)
    # A time given in another zone is stored as the same instant, in UTC.
    elsewhere = datetime.fromtimestamp(1_700_000_002, tz=timezone(timedelta(hours=2)))
    live = replace(_event("evt_batch_2"), created=elsewhere, livemode=True)
    with db_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        assert inbox.store_many(connection, [first, live, first]) == {"evt_batch_1", "evt_batch_2"}
        assert inbox.store_many(connection, [live]) == set()

    rows = {row.event_id: row for row in session.exec(select(StripeEvent)).all()}
    assert sorted(rows) == ["evt_batch_1", "evt_batch_2"]
    for event in (first, live):
        row = rows[event.id]
        assert row.type == "plan.created"
        assert row.stripe_created_at == event.created
        assert row.stripe_created_at.tzinfo is not None
        assert row.livemode is event.livemode
        assert row.status == EventStatus.PENDING.value
        assert row.attempts == 0
        assert row.received_at.tzinfo is not None
    [claimed, _] = inbox.claim(session)
    assert claimed.payload == json.loads(first.raw)

    # In the database, the values are those the ORM itself writes for the same event.
    session.add(
        StripeEvent(
            event_id="evt_by_orm",
            type=live.type,
            stripe_created_at=live.created,
            livemode=True,
            payload_enc="-",
        )
    )
    session.commit()
    raw = (
        "SELECT stripe_created_at, livemode, status, attempts FROM stripe_event"
        " WHERE event_id = :id"
    )
    by_orm, batched = (
        session.connection().execute(text(raw), {"id": event_id}).one()
        for event_id in ("evt_by_orm", "evt_batch_2")
    )
    assert batched == by_orm


def test_a_batch_stored_in_a_session_is_undone_by_its_rollback(session):
    assert inbox.store_many(session, [_event("evt_undone")]) == {"evt_undone"}
    session.rollback()

    assert session.exec(select(StripeEvent)).all() == []


def test_a_batch_stored_on_a_plain_connection_is_kept_by_its_commit_and_undone_by_rollback(
    db_engine, session
):
    with db_engine.connect() as connection:
        assert inbox.store_many(connection, [_event("evt_kept")]) == {"evt_kept"}
        connection.commit()
        assert inbox.store_many(connection, [_event("evt_undone")]) == {"evt_undone"}
        connection.rollback()

    assert [row.event_id for row in session.exec(select(StripeEvent)).all()] == ["evt_kept"]


def test_a_claimed_event_carries_the_payload_as_stripe_sent_it(session, now):
    inbox.store(session, _event())
    session.commit()

    [claimed] = inbox.claim(session)

    assert claimed.event_id == "evt_1Pgc76B7WZ01zgkWwyRHS12y"
    assert claimed.type == "plan.created"
    assert claimed.created == datetime.fromtimestamp(1234567890, tz=UTC)
    assert claimed.attempts == 0
    assert claimed.payload == stripe_fixture("event")
    row = _stored(session, claimed.event_id)
    assert row.locked_by == claimed.lease_token
    assert row.locked_until == now.now + inbox.LEASE


def test_oldest_stripe_events_are_claimed_first(session, now):
    inbox.store(session, _event("evt_newer", created=1_700_000_100))
    inbox.store(session, _event("evt_older", created=1_700_000_000))
    session.commit()

    assert [e.event_id for e in inbox.claim(session, limit=1)] == ["evt_older"]
    assert [e.event_id for e in inbox.claim(session, limit=1)] == ["evt_newer"]


def test_two_workers_never_claim_the_same_event(session, now, worker):
    for n in range(3):
        inbox.store(session, _event(f"evt_{n}", created=1_700_000_000 + n))
    session.commit()
    first, second = worker(), worker()

    got_first = inbox.claim(first, limit=2)
    got_second = inbox.claim(second, limit=2)
    got_again = inbox.claim(first, limit=2)

    assert [e.event_id for e in got_first] == ["evt_0", "evt_1"]
    assert [e.event_id for e in got_second] == ["evt_2"]
    assert got_again == []
    assert got_first[0].lease_token != got_second[0].lease_token


def test_finish_marks_the_event_done(session, now):
    inbox.store(session, _event())
    session.commit()
    [claimed] = inbox.claim(session)

    assert inbox.finish(session, claimed, EventStatus.DONE, None)
    session.commit()

    row = _stored(session, claimed.event_id)
    assert row.status == EventStatus.DONE.value
    assert row.attempts == 1
    assert row.processed_at == now.now
    assert (row.locked_by, row.locked_until, row.last_error) == (None, None, None)
    now.advance(3600)
    assert inbox.claim(session) == []


def test_finish_as_skipped_keeps_a_shortened_note(session, now):
    inbox.store(session, _event())
    session.commit()
    [claimed] = inbox.claim(session)

    assert inbox.finish(session, claimed, EventStatus.SKIPPED, "x" * 5000)
    session.commit()

    row = _stored(session, claimed.event_id)
    assert row.status == EventStatus.SKIPPED.value
    assert row.last_error == "x" * inbox.ERROR_MAX_CHARS


def test_backoff_doubles_and_is_capped():
    assert [inbox.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert inbox.backoff(20) == timedelta(minutes=5)


def test_a_failed_event_is_retried_after_its_backoff(session, now):
    inbox.store(session, _event())
    session.commit()
    [claimed] = inbox.claim(session)

    assert inbox.fail(session, claimed, "handler exploded") == EventStatus.PENDING

    row = _stored(session, claimed.event_id)
    assert row.status == EventStatus.PENDING.value
    assert row.attempts == 1
    assert row.last_error == "handler exploded"
    assert row.next_attempt_at == now.now + inbox.backoff(1)
    assert (row.locked_by, row.locked_until, row.processed_at) == (None, None, None)

    now.advance(inbox.backoff(1).total_seconds() - 1)
    assert inbox.claim(session) == []  # not due yet
    now.advance(1)
    [again] = inbox.claim(session)
    assert again.event_id == claimed.event_id
    assert again.attempts == 1


def test_an_event_fails_for_good_after_the_last_attempt(session, now):
    inbox.store(session, _event())
    session.commit()

    outcomes = []
    for attempt in range(1, inbox.MAX_ATTEMPTS + 1):
        [claimed] = inbox.claim(session)
        assert claimed.attempts == attempt - 1
        outcomes.append(inbox.fail(session, claimed, f"failure {attempt}"))
        now.advance(inbox.backoff(attempt).total_seconds())

    assert outcomes == [EventStatus.PENDING] * (inbox.MAX_ATTEMPTS - 1) + [EventStatus.FAILED]
    row = _stored(session, "evt_1Pgc76B7WZ01zgkWwyRHS12y")
    assert row.status == EventStatus.FAILED.value
    assert row.attempts == inbox.MAX_ATTEMPTS
    assert row.last_error == f"failure {inbox.MAX_ATTEMPTS}"
    assert row.processed_at is not None
    now.advance(86400)
    assert inbox.claim(session) == []


def test_an_expired_lease_is_claimed_again_and_the_old_holder_loses_it(session, now, worker):
    inbox.store(session, _event())
    session.commit()
    crashed, rescuer = worker(), worker()

    [lost] = inbox.claim(crashed)
    now.advance(inbox.LEASE.total_seconds())
    assert inbox.claim(rescuer) == []  # the lease lasts its full time
    now.advance(0.001)
    [taken] = inbox.claim(rescuer)

    assert taken.event_id == lost.event_id
    assert taken.lease_token != lost.lease_token
    assert not inbox.finish(crashed, lost, EventStatus.DONE, None)
    crashed.commit()
    assert inbox.finish(rescuer, taken, EventStatus.DONE, None)
    rescuer.commit()
    assert _stored(session, lost.event_id).status == EventStatus.DONE.value


def test_a_claim_reads_only_the_index_of_pending_events(session):
    """However many events are done, a claim looks only at pending ones (migration 0006)."""
    now = datetime.now(UTC)
    query = (
        select(StripeEvent.id)
        .where(inbox._due(now))
        .order_by(StripeEvent.stripe_created_at, StripeEvent.id)
        .limit(20)
    )
    bind = session.get_bind()
    compiled = query.compile(bind)
    if bind.dialect.name == "postgresql":
        # A generic plan, as PostgreSQL uses for a statement run many times: it knows no
        # bound value, so only a condition written into the SQL can select a partial index.
        # And with too few rows to prefer an index on its own, a table scan is made its
        # last resort, so the plan shows whether the index can serve this query at all.
        names = list(compiled.params)
        sql = str(compiled)
        for number, name in enumerate(names, start=1):
            sql = sql.replace(f"%({name})s", f"${number}")
        session.execute(text("SET LOCAL enable_seqscan = off"))
        session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        session.execute(text(f"PREPARE claim_plan AS {sql}"))
        values = ", ".join(f"'{compiled.params[name]}'" for name in names)
        plan = " ".join(
            row[0] for row in session.execute(text(f"EXPLAIN EXECUTE claim_plan({values})"))
        )
        session.execute(text("DEALLOCATE claim_plan"))
    else:
        parameters = tuple(compiled.params[name] for name in compiled.positiontup or ())
        plan = " ".join(
            str(row[-1])
            for row in session.connection().exec_driver_sql(
                f"EXPLAIN QUERY PLAN {compiled}", parameters
            )
        )
    assert "ix_stripe_event_pending" in plan
