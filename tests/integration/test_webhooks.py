"""Webhooks: verification, durable storage, asynchronous processing (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy.exc
import stripe
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session, func, select

from devtools.stripe_emulator import renew_subscription
from subscription_app import accounts, crypto, locks, notifications
from subscription_app.api import create_api
from subscription_app.api.webhooks import dispatch_webhooks_first
from subscription_app.billing import catalog, handlers, inbox, processor, repository, service, sync
from subscription_app.billing.reader import APP_METADATA
from subscription_app.billing.webhooks import sign
from subscription_app.models import EventStatus, StripeEvent, Subscription, User
from tests.conftest import free_port, stripe_fixture
from tests.integration.conftest import T0, event_body, make_monthly_price, subscription_object

SECRET = "whsec_test_secret_for_integration"


@pytest.fixture
def hook(db_engine, settings_env):
    """The webhook route as the app serves it: the fast path in front of the API app."""
    settings_env(STRIPE_WEBHOOK_SECRET=SECRET)
    served = dispatch_webhooks_first(create_api())
    with TestClient(served, raise_server_exceptions=False) as client:
        yield client


def post(client, body: str, header: str | None = "sign"):
    headers = {"Content-Type": "application/json"}
    if header == "sign":
        headers["Stripe-Signature"] = sign(body, SECRET)
    elif header is not None:
        headers["Stripe-Signature"] = header
    return client.post("/api/v1/webhooks/stripe", content=body.encode(), headers=headers)


def events(session: Session) -> list[StripeEvent]:
    session.rollback()  # a fresh snapshot of what others committed
    return list(session.exec(select(StripeEvent).order_by(StripeEvent.id)).all())


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
    "case",
    [
        "missing",
        "malformed",
        "wrong_secret",
        "tampered",
        "expired",
        "future_garbage",
        "not_ascii",
    ],
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
        # The SDK's comparison raises TypeError on non-ASCII text: still a bad signature.
        "not_ascii": f"t={int(time.time())},v1=\u00e9".encode("latin-1"),
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


@pytest.mark.parametrize("created", ["1e400", "99999999999999999999", "-99999999999999"])
def test_signed_event_with_an_impossible_date_is_refused(hook, session, created):
    body = event_body("customer.subscription.updated", subscription_object())
    body = json.dumps({**json.loads(body), "created": 0}).replace(
        '"created": 0', f'"created": {created}'
    )
    response = post(hook, body)
    assert response.status_code == 400
    assert response.json() == {"detail": "Body is not a Stripe event."}
    assert events(session) == []


# Processing ---------------------------------------------------------------------------------
# Handlers re-read the subscription from Stripe (the emulator here), so these tests change
# the subscription in Stripe and then deliver an event about it, built on Stripe's own
# published example event and subscription (shared/stripe/fixtures3.json).


@pytest.fixture
def stripe_hook(stripe_env, hook):
    return hook


def stripe_event_body(event_type: str, obj: dict, created: int | None = None) -> str:
    envelope = stripe_fixture("event")
    envelope.update(
        id=f"evt_{uuid.uuid4().hex}",
        type=event_type,
        created=int(time.time()) if created is None else created,
        data={"object": obj},
    )
    return json.dumps(envelope, default=str)  # the SDK's objects carry Decimals


def stripe_subscription_shape(sub_id: str, cus_id: str, **fields) -> dict:
    """Stripe's example subscription with our ids and the given fields."""
    obj = stripe_fixture("subscription")
    obj.update(id=sub_id, customer=cus_id, **fields)
    return obj


def subscribe_for_real(session: Session, stripe_client, email="a@example.com") -> tuple[int, str]:
    """A user with an active subscription made through the service; (user id, sub id)."""
    user = accounts.register_user(session=session, email=email, password="s3cret-pass")
    session.commit()
    pm = stripe_client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_visa"}}
    )
    result = service.start_subscription(session=session, user=user, payment_method_id=pm.id)
    assert result.status == "active"
    return user.id, getattr(repository.live_subscription(session, user.id), "id", None)


def view_of(session: Session, user_id: int):
    session.rollback()  # a fresh snapshot of what others committed
    return repository.current_subscription(session, user_id)


def test_duplicate_delivery_is_acknowledged_and_applied_once(stripe_hook, session, stripe_client):
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    current = stripe_client.v1.subscriptions.retrieve(sub_id).to_dict()
    body = stripe_event_body("customer.subscription.updated", current)
    assert post(stripe_hook, body).json()["duplicate"] is False
    assert post(stripe_hook, body).json() == {"received": True, "duplicate": True}
    assert drain().done == 1
    assert post(stripe_hook, body).json()["duplicate"] is True  # still one after processing
    assert drain().claimed == 0
    [row] = events(session)
    assert row.status == "done" and row.attempts == 1
    assert view_of(session, user_id).cancel_at_period_end is True


def test_change_in_stripe_in_the_same_second_as_our_own_write_is_applied(
    stripe_hook, session, stripe_client
):
    # We cancel at period end; within the same second it is undone in Stripe (the portal,
    # another worker). The undo's event must win: Stripe will renew and charge.
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    user = session.get(User, user_id)
    service.cancel_subscription(session=session, user=user, at_period_end=True)
    assert view_of(session, user_id).cancel_at_period_end is True
    undone = stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": False})
    second = int(time.time())
    post(stripe_hook, stripe_event_body("customer.subscription.updated", undone.to_dict(), second))
    assert drain().done == 1
    assert view_of(session, user_id).cancel_at_period_end is False


