"""`billing/processor.py` and `billing/sync.py` at their seams: what applying an event costs.

Stripe is a stand-in that answers from a dict; the database is real (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, update
from sqlmodel import Session, select

from subscription_app import crypto, notifications
from subscription_app.billing import catalog, handlers, inbox, processor, repository, sync
from subscription_app.billing.webhooks import VerifiedEvent
from subscription_app.models import StripeEvent, Subscription

PRICE = "price_ours"
T0 = int(time.time()) - 3600


def _subscription(sub_id: str, cus_id: str, **fields) -> dict:
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": cus_id,
        "status": "active",
        "start_date": T0,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "items": {"data": [{"price": {"id": PRICE}, "current_period_end": T0 + 30 * 86400}]},
        **fields,
    }


class FakeStripe:
    """Answers `sync.fetch_subscription` (the processor's Stripe read) from `state`; records
    each read."""

    def __init__(self) -> None:
        self.state: dict[str, dict] = {}
        self.reads: list[str] = []

    def fetch(self, subscription_id: str, expand=None) -> sync.SubscriptionSnapshot:
        self.reads.append(subscription_id)
        return sync.read_subscription(dict(self.state[subscription_id]))

    def ever_paid(self, subscription_id: str) -> bool:
        """Stripe's paid invoices of a subscription first heard of once it ended: none here."""
        return False


@pytest.fixture
def stripe_state(monkeypatch) -> FakeStripe:
    fake = FakeStripe()
    monkeypatch.setattr(sync, "fetch_subscription", fake.fetch)
    monkeypatch.setattr(sync, "_ever_paid", fake.ever_paid)
    monkeypatch.setattr(catalog, "default_price_id", lambda: PRICE)
    return fake


@pytest.fixture
def subscriber(session, make_user, stripe_state) -> tuple[int, str]:
    """A user with a customer and an active subscription row; (user id, subscription id)."""
    user = make_user()
    sub_id, cus_id = "sub_Proc1", "cus_Proc1"
    repository.save_customer(session, user.id, cus_id)
    stripe_state.state[sub_id] = _subscription(sub_id, cus_id)
    snapshot = sync.read_subscription(stripe_state.state[sub_id])
    repository.apply_snapshot(session, user_id=user.id, snapshot=snapshot, our_plan=True)
    session.commit()
    return user.id, sub_id


def store_event(session: Session, event_type: str, obj: dict) -> str:
    event_id = f"evt_{uuid.uuid4().hex}"
    body = {"id": event_id, "object": "event", "type": event_type, "created": T0}
    body.update(livemode=False, data={"object": obj})
    verified = VerifiedEvent(
        id=event_id,
        type=event_type,
        created=datetime.fromtimestamp(T0, tz=UTC),
        livemode=False,
        raw=json.dumps(body),
    )
    assert inbox.store(session, verified)
    session.commit()
    return event_id


def row_of(session: Session, subscription_id: str) -> Subscription:
    session.rollback()  # what others committed
    return session.exec(
        select(Subscription).where(
            Subscription.stripe_subscription_id_hash == crypto.blind_index(subscription_id)
        )
    ).one()


def statuses(session: Session) -> dict[str, str]:
    session.rollback()
    return {e.event_id: e.status for e in session.exec(select(StripeEvent)).all()}


@pytest.fixture
def sql_log(db_engine):
    """Every statement the app sends (lower case), and "commit" for every commit, in order."""
    log: list[str] = []

    def on_statement(conn, cursor, statement, parameters, context, executemany):
        log.append(" ".join(statement.lower().split()))

    def on_commit(conn):
        log.append("commit")

    event.listen(db_engine, "before_cursor_execute", on_statement)
    event.listen(db_engine, "commit", on_commit)
    yield log
    event.remove(db_engine, "before_cursor_execute", on_statement)
    event.remove(db_engine, "commit", on_commit)


def test_applying_a_subscription_event_reads_our_row_once(
    session, subscriber, stripe_state, sql_log
):
    user_id, sub_id = subscriber
    stripe_state.state[sub_id]["cancel_at_period_end"] = True
    store_event(session, "customer.subscription.updated", {"id": sub_id})
    sql_log.clear()

    result = processor.process_batch()

    assert (result.done, result.changed_users) == (1, {user_id})
    row_reads = [s for s in sql_log if s.startswith("select") and "from subscription " in s]
    # Its owner, whether it is our plan and what the write compares with: one read.
    assert len(row_reads) == 1, row_reads
    assert row_of(session, sub_id).cancel_at_period_end is True


def test_an_event_for_a_subscription_we_never_recorded_links_through_its_customer(
    session, subscriber, stripe_state
):
    user_id, _ = subscriber
    stripe_state.state["sub_Proc2"] = _subscription("sub_Proc2", "cus_Proc1", status="canceled")
    store_event(session, "customer.subscription.created", {"id": "sub_Proc2"})

    assert processor.process_batch().done == 1
    row = row_of(session, "sub_Proc2")
    assert (row.user_id, row.status, row.our_plan) == (user_id, "canceled", True)


def test_the_write_and_the_events_finish_commit_together(
    session, subscriber, stripe_state, sql_log
):
    _, sub_id = subscriber
    stripe_state.state[sub_id]["cancel_at_period_end"] = True
    event_id = store_event(session, "customer.subscription.updated", {"id": sub_id})
    sql_log.clear()

    assert processor.process_batch().done == 1

    write = next(i for i, s in enumerate(sql_log) if s.startswith("update subscription "))
    finish = next(
        i for i, s in enumerate(sql_log) if i > write and s.startswith("update stripe_event ")
    )
    assert "commit" not in sql_log[write:finish], sql_log[write:finish]
    assert statuses(session) == {event_id: "done"}


def test_a_failure_while_finishing_leaves_no_write_and_the_event_to_retry(
    session, subscriber, stripe_state, monkeypatch
):
    _, sub_id = subscriber
    stripe_state.state[sub_id]["cancel_at_period_end"] = True
    event_id = store_event(session, "customer.subscription.updated", {"id": sub_id})

    def crash(*args, **kwargs):
        raise RuntimeError("connection lost while finishing")

    with monkeypatch.context() as patched:
        patched.setattr(inbox, "finish", crash)
        assert processor.process_batch().retried == 1
    if session.get_bind().dialect.name == "postgresql":
        assert row_of(session, sub_id).cancel_at_period_end is False  # nothing half-done
    # (On SQLite the driver commits the row's write when its savepoint is released, as it
    # always has: the retry below re-reads Stripe and finds it done.)
    assert statuses(session) == {event_id: "pending"}

    session.execute(update(StripeEvent).values(next_attempt_at=datetime.now(UTC)))
    session.commit()
    assert processor.process_batch().done == 1
    assert row_of(session, sub_id).cancel_at_period_end is True


def test_a_lost_lease_rolls_back_the_handlers_writes_and_the_next_event_reads_again(
    session, subscriber, stripe_state, monkeypatch
):
    user_id, sub_id = subscriber
    stripe_state.state[sub_id]["status"] = "past_due"
    invoice = {"id": "in_Proc1", "object": "invoice", "subscription": sub_id}
    first = store_event(session, "invoice.payment_failed", invoice)
    second = store_event(session, "customer.subscription.updated", {"id": sub_id})
    real_claim = inbox.claim

    def claim_then_lose_the_first(claiming_session, **kwargs):
        claimed = real_claim(claiming_session, **kwargs)
        # Another worker took the first event over (our lease on it ran out meanwhile).
        with Session(claiming_session.get_bind()) as other:
            other.execute(
                update(StripeEvent)
                .where(StripeEvent.event_id == first)
                .values(locked_by="another-worker")
            )
            other.commit()
        return claimed

    monkeypatch.setattr(inbox, "claim", claim_then_lose_the_first)
    result = processor.process_batch()

    assert (result.claimed, result.done) == (2, 1)
    assert statuses(session) == {first: "pending", second: "done"}
    # The first event's message is the other worker's to write; none of its writes stand.
    assert notifications.recent_messages(session, user_id=user_id) == []
    # Its rolled-back read is not shared: the second event read Stripe again and applied it.
    assert stripe_state.reads == [sub_id, sub_id]
    assert row_of(session, sub_id).status == "past_due"


def test_a_burst_about_one_subscription_in_a_batch_is_one_read_and_one_write(
    session, subscriber, stripe_state, sql_log
):
    _, sub_id = subscriber
    stripe_state.state[sub_id]["cancel_at_period_end"] = True
    for _ in range(3):
        store_event(session, "customer.subscription.updated", {"id": sub_id})
    sql_log.clear()

    assert processor.process_batch().done == 3
    assert stripe_state.reads == [sub_id]
    assert len([s for s in sql_log if s.startswith("update subscription ")]) == 1
    assert row_of(session, sub_id).cancel_at_period_end is True


def test_a_handler_that_syncs_two_subscriptions_commits_each_before_the_next_lock(
    session, subscriber, stripe_state, monkeypatch, sql_log
):
    # No subscription lock is taken while another is held: the first write commits (and its
    # lock is released) before the second subscription is read.
    user_id, sub_id = subscriber
    stripe_state.state["sub_Proc3"] = _subscription("sub_Proc3", "cus_Proc1", status="canceled")
    held: list[str] = []
    real_lock = sync.subscription_lock

    def tracked(subscription_id, session, **kwargs):
        assert held == [], f"{subscription_id} locked while {held} held"
        held.append(subscription_id)
        try:
            with real_lock(subscription_id, session, **kwargs):
                yield
        finally:
            held.remove(subscription_id)

    monkeypatch.setattr(sync, "subscription_lock", contextlib.contextmanager(tracked))

    def both(s, e):
        for sid in (sub_id, "sub_Proc3"):
            sync.sync_subscription(session=s, subscription_id=sid)
        return handlers.HandlerResult(changed_users={user_id})

    monkeypatch.setitem(handlers._REGISTRY, "test.both", both)
    event_id = store_event(session, "test.both", {"id": "x"})

    assert processor.process_batch().done == 1
    assert statuses(session) == {event_id: "done"}
    assert row_of(session, "sub_Proc3").status == "canceled"


def test_a_burst_larger_than_the_old_batch_shares_each_subscriptions_read(
    session, subscriber, stripe_state
):
    # 120 events round-robin over two subscriptions: one claim, one Stripe read each.
    _, sub_id = subscriber
    stripe_state.state["sub_Proc4"] = _subscription("sub_Proc4", "cus_Proc1", status="canceled")
    for n in range(120):
        store_event(session, "customer.subscription.updated", {"id": (sub_id, "sub_Proc4")[n % 2]})

    result = processor.process_batch()

    assert (result.claimed, result.done) == (120, 120)
    assert sorted(stripe_state.reads) == sorted([sub_id, "sub_Proc4"])


@pytest.mark.parametrize(
    "process",
    [processor.process_batch, lambda: asyncio.run(processor._process_pass())],
    ids=["process_batch", "run_processor"],
)
def test_the_lease_of_a_long_batch_is_renewed_so_nobody_takes_its_rest(
    session, db_engine, clock, monkeypatch, process
):
    # Each event takes 40 s (of a clock the test moves); the lease is 60 s. Without renewal
    # another worker would take the third event over while the first worker is still on it.
    monkeypatch.setattr(inbox, "utcnow", clock)
    taken_over: list[list[inbox.ClaimedEvent]] = []

    def slow(s, e):
        if e.payload["data"]["object"]["n"] == 2:
            with Session(db_engine) as other:
                taken_over.append(inbox.claim(other))
        clock.advance(40)
        return handlers.HandlerResult()

    monkeypatch.setitem(handlers._REGISTRY, "test.slow", slow)
    ids = [store_event(session, "test.slow", {"n": n}) for n in range(3)]

    result = process()

    assert taken_over == [[]]
    assert (result.claimed, result.done) == (3, 3)
    assert statuses(session) == dict.fromkeys(ids, "done")


@pytest.mark.parametrize(
    "process",
    [processor.process_batch, lambda: asyncio.run(processor._process_pass())],
    ids=["process_batch", "run_processor"],
)
def test_a_batch_whose_lease_ran_out_leaves_what_was_taken_over_to_the_taker(
    session, db_engine, clock, monkeypatch, process
):
    """One event took longer than the lease (lock waits, a slow Stripe), and another worker
    took the batch over meanwhile: the first worker does not go on applying those events
    too (its writes would be rolled back, but its Stripe calls would be made twice)."""
    monkeypatch.setattr(inbox, "utcnow", clock)
    applied: list[int] = []
    taken_over: list[list[inbox.ClaimedEvent]] = []

    def slow_first(s, e):
        n = e.payload["data"]["object"]["n"]
        applied.append(n)
        if n == 0:
            clock.advance(70)  # past the 60 s lease
            with Session(db_engine) as other:
                taken_over.append(inbox.claim(other))
        return handlers.HandlerResult()

    monkeypatch.setitem(handlers._REGISTRY, "test.slow", slow_first)
    for n in range(3):
        store_event(session, "test.slow", {"n": n})

    result = process()

    assert len(taken_over[0]) == 3  # every unfinished event, the one under way included
    assert applied == [0]
    assert (result.claimed, result.done) == (3, 0)
    assert set(statuses(session).values()) == {"pending"}  # the taker's to apply


def test_a_claim_takes_its_batch_with_one_update(session, sql_log, clock, monkeypatch):
    monkeypatch.setattr(inbox, "utcnow", clock)
    for n in range(5):
        store_event(session, "test.any", {"n": n})
    clock.advance(1)
    sql_log.clear()

    assert len(processor.claim_batch()) == 5
    assert len([s for s in sql_log if s.startswith("update stripe_event ")]) == 1


def test_an_event_stored_while_a_pass_runs_is_not_slept_through(monkeypatch):
    # The pass's claim found nothing, but an event was stored (and the processor woken)
    # right after it looked: the next pass starts at once, not after the idle poll.
    monkeypatch.setattr(processor, "IDLE_POLL_SECONDS", 60.0)
    asyncio.run(_woken_during_a_pass(monkeypatch))


async def _woken_during_a_pass(monkeypatch) -> None:
    wakeup = asyncio.Event()
    monkeypatch.setattr(processor.changes, "processor_wakeup", lambda: wakeup)
    passes: list[int] = []
    second_pass = asyncio.Event()
    stop = asyncio.Event()

    async def one_pass(**_) -> processor.BatchResult:
        passes.append(len(passes))
        if len(passes) == 1:
            wakeup.set()  # the intake stored an event after this pass's claim looked
        else:
            stop.set()
            second_pass.set()
        return processor.BatchResult()

    monkeypatch.setattr(processor, "_process_pass", one_pass)
    running = asyncio.create_task(processor.run_processor(stop))
    try:
        await asyncio.wait_for(second_pass.wait(), 5)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert passes == [0, 1]


def test_after_a_partial_batch_the_processor_waits_to_be_woken_and_a_full_one_goes_on(
    monkeypatch,
):
    # A claim that took fewer events than a batch took all that were due: claiming again at
    # once would only find nothing (at a steady trickle, one empty claim per event).
    monkeypatch.setattr(processor, "IDLE_POLL_SECONDS", 60.0)
    asyncio.run(_partial_then_full(monkeypatch))


async def _partial_then_full(monkeypatch) -> None:
    wakeup = asyncio.Event()
    monkeypatch.setattr(processor.changes, "processor_wakeup", lambda: wakeup)
    claims = [1, processor.BATCH_SIZE, 0]
    passes: list[int] = []
    stop = asyncio.Event()

    async def one_pass(**_) -> processor.BatchResult:
        await asyncio.sleep(0)
        passes.append(claims[len(passes)] if len(passes) < len(claims) else 0)
        if len(passes) == len(claims):
            stop.set()
            wakeup.set()  # as a stopping processor process does: end the idle wait
        return processor.BatchResult(claimed=passes[-1])

    monkeypatch.setattr(processor, "_process_pass", one_pass)
    running = asyncio.create_task(processor.run_processor(stop))
    try:
        for _ in range(50):  # let the loop run: it must stay in its wait
            await asyncio.sleep(0)
        assert passes == [1]
        wakeup.set()  # an event was stored
        await asyncio.wait_for(running, 5)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    # Woken, it claimed a full batch, and went straight on to the next claim.
    assert passes == [1, processor.BATCH_SIZE, 0]


def test_a_processor_told_to_stop_hands_back_the_events_it_has_not_started(
    session, subscriber, stripe_state, monkeypatch
):
    # A stopping worker waits 15 s for its processor; a batch with real Stripe can take
    # minutes. What the processor has not started must not wait out its lease (60 s).
    _, sub_id = subscriber
    for _ in range(3):
        store_event(session, "customer.subscription.updated", stripe_state.state[sub_id])
    stop = threading.Event()
    real = processor.process_one

    def one_then_stop(event, result):
        real(event, result)
        stop.set()

    monkeypatch.setattr(processor, "process_one", one_then_stop)
    result = processor.process_batch(stop=stop)
    assert (result.claimed, result.done) == (3, 1)
    assert len(processor.claim_batch()) == 2  # due again at once, for any worker


def test_the_processor_process_passes_its_stop_to_the_batch(
    session, subscriber, stripe_state, monkeypatch
):
    # `run_processor` with a stop (the processor's own process): setting it in the middle of
    # a batch ends the batch after the event under way, and the rest is handed back.
    _, sub_id = subscriber
    for _ in range(3):
        store_event(session, "customer.subscription.updated", stripe_state.state[sub_id])

    async def main() -> None:
        monkeypatch.setattr(processor.changes, "processor_wakeup", asyncio.Event)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        real = processor.process_one

        async def stop_now() -> None:
            stop.set()
            # The loop runs the tasks `stop` woke (the one telling the batch's thread)
            # before it comes back here.
            await asyncio.sleep(0)

        def one_then_stop(event, result):
            real(event, result)
            asyncio.run_coroutine_threadsafe(stop_now(), loop).result(timeout=5)

        monkeypatch.setattr(processor, "process_one", one_then_stop)
        await asyncio.wait_for(processor.run_processor(stop, yield_to_intake=False), 10)

    asyncio.run(main())
    session.rollback()
    pending = session.exec(select(StripeEvent).where(StripeEvent.status == "pending")).all()
    assert len(pending) == 2 and all(row.locked_by is None for row in pending)


def test_a_batch_lets_its_pause_step_aside_before_each_event(
    session, subscriber, stripe_state, monkeypatch
):
    _, sub_id = subscriber
    for _ in range(3):
        store_event(session, "customer.subscription.updated", stripe_state.state[sub_id])
    steps: list[str] = []
    real = processor.process_one

    def applying(event, result):
        steps.append("apply")
        real(event, result)

    monkeypatch.setattr(processor, "process_one", applying)
    stop = threading.Event()
    told: list[threading.Event | None] = []

    def pause(given: threading.Event | None) -> None:
        told.append(given)
        steps.append("pause")

    result = processor.process_batch(stop=stop, pause=pause)

    assert result.done == 3
    assert steps == ["pause", "apply"] * 3
    assert told == [stop] * 3  # so a stopping processor's pause ends at once
