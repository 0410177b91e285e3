"""The webhook intake path under load: group commit, nothing lost, each event applied once.

The served path (`dispatch_webhooks_first`) stores concurrent deliveries together
(`billing.intake`) with one `INSERT ... ON CONFLICT DO NOTHING`; these tests fire many at
once, repeats included, on SQLite and PostgreSQL, as one worker and as two.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, func, select

from subscription_app import db
from subscription_app.api import create_api
from subscription_app.api.webhooks import dispatch_webhooks_first
from subscription_app.billing import handlers, inbox, intake, processor
from subscription_app.billing.webhooks import sign, verify
from subscription_app.models import StripeEvent
from tests.integration.conftest import T0, event_body

SECRET = "whsec_test_secret_for_intake"
WEBHOOK = "/api/v1/webhooks/stripe"
BLOCKED_SECONDS = 0.3  # how long an answer is watched to show it is NOT sent yet


@pytest.fixture
def served(db_engine, settings_env):
    settings_env(STRIPE_WEBHOOK_SECRET=SECRET)
    return dispatch_webhooks_first(create_api())


@pytest.fixture
def applied(monkeypatch) -> dict[str, int]:
    """How many times each `test.count` event was applied."""
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def count(session, event):
        with lock:
            counts[event.event_id] = counts.get(event.event_id, 0) + 1
        return handlers.HandlerResult()

    monkeypatch.setitem(handlers._REGISTRY, "test.count", count)
    return counts


@pytest.fixture
def batches(monkeypatch) -> list[int]:
    """The size of every transaction the intake committed."""
    sizes: list[int] = []
    real = intake._commit

    async def counting(held, events):
        stored = await real(held, events)
        sizes.append(len(events))
        return stored

    monkeypatch.setattr(intake, "_commit", counting)
    return sizes


def _body(n: int) -> str:
    return event_body("test.count", {"n": n}, T0 + n, f"evt_intake_{n}")


async def _deliver(app, bodies: list[str]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        WEBHOOK,
                        content=body.encode(),
                        headers={"Stripe-Signature": sign(body, SECRET)},
                    )
                    for body in bodies
                )
            )
        )


def _stored(engine) -> dict[str, int]:
    with Session(engine) as session:
        rows = session.exec(
            select(StripeEvent.event_id, func.count()).group_by(col(StripeEvent.event_id))
        ).all()
    return dict(rows)


def _drain_with_two_processors() -> None:
    def worker() -> None:
        while processor.process_batch(limit=7).claimed:
            pass

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def test_a_burst_with_repeats_is_stored_once_each_in_few_transactions_and_applied_once(
    served, db_engine, applied, batches
):
    distinct = [_body(n) for n in range(150)]
    repeats = distinct[::3]  # Stripe delivers some twice, at the same moment
    responses = asyncio.run(_deliver(served, distinct + repeats))

    assert [r.status_code for r in responses] == [200] * len(responses)
    first = {}
    for body, response in zip(distinct + repeats, responses, strict=True):
        event_id = verify(body.encode(), sign(body, SECRET)).id
        first.setdefault(event_id, []).append(response.json()["duplicate"])
    # Each event is new to exactly one of its deliveries.
    assert all(flags.count(False) == 1 for flags in first.values())
    assert _stored(db_engine) == {f"evt_intake_{n}": 1 for n in range(150)}
    # Deliveries that arrived together shared a transaction (group commit).
    assert sum(batches) == len(distinct) + len(repeats)
    assert len(batches) < len(distinct) // 2

    _drain_with_two_processors()
    assert applied == {f"evt_intake_{n}": 1 for n in range(150)}


def test_two_workers_storing_the_same_events_at_once_store_each_once(served, db_engine):
    bodies = [_body(n) for n in range(80)]
    answers: list[list[httpx.Response]] = []
    start = threading.Barrier(2)

    def worker() -> None:
        # Its own event loop and writer, as in a second backend process.
        start.wait(timeout=30)
        answers.append(asyncio.run(_deliver(served, bodies)))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(answers) == 2
    for n in range(80):
        flags = [answers[0][n].json()["duplicate"], answers[1][n].json()["duplicate"]]
        assert sorted(flags) == [False, True]  # one worker stored it, the other saw a repeat
    assert _stored(db_engine) == {f"evt_intake_{n}": 1 for n in range(80)}


def test_an_event_is_answered_only_after_its_transaction_commits(served, db_engine, monkeypatch):
    release = threading.Event()
    real = intake._commit

    async def slow_commit(held, events):
        await asyncio.to_thread(release.wait, 30)
        return await real(held, events)

    monkeypatch.setattr(intake, "_commit", slow_commit)

    async def scenario() -> httpx.Response:
        delivery = asyncio.create_task(_deliver(served, [_body(1)]))
        done, _ = await asyncio.wait({delivery}, timeout=BLOCKED_SECONDS)
        assert not done  # not acknowledged while the commit is under way
        assert _stored(db_engine) == {}
        release.set()
        return (await delivery)[0]

    response = asyncio.run(scenario())
    assert response.status_code == 200
    assert _stored(db_engine) == {"evt_intake_1": 1}


def test_when_the_database_is_down_every_delivery_gets_503_and_stripes_retry_is_stored(
    served, db_engine, monkeypatch, applied
):
    bodies = [_body(n) for n in range(20)]
    down = db.make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    monkeypatch.setattr(db, "get_engine", lambda: down)
    responses = asyncio.run(_deliver(served, bodies))
    assert {r.status_code for r in responses} == {503}
    assert "Temporarily unable" in responses[0].json()["detail"]

    monkeypatch.setattr(db, "get_engine", lambda: db_engine)
    assert _stored(db_engine) == {}
    responses = asyncio.run(_deliver(served, bodies))  # Stripe retries each
    assert {r.status_code for r in responses} == {200}
    _drain_with_two_processors()
    assert applied == {f"evt_intake_{n}": 1 for n in range(20)}


def test_other_methods_on_the_webhook_path_reach_the_api_app(served):
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(WEBHOOK)

    response = asyncio.run(get())
    assert response.status_code in (404, 405)
    assert "detail" in response.json()


def test_the_processor_lets_the_intake_finish_storing_first_for_a_moment_at_most(
    served, db_engine, monkeypatch
):
    release = threading.Event()
    real = intake._commit

    async def scenario() -> None:
        storing = asyncio.Event()

        async def slow_commit(held, events):
            storing.set()
            await asyncio.to_thread(release.wait, 30)
            return await real(held, events)

        monkeypatch.setattr(intake, "_commit", slow_commit)
        await asyncio.wait_for(intake.quiet(30), 5)  # nothing stored yet: at once
        delivery = asyncio.create_task(_deliver(served, [_body(1)]))
        await asyncio.wait_for(storing.wait(), 30)

        # A bounded wait ends while the intake is still storing...
        await asyncio.wait_for(intake.quiet(0.05), 5)
        assert not delivery.done()
        # ...a longer one ends when it has stored.
        waiting = asyncio.create_task(intake.quiet(30))
        done, _ = await asyncio.wait({waiting}, timeout=BLOCKED_SECONDS)
        assert not done
        release.set()
        await asyncio.wait_for(waiting, 30)
        assert _stored(db_engine) == {"evt_intake_1": 1}
        assert (await delivery)[0].status_code == 200

    asyncio.run(scenario())


@pytest.fixture
def checkouts(db_engine) -> Iterator[list[int]]:
    """One entry per connection taken from the pool (the test's own reads included)."""
    taken: list[int] = []

    def record(*_args) -> None:
        taken.append(1)

    sqlalchemy_event.listen(db_engine, "checkout", record)
    yield taken
    sqlalchemy_event.remove(db_engine, "checkout", record)


def _driver(connection) -> object:
    """The driver's own connection under the writer's (SQLAlchemy's, or psycopg's)."""
    return getattr(getattr(connection, "connection", None), "dbapi_connection", connection)


def test_a_burst_is_stored_on_one_connection_kept_for_the_next_burst(
    served, db_engine, monkeypatch, checkouts
):
    release = threading.Event()
    sizes: list[int] = []
    used: list[object] = []  # the driver's connection of each statement
    threads: set[int] = set()  # where each statement ran
    real, real_store = intake._commit, inbox.store_many

    async def first_waits(held, events):
        sizes.append(len(events))
        if len(sizes) == 1:
            await asyncio.to_thread(release.wait, 30)
        stored = await real(held, events)
        used.append(_driver(held.connection))
        return stored

    def recording_store(connection, events):
        threads.add(threading.get_ident())
        return real_store(connection, events)

    monkeypatch.setattr(intake, "_commit", first_waits)
    monkeypatch.setattr(inbox, "store_many", recording_store)

    async def scenario() -> list[httpx.Response]:
        first = asyncio.create_task(_deliver(served, [_body(0)]))
        while not sizes:  # the first statement is under way...
            await asyncio.sleep(0.01)
        rest = asyncio.create_task(_deliver(served, [_body(n) for n in range(1, 120)]))
        writer = intake._writers[asyncio.get_running_loop()]
        while len(writer.waiting) < 119:  # ...while the rest of the burst gathers
            await asyncio.sleep(0.01)
        release.set()
        answers = [*await first, *await rest]
        await intake.quiet(30)  # the writer is done...
        kept.append(_driver(writer.held.connection))  # ...and keeps it for the next burst
        answers += await _deliver(served, [_body(120)])
        return answers

    kept: list[object] = []
    responses = asyncio.run(asyncio.wait_for(scenario(), 60))

    assert {r.status_code for r in responses} == {200}
    assert sizes == [1, 119, 1]  # three statements...
    assert len(used) == 3 and len(set(used)) == 1  # ...on the one connection the writer held
    assert kept == [used[0]]
    # Given back (or closed) when the event loop ended.
    assert db_engine.pool.checkedout() == 0
    if db_engine.dialect.name == "postgresql":
        assert checkouts == []  # its own (psycopg's asynchronous), not the pool's
    else:
        assert len(checkouts) == 1  # from the pool, once for both bursts
        # Each statement on the event loop's own thread (this one), none on another.
        assert threads == {threading.get_ident()}
    assert _stored(db_engine) == {f"evt_intake_{n}": 1 for n in range(121)}


def test_after_a_failed_statement_the_writer_drops_its_connection_and_takes_a_fresh_one(
    served, db_engine, monkeypatch
):
    used: list[object] = []  # the driver's connections the statements ran on
    writing: list[object] = []  # the writer's held connection, as each batch starts
    real_commit, real_statement = intake._commit, inbox.store_statement

    async def commit(held, events):
        writing[:] = [held]
        return await real_commit(held, events)

    def fail_first(dialect, events):
        used.append(_driver(writing[0].connection))  # opened by now, on either path
        if len(used) == 1:
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real_statement(dialect, events)

    monkeypatch.setattr(intake, "_commit", commit)
    monkeypatch.setattr(inbox, "store_statement", fail_first)

    async def two_deliveries() -> list[int]:
        # One event loop, so one writer: the second delivery meets the writer that failed.
        failed = await _deliver(served, [_body(1)])
        retried = await _deliver(served, [_body(1)])
        return [failed[0].status_code, retried[0].status_code]

    assert asyncio.run(two_deliveries()) == [503, 200]
    # The failed one was discarded, not given back to the pool for the next batch to trip on.
    assert used[1] is not used[0]
    assert _stored(db_engine) == {"evt_intake_1": 1}


@pytest.mark.backends("sqlite")
def test_on_sqlite_the_writer_skips_checkpoints_and_lock_waits_only_while_it_holds_the_connection(
    served, db_engine, monkeypatch
):
    monkeypatch.setattr(intake, "IDLE_SECONDS", 0.2)
    seen: list[tuple[object, int, int]] = []  # (driver's connection, checkpoint, busy) per batch
    real = intake._commit

    async def recording(held, events):
        stored = await real(held, events)
        pragma = held.connection.exec_driver_sql
        checkpoint = pragma("PRAGMA wal_autocheckpoint").scalar_one()
        busy = pragma("PRAGMA busy_timeout").scalar_one()
        seen.append((_driver(held.connection), checkpoint, busy))
        return stored

    monkeypatch.setattr(intake, "_commit", recording)

    async def burst() -> list[httpx.Response]:
        answers = await _deliver(served, [_body(n) for n in range(20)])
        await intake.quiet(30)
        writer = intake._writers[asyncio.get_running_loop()]
        deadline = asyncio.get_running_loop().time() + 30
        while writer.held.connection is not None:  # given back once unused for IDLE_SECONDS
            assert asyncio.get_running_loop().time() < deadline, "never given back"
            await asyncio.sleep(0.05)
        return answers

    responses = asyncio.run(asyncio.wait_for(burst(), 60))

    assert {r.status_code for r in responses} == {200}
    assert seen and {(checkpoint, busy) for _, checkpoint, busy in seen} == {(0, 0)}
    # Back in the pool, the connection checkpoints and waits for locks as configured.
    for dbapi_connection in {connection for connection, _, _ in seen}:
        [(checkpoint,)] = dbapi_connection.execute("PRAGMA wal_autocheckpoint").fetchall()
        [(busy,)] = dbapi_connection.execute("PRAGMA busy_timeout").fetchall()
        assert (checkpoint, busy) == (intake.SQLITE_CHECKPOINT, 30000)
    assert _stored(db_engine) == {f"evt_intake_{n}": 1 for n in range(20)}


def _hold_sqlite_write_lock(engine):
    """Another writer (as the processor would be) holding SQLite's write lock; ends on commit."""
    connection = engine.raw_connection()
    connection.driver_connection.isolation_level = None  # BEGIN by hand
    connection.driver_connection.execute("BEGIN IMMEDIATE")
    return connection


@pytest.mark.backends("sqlite")
def test_on_sqlite_a_locked_database_never_blocks_the_event_loop_and_the_event_is_stored(
    served, db_engine, monkeypatch
):
    ticks: list[float] = []
    statements: list[tuple[str, str]] = []  # (the thread it ran on, its outcome)
    real_store = inbox.store_many

    def recording_store(connection, events):
        where = threading.current_thread().name
        try:
            stored = real_store(connection, events)
        except Exception as exc:  # the driver's own error (sqlite3's)
            statements.append((where, str(exc)))
            raise
        statements.append((where, "stored"))
        return stored

    monkeypatch.setattr(inbox, "store_many", recording_store)

    async def scenario() -> httpx.Response:
        loop = asyncio.get_running_loop()

        async def ticker() -> None:
            while True:
                ticks.append(loop.time())
                await asyncio.sleep(0.01)

        blocker = await asyncio.to_thread(_hold_sqlite_write_lock, db_engine)
        ticking = asyncio.create_task(ticker())
        try:
            delivery = asyncio.create_task(_deliver(served, [_body(1)]))
            done, _ = await asyncio.wait({delivery}, timeout=BLOCKED_SECONDS)
            assert not done  # it waits for the lock (not a 503)
            await asyncio.to_thread(blocker.driver_connection.execute, "COMMIT")
            answer = (await asyncio.wait_for(delivery, 30))[0]
            ticks.append(loop.time())
            return answer
        finally:
            ticking.cancel()
            blocker.close()

    response = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert response.status_code == 200 and response.json()["duplicate"] is False
    assert _stored(db_engine) == {"evt_intake_1": 1}
    # Tried on the loop, which found the database locked at once; stored from the writer's
    # thread, which waited for the lock...
    assert [(where, outcome[:18]) for where, outcome in statements] == [
        (threading.current_thread().name, "database is locked"),
        (statements[1][0], "stored"),
    ]
    assert statements[1][0].startswith("intake-sqlite")
    # ...while the loop went on serving: no stall anywhere near the busy timeout (30 s).
    assert max(later - earlier for earlier, later in itertools.pairwise(ticks)) < 1


@pytest.mark.backends("sqlite")
def test_on_sqlite_the_writer_checkpoints_the_log_itself_every_so_many_batches_off_the_loop(
    served, db_engine, monkeypatch
):
    # With no other writer committing (the processor down, say), nothing else would copy
    # the log back while the writer holds its connection.
    monkeypatch.setattr(intake, "CHECKPOINT_BATCHES", 2)
    traced: list[tuple[str, str]] = []  # (statement, the thread it ran on)

    def trace(dbapi_connection, _record, _proxy) -> None:
        dbapi_connection.set_trace_callback(
            lambda sql: traced.append((sql, threading.current_thread().name))
        )

    sqlalchemy_event.listen(db_engine, "checkout", trace)
    try:

        async def one_by_one() -> list[httpx.Response]:
            return [(await _deliver(served, [_body(n)]))[0] for n in range(5)]

        responses = asyncio.run(asyncio.wait_for(one_by_one(), 60))
    finally:
        sqlalchemy_event.remove(db_engine, "checkout", trace)

    assert {r.status_code for r in responses} == {200}
    checkpoints = [where for sql, where in traced if "wal_checkpoint" in sql]
    assert len(checkpoints) == 2  # before the 3rd and the 5th batch
    assert all(where.startswith("intake-sqlite") for where in checkpoints)
    # Taking the connection (a pool checkout, its settings) was off the loop too.
    taking = [where for sql, where in traced if sql == "PRAGMA wal_autocheckpoint=0"]
    assert taking and all(where.startswith("intake-sqlite") for where in taking)
    assert _stored(db_engine) == {f"evt_intake_{n}": 1 for n in range(5)}


def test_the_writer_keeps_its_connection_until_unused_or_the_loop_ends(
    served, db_engine, monkeypatch
):
    monkeypatch.setattr(intake, "IDLE_SECONDS", 0.2)
    held: list[object] = []

    async def until_unused() -> None:
        await _deliver(served, [_body(1)])
        await intake.quiet(30)
        writer = intake._writers[asyncio.get_running_loop()]
        connection = writer.held.connection
        assert connection is not None and not connection.closed  # kept after the burst
        held.append(connection)
        await _deliver(served, [_body(2)])  # the next burst uses it
        assert writer.held.connection is connection
        deadline = asyncio.get_running_loop().time() + 30
        while writer.held.connection is not None:  # closed once unused for IDLE_SECONDS
            assert asyncio.get_running_loop().time() < deadline, "never closed"
            await asyncio.sleep(0.05)
        assert connection.closed

    asyncio.run(asyncio.wait_for(until_unused(), 60))

    monkeypatch.setattr(intake, "IDLE_SECONDS", 3600.0)

    async def loop_ends() -> None:
        await _deliver(served, [_body(3)])
        held.append(intake._writers[asyncio.get_running_loop()].held.connection)

    asyncio.run(loop_ends())
    assert held[1] is not None and held[1].closed  # closed as the event loop shut down
    assert db_engine.pool.checkedout() == 0
    assert _stored(db_engine) == {f"evt_intake_{n}": 1 for n in (1, 2, 3)}


@pytest.mark.backends("postgresql")
def test_on_postgresql_a_statement_that_waits_longer_than_the_idle_time_is_not_cut_off(
    served, db_engine, monkeypatch
):
    monkeypatch.setattr(intake, "IDLE_SECONDS", 0.1)
    body = _body(1)
    event = verify(body.encode(), sign(body, SECRET))

    async def scenario() -> httpx.Response:
        await _deliver(served, [_body(0)])  # the writer has its connection
        with db_engine.connect() as other:  # another worker storing the same event...
            inbox.store_many(other, [event])
            delivery = asyncio.create_task(_deliver(served, [body]))
            # ...holds ours (ON CONFLICT waits for its transaction) for many idle times.
            done, _ = await asyncio.wait({delivery}, timeout=10 * intake.IDLE_SECONDS)
            assert not done
            other.rollback()  # it gave up: ours is the one that stores it
        return (await delivery)[0]

    response = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert response.status_code == 200
    assert response.json()["duplicate"] is False
    assert _stored(db_engine) == {"evt_intake_0": 1, "evt_intake_1": 1}


@pytest.mark.backends("postgresql")
def test_on_postgresql_the_writer_connects_as_the_engine_does_spaces_in_options_included(
    settings_env, db_engine, monkeypatch
):
    # libpq reads "-c search_path=..." with its space; a URL re-rendered by hand would not.
    url = db_engine.url.render_as_string(hide_password=False)
    assert "options=-csearch_path%3D" in url
    spaced = db.make_engine(url.replace("options=-csearch_path%3D", "options=-c%20search_path%3D"))
    monkeypatch.setattr(db, "get_engine", lambda: spaced)
    settings_env(STRIPE_WEBHOOK_SECRET=SECRET)
    try:
        responses = asyncio.run(_deliver(dispatch_webhooks_first(create_api()), [_body(1)]))
    finally:
        spaced.dispose()
    assert [r.status_code for r in responses] == [200]
    assert _stored(db_engine) == {"evt_intake_1": 1}


@pytest.mark.backends("postgresql")
def test_on_postgresql_a_kept_connection_the_server_dropped_is_replaced_without_a_503(
    served, db_engine
):
    async def scenario() -> list[int]:
        first = await _deliver(served, [_body(1)])
        kept = intake._writers[asyncio.get_running_loop()].held.connection
        with db_engine.connect() as admin:  # the server ends it (a restart, an idle timeout)
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": kept.info.backend_pid})
        second = await _deliver(served, [_body(2)])
        assert intake._writers[asyncio.get_running_loop()].held.connection is not kept
        return [first[0].status_code, second[0].status_code]

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == [200, 200]
    assert _stored(db_engine) == {"evt_intake_1": 1, "evt_intake_2": 1}


def test_a_batch_stays_within_the_drivers_parameter_limit(served, db_engine, monkeypatch, batches):
    # An old SQLite takes 999 parameters per statement: at 9 per event, 111 events.
    monkeypatch.setattr(db_engine.dialect, "insertmanyvalues_max_parameters", 10 * inbox.COLUMNS)
    release = threading.Event()
    real = intake._commit

    async def first_waits(held, events):
        if not batches:
            await asyncio.to_thread(release.wait, 30)
        return await real(held, events)

    monkeypatch.setattr(intake, "_commit", first_waits)

    async def burst() -> list[httpx.Response]:
        delivery = asyncio.create_task(_deliver(served, [_body(n) for n in range(60)]))
        writer = None
        while writer is None or len(writer.waiting) < 30:  # more gather meanwhile
            await asyncio.sleep(0.01)
            writer = intake._writers.get(asyncio.get_running_loop())
        release.set()
        return await delivery

    responses = asyncio.run(asyncio.wait_for(burst(), 60))
    assert {r.status_code for r in responses} == {200}
    assert max(batches) == 10 and sum(batches) == 60
    assert _stored(db_engine) == {f"evt_intake_{n}": 1 for n in range(60)}


def test_a_writer_stopped_mid_batch_answers_every_waiting_delivery_503_and_retries_are_stored(
    served, db_engine, monkeypatch
):
    release = asyncio.Event()
    real = intake._commit

    async def first_waits(held, events):
        if not release.is_set():
            await release.wait()
        return await real(held, events)

    monkeypatch.setattr(intake, "_commit", first_waits)

    async def scenario() -> list[httpx.Response]:
        first = asyncio.create_task(_deliver(served, [_body(1)]))
        writer = None
        while writer is None or writer.task is None or writer.waiting:  # the 1st is in a batch
            await asyncio.sleep(0.01)
            writer = intake._writers.get(asyncio.get_running_loop())
        second = asyncio.create_task(_deliver(served, [_body(2)]))
        while not writer.waiting:  # the 2nd waits for the next batch
            await asyncio.sleep(0.01)
        writer.task.cancel()  # the writer stops (as on a loop that is shutting down)
        answers = [*await asyncio.wait_for(first, 30), *await asyncio.wait_for(second, 30)]
        release.set()
        return answers + await _deliver(served, [_body(1), _body(2)])  # Stripe retries

    responses = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [r.status_code for r in responses] == [503, 503, 200, 200]
    assert "Temporarily unable" in responses[0].json()["detail"]
    assert _stored(db_engine) == {"evt_intake_1": 1, "evt_intake_2": 1}


@pytest.mark.backends("sqlite")
def test_a_writer_cancelled_mid_statement_gives_its_connection_back_only_after_it(
    served, db_engine, monkeypatch
):
    # On SQLite a statement only runs on a thread (where cancelling cannot stop it) when it
    # waits for another writer's lock.
    order: list[str] = []
    on_thread = threading.Event()  # the statement waits for the lock on the writer's thread
    real_store, real_close = inbox.store_many, intake._Held.close

    def recording_store(connection, events):
        if threading.current_thread().name.startswith("intake-sqlite"):
            on_thread.set()
        stored = real_store(connection, events)
        order.append("stored")
        return stored

    def close(held, *, broken=False):
        if held.connection is not None:
            order.append("given back")
        real_close(held, broken=broken)

    monkeypatch.setattr(inbox, "store_many", recording_store)
    monkeypatch.setattr(intake._Held, "close", close)

    async def scenario() -> None:
        blocker = await asyncio.to_thread(_hold_sqlite_write_lock, db_engine)
        try:
            delivery = asyncio.create_task(_deliver(served, [_body(1)]))
            await asyncio.to_thread(on_thread.wait, 30)
            writer = intake._writers[asyncio.get_running_loop()]
            writer.task.cancel()  # as a loop that is shutting down does
            await asyncio.sleep(BLOCKED_SECONDS)
            assert order == []  # not given back while its thread still uses it
            await asyncio.to_thread(blocker.driver_connection.execute, "COMMIT")
            with contextlib.suppress(asyncio.CancelledError):
                await writer.task
            delivery.cancel()
        finally:
            blocker.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert order == ["stored", "given back"]
    assert db_engine.pool.checkedout() == 0
    assert _stored(db_engine) == {"evt_intake_1": 1}