def test_past_due_right_after_subscribing_is_applied(
    stripe_hook, session, stripe_client, stripe_env
):
    user_id, sub_id, _ = _failed_renewal(session, stripe_client, stripe_env, "a@example.com")
    renewed = stripe_client.v1.subscriptions.retrieve(sub_id).to_dict()
    post(stripe_hook, stripe_event_body("customer.subscription.updated", renewed))
    drain()
    assert view_of(session, user_id).status == "past_due"


def test_older_event_after_a_newer_one_changes_nothing(stripe_hook, session, stripe_client):
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    customer_id = repository.customer_id_for_user(session, user_id)
    ending = stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    # The newer event arrives first, then a late copy of an older state ("active", renewing).
    post(stripe_hook, stripe_event_body("customer.subscription.updated", ending.to_dict()))
    drain()
    stale = stripe_subscription_shape(sub_id, customer_id, status="active")
    stale["cancel_at_period_end"] = False
    post(stripe_hook, stripe_event_body("customer.subscription.updated", stale, 1))
    assert drain().done == 1
    view = view_of(session, user_id)
    assert view.status == "active" and view.cancel_at_period_end is True


def _pays_by_card(stripe_client, customer_id: str) -> None:
    """Give a Stripe customer a 4242 card as its invoices' default, so a subscription made
    for it outside our pages (the Stripe dashboard, say) is paid at once."""
    card = stripe_client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_visa"}}
    )
    stripe_client.v1.payment_methods.attach(card.id, params={"customer": customer_id})
    stripe_client.v1.customers.update(
        customer_id, params={"invoice_settings": {"default_payment_method": card.id}}
    )


def _subscribed_outside_our_pages(session: Session, stripe_client, email: str):
    """A registered person with a Stripe customer, subscribed in Stripe directly (the
    dashboard, another app): (user, customer id, the subscription)."""
    user = accounts.register_user(session=session, email=email, password="s3cret-pass")
    customer_id = service.ensure_customer(session=session, user=user)
    session.commit()
    _pays_by_card(stripe_client, customer_id)
    made = stripe_client.v1.subscriptions.create(
        params={"customer": customer_id, "items": [{"price": catalog.resolve_price_id()}]}
    )
    return user, customer_id, made


def test_event_for_an_unknown_subscription_links_through_the_customer(
    stripe_hook, session, stripe_client
):
    user, customer_id, made_elsewhere = _subscribed_outside_our_pages(
        session, stripe_client, "a@example.com"
    )
    shape = stripe_subscription_shape(made_elsewhere.id, customer_id)
    post(stripe_hook, stripe_event_body("customer.subscription.created", shape))
    assert drain().done == 1
    assert view_of(session, user.id).status == "active"
    # A customer nobody here owns: recorded and skipped, nothing created.
    stranger = stripe_client.v1.customers.create(params={"email": "x@example.com"})
    _pays_by_card(stripe_client, stranger.id)
    theirs = stripe_client.v1.subscriptions.create(
        params={"customer": stranger.id, "items": [{"price": catalog.resolve_price_id()}]}
    )
    shape = stripe_subscription_shape(theirs.id, stranger.id)
    post(stripe_hook, stripe_event_body("customer.subscription.created", shape))
    assert drain().skipped == 1
    session.rollback()
    assert session.exec(select(func.count()).select_from(Subscription)).one() == 1


def test_a_subscription_first_heard_of_once_it_ended_is_still_shown_if_it_went_live(
    stripe_hook, session, stripe_client
):
    """Made and paid outside our pages, then cancelled, before any of its events was applied
    (a backlog, a restore): the person's past subscription is theirs to see, and "Manage
    billing" theirs to use. One undone before its first payment is not."""
    user, _, made = _subscribed_outside_our_pages(session, stripe_client, "ended@example.com")
    assert made.status == "active"
    ended = stripe_client.v1.subscriptions.cancel(made.id)
    post(stripe_hook, stripe_event_body("customer.subscription.deleted", ended.to_dict()))
    assert drain().done == 1
    session.rollback()
    assert view_of(session, user.id).status == "canceled"
    assert repository.ever_subscribed(session, user.id)

    # Another person's, never paid: waiting for 3-D Secure, then undone.
    other = accounts.register_user(session=session, email="undone@example.com", password="pw-12345")
    other_customer = service.ensure_customer(session=session, user=other)
    session.commit()
    check = stripe_client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_threeDSecure2Required"}}
    )
    stripe_client.v1.payment_methods.attach(check.id, params={"customer": other_customer})
    waiting = stripe_client.v1.subscriptions.create(
        params={
            "customer": other_customer,
            "items": [{"price": catalog.resolve_price_id()}],
            "default_payment_method": check.id,
            "payment_behavior": "default_incomplete",
        }
    )
    assert waiting.status == "incomplete"
    undone = stripe_client.v1.subscriptions.cancel(waiting.id)
    post(stripe_hook, stripe_event_body("customer.subscription.deleted", undone.to_dict()))
    assert drain().done == 1
    session.rollback()
    assert not repository.ever_subscribed(session, other.id)


def test_deleted_event_marks_the_subscription_canceled(stripe_hook, session, stripe_client):
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    gone = stripe_client.v1.subscriptions.cancel(sub_id)
    post(stripe_hook, stripe_event_body("customer.subscription.deleted", gone.to_dict()))
    drain()
    view = view_of(session, user_id)
    assert view.status == "canceled" and view.canceled_at is not None


