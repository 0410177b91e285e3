"""Webhooks: verification, durable storage, asynchronous processing (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session, func, select

from subscription_app import accounts
from subscription_app.api import create_api
from subscription_app.billing import handlers, inbox, processor, repository
from subscription_app.billing.reader import read_subscription
from subscription_app.billing.webhooks import sign
from subscription_app.models import EventStatus, StripeEvent, Subscription

SECRET = "whsec_test_secret_for_integration"
T0 = int(time.time()) - 3600


@pytest.fixture
def hook(db_engine, settings_env):
    settings_env(STRIPE_WEBHOOK_SECRET=SECRET)
    with TestClient(create_api(), raise_server_exceptions=False) as client:
        yield client


def subscription_object(sub_id="sub_A", cus_id="cus_A", status="active", **extra) -> dict:
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": cus_id,
        "status": status,
        "start_date": T0,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "items": {
            "data": [
                {
                    "price": {"id": "price_1"},
                    "current_period_start": T0,
                    "current_period_end": T0 + 30 * 86400,
                }
            ]
        },
        **extra,
    }


def event_body(event_type: str, obj: dict, created: int = T0, event_id: str | None = None) -> str:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": event_type,
            "created": created,
            "livemode": False,
            "data": {"object": obj},
        }
    )


def post(client, body: str, header: str | None = "sign"):
    headers = {"Content-Type": "application/json"}
    if header == "sign":
        headers["Stripe-Signature"] = sign(body, SECRET)
    elif header is not None:
        headers["Stripe-Signature"] = header
    return client.post("/api/v1/webhooks/stripe", content=body.encode(), headers=headers)


def seed_user(
    session: Session,
    email="a@example.com",
    sub_id="sub_A",
    cus_id="cus_A",
    status="active",
    observed=T0,
) -> int:
    user = accounts.register_user(session=session, email=email, password="s3cret-pass")
    repository.save_customer(session, user.id, cus_id)
    if sub_id:
        repository.apply_snapshot(
            session,
            user_id=user.id,
            snapshot=read_subscription(subscription_object(sub_id, cus_id, status)),
            observed_at=datetime.fromtimestamp(observed, UTC),
        )
    session.commit()
    return user.id


def events(session: Session) -> list[StripeEvent]:
    session.rollback()  # a fresh snapshot of what others committed
    return list(session.exec(select(StripeEvent).order_by(StripeEvent.id)).all())


def status_of(session: Session, user_id: int) -> str:
    session.rollback()  # a fresh snapshot of what others committed
    return repository.current_subscription(session, user_id).status


def drain() -> processor.BatchResult:
    total = processor.BatchResult()
    while True:
        result = processor.process_batch()
        if not result.claimed:
            return total
        total.claimed += result.claimed
        total.done += result.done
        total.skipped += result.skipped
        total.retried += result.retried
        total.failed += result.failed


# Verification -------------------------------------------------------------------------


def test_verified_event_is_stored_encrypted_and_answered_at_once(hook, session):
    body = event_body("customer.subscription.updated", subscription_object())
    response = post(hook, body)
    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    [row] = events(session)
    assert row.status == "pending" and row.type == "customer.subscription.updated"
    assert "sub_A" not in row.payload_enc and "cus_A" not in row.payload_enc


@pytest.mark.parametrize(
    "case", ["missing", "malformed", "wrong_secret", "tampered", "expired", "future_garbage"]
)
def test_bad_signatures_get_400_and_store_nothing(hook, session, case):
    body = event_body("customer.subscription.updated", subscription_object())
    header = {
        "missing": None,
        "malformed": "this is not a signature",
        "wrong_secret": sign(body, "whsec_someone_else"),
        "tampered": sign(body.replace("active", "canceled"), SECRET),
        "expired": sign(body, SECRET, timestamp=int(time.time()) - 301),
        "future_garbage": "t=abc,v1=",
    }[case]
    response = post(hook, body, header)
    assert response.status_code == 400
    assert "signature" in response.json()["detail"].lower()
    assert events(session) == []


def test_oversized_body_is_refused_before_parsing(hook, session):
    body = event_body("customer.subscription.updated", {"padding": "x" * (1024 * 1024 + 10)})
    response = post(hook, body)
    assert response.status_code == 413
    assert events(session) == []


def test_signed_non_event_is_refused(hook, session):
    response = post(hook, json.dumps({"hello": "world"}))
    assert response.status_code == 400
    assert events(session) == []


def test_duplicate_delivery_is_acknowledged_and_applied_once(hook, session):
    user_id = seed_user(session)
    body = event_body(
        "customer.subscription.updated",
        subscription_object(status="past_due"),
        created=T0 + 10,
        event_id="evt_dup",
    )
    assert post(hook, body).json()["duplicate"] is False
    assert post(hook, body).json() == {"received": True, "duplicate": True}
    assert len(events(session)) == 1
    assert drain().done == 1
    assert post(hook, body).json()["duplicate"] is True  # still a duplicate after processing
    assert drain().claimed == 0
    [row] = events(session)
    assert row.status == "done" and row.attempts == 1
    assert status_of(session, user_id) == "past_due"


# Processing ---------------------------------------------------------------------------------


def test_older_update_after_newer_does_not_roll_back(hook, session):
    user_id = seed_user(session)
    newer = event_body(
        "customer.subscription.updated", subscription_object(status="past_due"), created=T0 + 20
    )
    older = event_body(
        "customer.subscription.updated", subscription_object(status="active"), created=T0 + 10
    )
    post(hook, newer)
    drain()
    post(hook, older)
    drain()
    assert status_of(session, user_id) == "past_due"
    assert "older" in events(session)[-1].last_error


def test_event_for_an_unknown_subscription_links_through_the_customer(hook, session):
    user_id = seed_user(session, sub_id=None)
    body = event_body(
        "customer.subscription.created", subscription_object("sub_outside"), created=T0 + 5
    )
    post(hook, body)
    assert drain().done == 1
    assert status_of(session, user_id) == "active"
    # A customer nobody here owns: recorded and skipped, nothing created.
    post(hook, event_body("customer.subscription.created", subscription_object("sub_x", "cus_x")))
    assert drain().skipped == 1
    session.rollback()
    assert session.exec(select(func.count()).select_from(Subscription)).one() == 1


def test_deleted_event_marks_the_subscription_canceled(hook, session):
    user_id = seed_user(session)
    gone = subscription_object(status="canceled", canceled_at=T0 + 50, ended_at=T0 + 50)
    post(hook, event_body("customer.subscription.deleted", gone, created=T0 + 50))
    drain()
    session.rollback()  # a fresh snapshot of what others committed
    view = repository.current_subscription(session, user_id)
    assert view.status == "canceled" and view.canceled_at is not None


def test_unknown_event_type_is_recorded_and_skipped(hook, session):
    post(hook, event_body("charge.dispute.funds_reinstated", {"id": "du_1"}))
    assert drain().skipped == 1
    [row] = events(session)
    assert row.status == "skipped"
    assert "no handler" in row.last_error


@pytest.fixture
def exploding_handler(monkeypatch):
    calls = []

    def explode(session, event):
        calls.append(event.event_id)
        raise RuntimeError("boom while handling sub_SECRET123")

    monkeypatch.setitem(handlers._REGISTRY, "test.explode", explode)
    return calls


def test_failing_handler_is_retried_with_backoff_then_marked_failed(
    hook, session, exploding_handler
):
    user_id = seed_user(session)
    post(hook, event_body("test.explode", {"id": "x"}, created=T0))
    post(
        hook,
        event_body(
            "customer.subscription.updated", subscription_object(status="past_due"), created=T0 + 1
        ),
    )
    first = processor.process_batch()
    assert first.retried == 1 and first.done == 1  # moved on to the next event
    assert status_of(session, user_id) == "past_due"
    row = events(session)[0]
    assert row.status == "pending" and row.attempts == 1
    assert row.next_attempt_at > datetime.now(UTC)  # backoff: not due again yet
    assert processor.process_batch().claimed == 0

    for attempt in range(2, inbox.MAX_ATTEMPTS + 1):
        session.execute(
            update(StripeEvent)
            .where(StripeEvent.id == row.id)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
        processor.process_batch()
        assert events(session)[0].attempts == attempt
    failed = events(session)[0]
    assert failed.status == "failed"
    assert "RuntimeError: boom" in failed.last_error
    assert "sub_SECRET123" not in failed.last_error  # Stripe ids are scrubbed from errors
    assert len(exploding_handler) == inbox.MAX_ATTEMPTS


def test_database_unavailable_gives_503_and_the_retry_is_applied(hook, session, monkeypatch):
    from subscription_app import db

    user_id = seed_user(session)
    working = db.get_engine()
    body = event_body(
        "customer.subscription.updated", subscription_object(status="past_due"), created=T0 + 9
    )
    down = db.make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    monkeypatch.setattr(db, "get_engine", lambda: down)
    response = post(hook, body)
    assert response.status_code == 503
    monkeypatch.setattr(db, "get_engine", lambda: working)
    assert events(session) == []
    assert post(hook, body).status_code == 200  # Stripe's retry
    drain()
    assert status_of(session, user_id) == "past_due"


def test_processor_restart_picks_up_pending_and_abandoned_events(hook, session, monkeypatch):
    user_id = seed_user(session)
    post(
        hook,
        event_body(
            "customer.subscription.updated", subscription_object(status="unpaid"), created=T0 + 30
        ),
    )
    post(
        hook,
        event_body(
            "customer.subscription.updated", subscription_object(status="past_due"), created=T0 + 20
        ),
    )
    # A processor claims both, then "crashes" before finishing either.
    crashed = inbox.claim(session, limit=10)
    assert len(crashed) == 2
    assert processor.process_batch().claimed == 0  # leased: nobody else takes them yet
    # Time passes beyond the lease; the restarted processor takes over.
    session.execute(
        update(StripeEvent).values(locked_until=datetime.now(UTC) - timedelta(seconds=1))
    )
    session.commit()
    assert drain().claimed == 2
    assert status_of(session, user_id) == "unpaid"  # newest state wins, whatever the order
    assert {e.status for e in events(session)} == {"done"}
    # The crashed worker's late finish cannot apply anything any more.
    assert inbox.finish(session, crashed[0], EventStatus.DONE, None) is False


def test_two_processors_racing_apply_each_event_once(hook, session, monkeypatch):
    applied: dict[str, int] = {}
    lock = threading.Lock()

    def count(session, event):
        with lock:
            applied[event.event_id] = applied.get(event.event_id, 0) + 1
        return handlers.HandlerResult()

    monkeypatch.setitem(handlers._REGISTRY, "test.count", count)
    ids = [f"evt_race_{i}" for i in range(60)]
    for i, event_id in enumerate(ids):
        assert post(hook, event_body("test.count", {"n": i}, T0 + i, event_id)).status_code == 200

    def worker():
        while processor.process_batch(limit=5).claimed:
            pass

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert applied == dict.fromkeys(ids, 1)
    assert {e.status for e in events(session)} == {"done"}