def test_invoice_event_in_stripes_current_shape_refreshes_the_subscription(
    stripe_hook, session, stripe_client
):
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    customer_id = repository.customer_id_for_user(session, user_id)
    stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    invoice = stripe_fixture("invoice")
    invoice.update(id="in_test_1", customer=customer_id)
    invoice["parent"] = {
        "type": "subscription_details",
        "quote_details": None,
        "subscription_details": {"metadata": {}, "subscription": sub_id},
    }
    post(stripe_hook, stripe_event_body("invoice.paid", invoice))
    assert drain().done == 1
    assert view_of(session, user_id).cancel_at_period_end is True


def test_stripe_unreachable_while_processing_is_retried_then_applied(
    stripe_hook, session, stripe_client, monkeypatch
):
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    ending = stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    post(stripe_hook, stripe_event_body("customer.subscription.updated", ending.to_dict()))

    unreachable = stripe.StripeClient(
        "sk_test_unreachable",
        base_addresses={"api": f"http://127.0.0.1:{free_port()}"},
        max_network_retries=0,
    )
    with monkeypatch.context() as patched:
        patched.setattr(sync, "get_client", lambda: unreachable)
        first = processor.process_batch()
    assert first.retried == 1 and first.done == 0
    [row] = events(session)
    assert row.status == "pending" and "APIConnectionError" in row.last_error
    assert view_of(session, user_id).cancel_at_period_end is False  # nothing guessed

    make_due(session)
    assert processor.process_batch().done == 1
    assert view_of(session, user_id).cancel_at_period_end is True


def test_two_processors_racing_on_one_subscription_end_with_stripes_latest(
    stripe_hook, session, stripe_client, monkeypatch
):
    # Worker A reads Stripe (cancel_at_period_end=True) and is slow to write it. Meanwhile
    # the change is undone in Stripe and worker B handles that event. Without a lock per
    # subscription B writes first and A then overwrites it with its older read.
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    ending = stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    post(stripe_hook, stripe_event_body("customer.subscription.updated", ending.to_dict()))

    real_client = sync.get_client()
    real_fetch = sync.fetch_subscription
    worker_b: list[threading.Thread] = []

    def slow_first_read(subscription_id, **kwargs):
        answer = real_fetch(subscription_id, **kwargs)
        if not worker_b:
            undone = real_client.v1.subscriptions.update(
                sub_id, params={"cancel_at_period_end": False}
            )
            post(
                stripe_hook,
                stripe_event_body("customer.subscription.updated", undone.to_dict()),
            )
            thread = threading.Thread(target=processor.process_batch, kwargs={"limit": 1})
            worker_b.append(thread)
            thread.start()
            # Give B the chance to overtake; with the lock it waits for A instead.
            thread.join(timeout=1.5)
        return answer

    monkeypatch.setattr(sync, "fetch_subscription", slow_first_read)
    processor.process_batch(limit=1)
    worker_b[0].join(timeout=60)
    assert not worker_b[0].is_alive()
    assert view_of(session, user_id).cancel_at_period_end is False
    assert {e.status for e in events(session)} == {"done"}


def make_due(session: Session) -> None:
    session.execute(
        update(StripeEvent).values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    session.commit()


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
    hook, session, exploding_handler, monkeypatch
):
    monkeypatch.setitem(handlers._REGISTRY, "test.ok", lambda s, e: handlers.HandlerResult())
    post(hook, event_body("test.explode", {"id": "x"}, created=T0))
    post(hook, event_body("test.ok", {"id": "y"}, created=T0 + 1))
    first = processor.process_batch()
    assert first.retried == 1 and first.done == 1  # moved on to the next event
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


@pytest.mark.parametrize(
    "outage",
    [
        stripe.APIConnectionError("Stripe could not be reached"),
        stripe.RateLimitError("Too many requests"),
        stripe.APIError("Stripe had a problem", http_status=500),
        stripe.InvalidRequestError("Service unavailable", param=None, http_status=503),
        locks.LockTimeout("the subscription's lock was held"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        sqlalchemy.exc.TimeoutError("QueuePool limit reached, connection timed out"),
        sqlalchemy.exc.InterfaceError(
            "SELECT 1", {}, Exception("connection already closed"), connection_invalidated=True
        ),
        stripe.AuthenticationError("Invalid API Key provided"),
    ],
    ids=lambda exc: type(exc).__name__ + str(getattr(exc, "http_status", "") or ""),
)
def test_an_outage_is_waited_out_for_days_not_given_up_after_five_tries(
    hook, session, monkeypatch, outage
):
    failures: list[BaseException] = [outage]  # what the handler raises next (the last stays)

    def unreachable(session, event):
        raise failures[0] if len(failures) == 1 else failures.pop(0)

    monkeypatch.setitem(handlers._REGISTRY, "test.outage", unreachable)
    post(hook, event_body("test.outage", {"id": "x"}, created=T0))

    def due_then_process(**values) -> StripeEvent:
        session.execute(
            update(StripeEvent).values(
                next_attempt_at=datetime.now(UTC) - timedelta(seconds=1), **values
            )
        )
        session.commit()
        processor.process_batch()
        return events(session)[0]

    for _ in range(inbox.MAX_ATTEMPTS + 2):
        row = due_then_process()
        assert (row.status, row.attempts) == ("pending", 0)  # an outage is not counted
    # Retried less often as the outage goes on: a tenth of the event's age, 5 minutes at most.
    hour_old = datetime.now(UTC) - timedelta(hours=1)
    row = due_then_process(received_at=hour_old)
    retry_in = row.next_attempt_at - datetime.now(UTC)
    assert timedelta(minutes=4) < retry_in <= timedelta(minutes=5)
    # After the outage, a fault of the event itself still gets its five tries.
    failures[:] = [RuntimeError("a bug"), RuntimeError("a bug")]
    row = due_then_process()
    assert (row.status, row.attempts) == ("pending", 1) and "a bug" in row.last_error
    # An outage lasting as long as Stripe retries a delivery (3 days): given up, error kept.
    failures[:] = [outage]
    failed = due_then_process(received_at=datetime.now(UTC) - timedelta(days=3, minutes=1))
    assert failed.status == "failed" and type(outage).__name__ in failed.last_error


def test_an_unreadable_payload_fails_alone_and_the_rest_of_its_batch_is_applied(
    hook, session, monkeypatch
):
    applied = []
    monkeypatch.setitem(
        handlers._REGISTRY,
        "test.ok",
        lambda s, e: applied.append(e.event_id) or handlers.HandlerResult(),
    )
    post(hook, event_body("test.ok", {"id": "x"}, created=T0, event_id="evt_sealed_elsewhere"))
    post(hook, event_body("test.ok", {"id": "y"}, created=T0 + 1, event_id="evt_readable"))
    # Sealed under a key this worker does not have (a rotation half rolled out, say).
    other_key = crypto.generate_key()
    session.execute(
        update(StripeEvent)
        .where(StripeEvent.event_id == "evt_sealed_elsewhere")
        .values(
            payload_enc=crypto.encrypt(
                "{}",
                purpose=crypto.Purpose.EVENT_PAYLOAD,
                keys=(base64.urlsafe_b64decode(other_key),),
            )
        )
    )
    session.commit()
    before = datetime.now(UTC)
    result = processor.process_batch()
    assert applied == ["evt_readable"] and result.done == 1
    sealed, readable = events(session)
    assert readable.status == "done"
    # Waited out like an outage (a worker that has the key may read it), not counted.
    assert (sealed.status, sealed.attempts, sealed.locked_by) == ("pending", 0, None)
    assert "could not be read" in sealed.last_error
    assert sealed.next_attempt_at >= before + inbox.OUTAGE_RETRY_MIN  # retried later


def test_a_tampered_payload_is_a_fault_of_the_event_and_counted(hook, session):
    post(hook, event_body("test.ok", {"id": "x"}, created=T0, event_id="evt_tampered"))
    [row] = events(session)
    version, kid, body = row.payload_enc.split(".", 2)
    # One character of the nonce changed (the last ones may only be padding bits).
    flipped = body[:5] + ("A" if body[5] != "A" else "B") + body[6:]
    session.execute(update(StripeEvent).values(payload_enc=f"{version}.{kid}.{flipped}"))
    session.commit()
    processor.process_batch()
    [row] = events(session)
    assert (row.status, row.attempts) == ("pending", 1)  # five tries, not three days
    assert "could not be read" in row.last_error


def test_database_unavailable_gives_503_and_the_retry_is_applied(
    stripe_hook, session, stripe_client, monkeypatch
):
    from subscription_app import db

    user_id, sub_id = subscribe_for_real(session, stripe_client)
    ending = stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    body = stripe_event_body("customer.subscription.updated", ending.to_dict())
    working = db.get_engine()
    down = db.make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    monkeypatch.setattr(db, "get_engine", lambda: down)
    response = post(stripe_hook, body)
    assert response.status_code == 503
    monkeypatch.setattr(db, "get_engine", lambda: working)
    assert events(session) == []
    assert post(stripe_hook, body).status_code == 200  # Stripe's retry
    drain()
    assert view_of(session, user_id).cancel_at_period_end is True


def test_processor_restart_picks_up_pending_and_abandoned_events(
    stripe_hook, session, stripe_client
):
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    ending = stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    post(stripe_hook, stripe_event_body("customer.subscription.updated", ending.to_dict()))
    gone = stripe_client.v1.subscriptions.cancel(sub_id)
    post(stripe_hook, stripe_event_body("customer.subscription.deleted", gone.to_dict()))
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
    assert view_of(session, user_id).status == "canceled"  # Stripe's state, whatever the order
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


def test_a_subscription_to_another_price_is_recorded_but_not_shown_as_our_plan(
    stripe_hook, session, stripe_client
):
    user_id, ours = subscribe_for_real(session, stripe_client)
    customer_id = repository.customer_id_for_user(session, user_id)
    # The same Stripe account sells something else too; this customer buys it as well.
    other_price = make_monthly_price(stripe_client, "Something else", 9900)
    theirs = stripe_client.v1.subscriptions.create(
        params={"customer": customer_id, "items": [{"price": other_price.id}]}
    )
    shape = stripe_subscription_shape(theirs.id, customer_id)
    post(stripe_hook, stripe_event_body("customer.subscription.created", shape))
    result = drain()
    assert result.done == 1 and result.failed == 0  # applied, not an error
    session.rollback()
    rows = {
        crypto.decrypt(r.stripe_subscription_id_enc, purpose=crypto.Purpose.STRIPE_ID): r
        for r in session.exec(select(Subscription)).all()
    }
    assert set(rows) == {ours, theirs.id}  # recorded
    assert rows[theirs.id].our_plan is False and rows[theirs.id].price_id == other_price.id
    # What the person sees is still our plan's subscription, and only that one.
    assert getattr(repository.live_subscription(session, user_id), "id", None) == ours
    assert [o.id for o in repository.open_subscriptions(session, user_id)] == [ours]
    # Ending ours leaves nothing of our plan to show, even though the other one is active.
    gone = stripe_client.v1.subscriptions.cancel(ours)
    post(stripe_hook, stripe_event_body("customer.subscription.deleted", gone.to_dict()))
    drain()
    session.rollback()
    assert view_of(session, user_id).status == "canceled"
    assert getattr(repository.live_subscription(session, user_id), "id", None) is None
    assert stripe_client.v1.subscriptions.retrieve(theirs.id).status == "active"  # untouched
    # Its failed payments are the other product's business: no message to the person here.
    told = len(notifications.recent_messages(session, user_id=user_id, limit=100))
    invoice = stripe_fixture("invoice")
    # An invoice Stripe would not find: the other product's payments cost no reads at all.
    invoice.update(id="in_other_1", customer=customer_id, status="open")
    invoice["parent"] = {
        "type": "subscription_details",
        "quote_details": None,
        "subscription_details": {"metadata": {}, "subscription": theirs.id},
    }
    post(stripe_hook, stripe_event_body("invoice.payment_failed", invoice))
    assert drain().skipped == 1
    session.rollback()
    assert len(notifications.recent_messages(session, user_id=user_id, limit=100)) == told


def test_a_subscriber_stays_ours_when_the_merchant_changes_the_price(
    stripe_hook, session, stripe_client, settings_env
):
    user_id, ours = subscribe_for_real(session, stripe_client)
    new_price = make_monthly_price(stripe_client, "Pro, new price", 1200)
    settings_env(STRIPE_PRICE_ID=new_price.id)
    catalog.forget_default_price()
    ending = stripe_client.v1.subscriptions.update(ours, params={"cancel_at_period_end": True})
    post(stripe_hook, stripe_event_body("customer.subscription.updated", ending.to_dict()))
    assert drain().done == 1
    view = view_of(session, user_id)
    assert view is not None and view.cancel_at_period_end is True  # still shown, still ours
    assert getattr(repository.live_subscription(session, user_id), "id", None) == ours


def test_a_subscription_our_pages_made_is_ours_at_any_price_from_its_first_event(
    stripe_hook, session, stripe_client, settings_env
):
    """Our form and our Checkout pages mark the subscriptions they make. One made at the
    plan's old price (a Checkout page opened before the merchant changed it), whose own
    webhook is the first we hear of it, is the person's subscription to our plan, not
    another product's: no moment where they seem unsubscribed and could buy a second."""
    user = accounts.register_user(
        session=session, email="marked@example.com", password="pw-1234567"
    )
    session.commit()
    customer_id = service.ensure_customer(session=session, user=user)
    card = stripe_client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_visa"}}
    )
    stripe_client.v1.payment_methods.attach(card.id, params={"customer": customer_id})
    old_price = catalog.default_price_id()
    made = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer_id,
            "items": [{"price": old_price}],
            "default_payment_method": card.id,
            "metadata": {**APP_METADATA, "user_id": str(user.id)},
        }
    )
    settings_env(STRIPE_PRICE_ID=make_monthly_price(stripe_client, "Pro, new", 1500).id)
    catalog.forget_default_price()
    post(stripe_hook, stripe_event_body("customer.subscription.created", made.to_dict()))
    assert drain().done == 1
    session.rollback()
    assert getattr(repository.live_subscription(session, user.id), "id", None) == made.id


# The processor's Stripe read (`sync.fetch_subscription`: raw JSON, no StripeObjects) -------


def test_the_raw_read_is_what_the_sdk_reads_and_names_one_subscription(session, stripe_client):
    _, sub_id = subscribe_for_real(session, stripe_client)
    sdk = sync.read_subscription(stripe_client.v1.subscriptions.retrieve(sub_id))
    assert sync.fetch_subscription(sub_id) == sdk
    # `expand` reaches Stripe: the first invoice's payment comes back with it.
    expand = service.SUBSCRIPTION_EXPAND
    expanded = sync.fetch_subscription(sub_id, expand=expand)
    assert expanded.payment is not None and expanded.payment.payment_intent_id
    assert expanded == sync.read_subscription(
        stripe_client.v1.subscriptions.retrieve(sub_id, params={"expand": expand})
    )
    # An id is one path segment: it cannot walk to another resource.
    with pytest.raises(stripe.InvalidRequestError):
        sync.fetch_subscription(f"../customers/{sdk.customer_id}")
    with pytest.raises(stripe.InvalidRequestError) as missing:
        sync.fetch_subscription("sub_does_not_exist")
    assert missing.value.code == "resource_missing"


# One re-read per subscription per batch ------------------------------------------------


@pytest.fixture
def stripe_reads(monkeypatch) -> list[str]:
    """The subscription ids the processor re-reads from Stripe, in order."""
    reads: list[str] = []
    real_fetch = sync.fetch_subscription

    def counting(subscription_id, **kwargs):
        reads.append(subscription_id)
        return real_fetch(subscription_id, **kwargs)

    monkeypatch.setattr(sync, "fetch_subscription", counting)
    return reads


def _stub_invoices_still_open(monkeypatch) -> None:
    """Stripe's answer for an invoice still owed, Smart Retries pending (open, with a
    `next_payment_attempt`), for invoices the emulator paid at once: stubbed at the SDK."""
    real_retrieve = stripe.InvoiceService.retrieve

    def still_open(self, invoice_id, *args, **kwargs):
        answer = real_retrieve(self, invoice_id, *args, **kwargs)
        answer["status"] = "open"
        answer["next_payment_attempt"] = int(time.time()) + 3 * 24 * 3600
        return answer

    monkeypatch.setattr(stripe.InvoiceService, "retrieve", still_open)


def test_a_burst_about_one_subscription_is_one_stripe_read_and_every_event_counts(
    stripe_hook, session, stripe_client, stripe_reads, monkeypatch
):
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    stripe_reads.clear()
    current = stripe_client.v1.subscriptions.update(
        sub_id, params={"cancel_at_period_end": True}
    ).to_dict()
    invoice = stripe_fixture("invoice")  # Stripe's current shape: the subscription is a parent
    invoice.update(id=current["latest_invoice"], customer=current["customer"])
    invoice["parent"] = {
        "type": "subscription_details",
        "quote_details": None,
        "subscription_details": {"metadata": {}, "subscription": sub_id},
    }
    # Still owed when applied (a bank debit; the emulator's card invoice is paid at once).
    _stub_invoices_still_open(monkeypatch)
    for event_type, obj in [
        ("customer.subscription.updated", current),
        ("customer.subscription.updated", current),
        ("invoice.payment_failed", invoice),
    ]:
        assert post(stripe_hook, stripe_event_body(event_type, obj)).status_code == 200

    result = drain()
    assert result.done == 3
    # Applied from one read, after all three were received; the failure is also judged by a
    # read of its own (`handlers._still_due`), made when it is applied.
    assert stripe_reads == [sub_id, sub_id]
    assert view_of(session, user_id).cancel_at_period_end is True
    assert {e.status for e in events(session)} == {"done"}
    # The payment_failed event's own effect is not lost to the shared read.
    assert notifications.recent_messages(session, user_id=user_id)[0] == (
        handlers.PAYMENT_FAILED_TEXT
    )


def _first_invoice_event(stripe_client, event_type: str, sub_id: str) -> str:
    """Stripe's own invoice shape for the subscription's first invoice, in `event_type`."""
    sub = stripe_client.v1.subscriptions.retrieve(sub_id)
    invoice = stripe_fixture("invoice")
    invoice.update(id=sub.latest_invoice, customer=sub.customer, status="open")
    invoice.update(billing_reason="subscription_create")  # what Stripe says of a first one
    invoice["parent"] = {
        "type": "subscription_details",
        "quote_details": None,
        "subscription_details": {"metadata": {}, "subscription": sub_id},
    }
    return stripe_event_body(event_type, invoice)


def _sign_up_waiting_for_3d_secure(session: Session, stripe_client, email: str):
    """A person whose subscribe attempt waits for the bank's 3-D Secure check:
    (user, the attempt's answer, the open subscription)."""
    user = accounts.register_user(session=session, email=email, password="pw-12345678")
    session.commit()
    card = stripe_client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_threeDSecure2Required"}}
    )
    started = service.start_subscription(session=session, user=user, payment_method_id=card.id)
    assert started.status == "requires_action" and started.client_secret
    [attempt] = repository.open_subscriptions(session, user.id)
    return user, started, attempt


@pytest.mark.parametrize(
    "event_type", ["invoice.payment_failed", "invoice.payment_action_required"]
)
def test_a_sign_ups_first_payment_is_not_told_of_as_a_renewals(
    stripe_hook, session, stripe_client, event_type
):
    """A sign-up's card declined, or asked for 3-D Secure, on our page: the person saw it
    there, and the attempt is undone, not retried. No "Stripe will retry" message or email
    for someone who never subscribed, whether the event comes while the attempt waits or
    after it was undone."""
    user, _, attempt = _sign_up_waiting_for_3d_secure(session, stripe_client, "sign-up@example.com")
    # The first invoice itself, as the emulator made it, is named a sign-up's too.
    first = stripe_client.v1.invoices.retrieve(
        stripe_client.v1.subscriptions.retrieve(attempt.id).latest_invoice
    )
    assert first.billing_reason == "subscription_create"

    post(stripe_hook, _first_invoice_event(stripe_client, event_type, attempt.id))
    assert drain().done == 1
    # The attempt is undone (the card-testing limit, say), and the event comes again, late.
    assert stripe_client.v1.subscriptions.cancel(attempt.id).status == "canceled"
    post(stripe_hook, _first_invoice_event(stripe_client, event_type, attempt.id))
    assert drain().done == 1
    session.rollback()
    assert notifications.recent_messages(session, user_id=user.id) == []


@pytest.mark.parametrize(
    "event_type", ["invoice.payment_failed", "invoice.payment_action_required"]
)
def test_a_first_payments_event_applied_after_3d_secure_finished_tells_nothing(
    stripe_hook, session, stripe_client, event_type
):
    """The event was sent while the bank's check waited, and is applied only after the
    person finished it on our page (a backlog, an outage): the subscription is live and its
    first invoice paid, so there is nothing to tell them."""
    user, started, attempt = _sign_up_waiting_for_3d_secure(
        session, stripe_client, "finished@example.com"
    )
    stripe_client.raw_request(
        "post",
        f"/v1/payment_intents/{started.client_secret.split('_secret_')[0]}/_authenticate",
        client_secret=started.client_secret,
        success="true",
    )
    assert stripe_client.v1.subscriptions.retrieve(attempt.id).status == "active"
    post(stripe_hook, _first_invoice_event(stripe_client, event_type, attempt.id))
    assert drain().done == 1
    session.rollback()
    assert view_of(session, user.id).status == "active"
    assert notifications.recent_messages(session, user_id=user.id) == []


def test_a_sign_ups_paid_invoice_costs_no_read_of_the_invoice(
    stripe_hook, session, stripe_client, monkeypatch
):
    """Only events that would tell the person (a failure, a bank's check) ask Stripe about
    the first invoice; `invoice.paid`, sent for every sign-up, does not."""
    _, sub_id = subscribe_for_real(session, stripe_client, email="paid-first@example.com")
    reads: list[str] = []
    real_retrieve = stripe.InvoiceService.retrieve

    def counted(self, invoice, *args, **kwargs):
        reads.append(invoice)
        return real_retrieve(self, invoice, *args, **kwargs)

    monkeypatch.setattr(stripe.InvoiceService, "retrieve", counted)
    post(stripe_hook, _first_invoice_event(stripe_client, "invoice.paid", sub_id))
    assert drain().done == 1
    assert reads == []


def test_a_first_payment_failing_after_the_subscription_went_live_is_told_of(
    stripe_hook, session, stripe_client, monkeypatch
):
    """A bank debit settles days after sign-up (Stripe makes the subscription active while
    it is processing): its failure reaches someone who left our page long ago, so it is told
    of like a renewal's, though the invoice is the subscription's first."""
    user_id, sub_id = subscribe_for_real(session, stripe_client, email="debit@example.com")
    # The emulator takes cards only, paid at once; Stripe's answer for the debit's invoice,
    # still open while the subscription is active, is stubbed at the SDK.
    _stub_invoices_still_open(monkeypatch)
    post(stripe_hook, _first_invoice_event(stripe_client, "invoice.payment_failed", sub_id))
    assert drain().done == 1
    session.rollback()
    assert notifications.recent_messages(session, user_id=user_id) == [handlers.PAYMENT_FAILED_TEXT]


def _failed_renewal(session: Session, stripe_client, stripe_env, email: str):
    """A subscriber whose renewal was just declined: (user id, subscription id, the renewal's
    invoice, still open, as Stripe's `invoice.payment_failed` event carries it)."""
    user_id, sub_id = subscribe_for_real(session, stripe_client, email=email)
    failing = stripe_client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_chargeCustomerFail"}}
    )
    customer_id = repository.customer_id_for_user(session, user_id)
    stripe_client.v1.payment_methods.attach(failing.id, params={"customer": customer_id})
    stripe_client.v1.subscriptions.update(sub_id, params={"default_payment_method": failing.id})
    renewed = renew_subscription(stripe_env["emulator"].url, sub_id)
    assert renewed["status"] == "past_due"
    invoice = stripe_client.v1.invoices.retrieve(renewed["latest_invoice"])
    assert (invoice.status, invoice.billing_reason) == ("open", "subscription_cycle")
    assert invoice.next_payment_attempt  # Stripe will retry it
    shape = stripe_fixture("invoice")  # Stripe's current shape: the subscription is a parent
    shape.update(id=invoice.id, customer=customer_id, status="open")
    shape.update(billing_reason="subscription_cycle")
    shape["parent"] = {
        "type": "subscription_details",
        "quote_details": None,
        "subscription_details": {"metadata": {}, "subscription": sub_id},
    }
    return user_id, sub_id, shape


def _pay_with_another_card(stripe_client, invoice: dict, sub_id: str) -> None:
    """The person pays the failed renewal with another card (as in the portal)."""
    good = stripe_client.v1.payment_methods.create(
        params={"type": "card", "card": {"token": "tok_visa"}}
    )
    stripe_client.v1.payment_methods.attach(good.id, params={"customer": invoice["customer"]})
    stripe_client.v1.customers.update(
        invoice["customer"], params={"invoice_settings": {"default_payment_method": good.id}}
    )
    assert stripe_client.v1.invoices.pay(invoice["id"]).status == "paid"
    assert stripe_client.v1.subscriptions.retrieve(sub_id).status == "active"


def test_a_renewals_failure_is_told_while_it_is_still_owed(
    stripe_hook, session, stripe_client, stripe_env
):
    user_id, _, invoice = _failed_renewal(session, stripe_client, stripe_env, "owed@example.com")
    post(stripe_hook, stripe_event_body("invoice.payment_failed", invoice))
    assert drain().done == 1
    session.rollback()
    shown = view_of(session, user_id)
    assert (shown.status, shown.payment_warning) == ("past_due", handlers.PAYMENT_FAILED_TEXT)
    assert notifications.recent_messages(session, user_id=user_id) == [handlers.PAYMENT_FAILED_TEXT]


def test_a_renewals_failure_applied_after_it_was_paid_tells_nothing(
    stripe_hook, session, stripe_client, stripe_env
):
    """The failure's delivery was held up (a 503, an outage: Stripe retries for days), and
    meanwhile the person paid with another card: "your last payment failed" would be false."""
    user_id, sub_id, invoice = _failed_renewal(
        session, stripe_client, stripe_env, "paid-since@example.com"
    )
    _pay_with_another_card(stripe_client, invoice, sub_id)
    post(stripe_hook, stripe_event_body("invoice.payment_failed", invoice))
    post(stripe_hook, stripe_event_body("invoice.payment_action_required", invoice))
    assert drain().done == 2
    session.rollback()
    assert view_of(session, user_id).status == "active"
    assert notifications.recent_messages(session, user_id=user_id) == []


def test_a_renewals_failure_applied_after_the_subscription_ended_tells_nothing(
    stripe_hook, session, stripe_client, stripe_env
):
    """Stripe ended the subscription after its last retry (or the person cancelled): the
    dashboard shows it ended; a "Stripe will retry" message would be false."""
    user_id, sub_id, invoice = _failed_renewal(
        session, stripe_client, stripe_env, "ended-since@example.com"
    )
    assert stripe_client.v1.subscriptions.cancel(sub_id).status == "canceled"
    post(stripe_hook, stripe_event_body("invoice.payment_failed", invoice))
    assert drain().done == 1
    session.rollback()
    assert view_of(session, user_id).status == "canceled"
    assert notifications.recent_messages(session, user_id=user_id) == []


def test_a_failure_stripe_will_not_retry_is_told_as_final(
    stripe_hook, session, stripe_client, stripe_env, monkeypatch
):
    """Stripe's last retry failed and the subscription stays past due (the merchant's
    setting), or the merchant collects by hand: the invoice has no `next_payment_attempt`."""
    user_id, sub_id, invoice = _failed_renewal(
        session, stripe_client, stripe_env, "last@example.com"
    )
    # The emulator schedules no retries of its own; Stripe's answer after the last one is
    # stubbed at the SDK.
    real_retrieve = stripe.InvoiceService.retrieve

    def no_more_retries(self, invoice_id, *args, **kwargs):
        answer = real_retrieve(self, invoice_id, *args, **kwargs)
        answer["next_payment_attempt"] = None
        return answer

    monkeypatch.setattr(stripe.InvoiceService, "retrieve", no_more_retries)
    post(stripe_hook, stripe_event_body("invoice.payment_failed", invoice))
    assert drain().done == 1
    session.rollback()
    assert notifications.recent_messages(session, user_id=user_id) == [
        handlers.PAYMENT_FAILED_FINAL_TEXT
    ]
    # The dashboard's warning says the same, not "Stripe will retry".
    shown = view_of(session, user_id)
    assert (shown.status, shown.payment_warning) == ("past_due", handlers.PAYMENT_FAILED_FINAL_TEXT)
    # The person pays with another card (the portal): the next event's re-read clears it.
    _pay_with_another_card(stripe_client, invoice, sub_id)
    post(stripe_hook, stripe_event_body("invoice.paid", {**invoice, "status": "paid"}))
    assert drain().done == 1
    session.rollback()
    shown = view_of(session, user_id)
    assert (shown.status, shown.payment_warning) == ("active", "")


@pytest.mark.parametrize(
    ("status", "next_attempt", "retrying"),
    [
        ("open", 1_900_000_000, True),  # Smart Retries will try it
        ("open", None, False),  # retries used up, or the merchant collects by hand
        ("void", None, False),
        ("uncollectible", None, False),
        ("paid", None, None),  # paid since: its own event brings the active state
        ("draft", None, None),
    ],
)
def test_whether_stripe_will_retry_a_past_due_payment_is_read_from_its_invoice(
    session, stripe_client, stripe_env, monkeypatch, status, next_attempt, retrying
):
    _, sub_id, _ = _failed_renewal(session, stripe_client, stripe_env, "judged@example.com")
    real_retrieve = stripe.InvoiceService.retrieve

    def as_stripe_says(self, invoice_id, *args, **kwargs):
        answer = real_retrieve(self, invoice_id, *args, **kwargs)
        answer["status"], answer["next_payment_attempt"] = status, next_attempt
        return answer

    monkeypatch.setattr(stripe.InvoiceService, "retrieve", as_stripe_says)
    snapshot = sync.fetch_subscription(sub_id)
    assert snapshot.status == "past_due"
    assert sync.payment_retrying(snapshot) is retrying


def test_cancelling_a_past_due_subscription_works_when_its_invoice_cannot_be_read(
    stripe_hook, session, stripe_client, stripe_env, monkeypatch
):
    """The cancel is done in Stripe: a failed read of whether Stripe will retry the payment
    (asked while applying Stripe's answer) must not report it as failed."""
    user_id, sub_id, invoice = _failed_renewal(
        session, stripe_client, stripe_env, "cancel-owed@example.com"
    )
    post(stripe_hook, stripe_event_body("invoice.payment_failed", invoice))
    assert drain().done == 1
    assert repository.subscription_row(session, sub_id).payment_retrying is True

    def unreachable(self, *args, **kwargs):
        raise stripe.APIConnectionError("Stripe could not be reached")

    monkeypatch.setattr(stripe.InvoiceService, "retrieve", unreachable)
    user = session.get(User, user_id)
    result = service.cancel_subscription(session=session, user=user, at_period_end=True)
    assert result.subscription is not None and result.subscription.cancel_at_period_end
    assert stripe_client.v1.subscriptions.retrieve(sub_id).cancel_at_period_end is True
    session.rollback()
    row = repository.subscription_row(session, sub_id)
    assert (row.cancel_at_period_end, row.payment_retrying) == (True, True)  # kept as it was


def test_an_event_received_after_a_batch_was_claimed_is_read_again(
    stripe_hook, session, stripe_client, stripe_reads
):
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    stripe_reads.clear()
    ending = stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    post(stripe_hook, stripe_event_body("customer.subscription.updated", ending.to_dict()))
    assert drain().done == 1
    resumed = stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": False})
    post(stripe_hook, stripe_event_body("customer.subscription.updated", resumed.to_dict()))
    assert drain().done == 1
    assert stripe_reads == [sub_id, sub_id]
    assert view_of(session, user_id).cancel_at_period_end is False
