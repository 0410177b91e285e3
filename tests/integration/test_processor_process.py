"""`billing/processor_process.py`: webhook events applied by a process of the worker's own.

The processor process is real (`python -m subscription_app.billing.processor_process`), and
so are the database (SQLite and PostgreSQL) and the Stripe emulator it re-reads from. This
test process plays the backend worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator

import pytest
from sqlmodel import Session, select

from subscription_app import changes, db
from subscription_app.billing import inbox, processor, processor_process, sync
from subscription_app.billing.webhooks import sign, verify
from subscription_app.db import session_scope
from subscription_app.models import StripeEvent
from tests.integration.test_webhooks import stripe_event_body, subscribe_for_real, view_of

SECRET = "whsec_processor_process"
TIMEOUT = 30.0  # generous: the child imports the app before its first pass


@pytest.fixture
def worker_env(stripe_env, db_engine, empty_database_url, settings_env, monkeypatch):
    """Settings the processor process inherits: this test's database and emulator."""
    settings_env(DATABASE_URL=empty_database_url, STRIPE_WEBHOOK_SECRET=SECRET)
    # Not applied here: only the child may apply events.
    monkeypatch.setattr(processor, "run_processor", _not_in_this_process)
    monkeypatch.setattr(processor_process, "CHECK_SECONDS", 0.05)
    monkeypatch.setattr(processor_process, "RESTART_SECONDS", 0.0)


async def _not_in_this_process(stop=None) -> None:
    raise AssertionError("events were applied in the worker's own process")


def store(sub_id: str, stripe_client) -> str:
    """Deliver a `customer.subscription.updated` for `sub_id` as the webhook route stores it;
    the event's id."""
    current = stripe_client.v1.subscriptions.retrieve(sub_id).to_dict()
    body = stripe_event_body("customer.subscription.updated", current)
    event = verify(body.encode(), sign(body, SECRET))
    with session_scope() as session:
        assert inbox.store_many(session, [event])
    processor_process.wake()
    return event.id


@contextlib.asynccontextmanager
async def worker_running() -> AsyncIterator[processor_process.ProcessorProcess]:
    """This process acting as a backend worker (`processor_process.run`); yields its child."""
    stop = asyncio.Event()
    running = asyncio.create_task(processor_process.run(stop))
    try:
        await until(lambda: processor_process._current is not None, "the processor")
        child = processor_process._current
        assert child is not None
        yield child
    finally:
        stop.set()
        await asyncio.wait_for(running, TIMEOUT)


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_events_are_applied_by_a_lower_priority_process_that_wakes_this_workers_pages(
    worker_env, session, stripe_client
):
    user_id, sub_id = subscribe_for_real(session, stripe_client)
    asyncio.run(_applied_elsewhere(user_id, sub_id, stripe_client, session))


async def _applied_elsewhere(user_id: int, sub_id: str, stripe_client, session) -> None:
    async with worker_running() as child:
        # Lower priority than this worker: under contention web requests go first.
        expected = min(os.getpriority(os.PRIO_PROCESS, 0) + processor_process.NICE, 19)
        assert os.getpriority(os.PRIO_PROCESS, child.process.pid) == expected

        with changes.listen(user_id) as page:
            stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
            await asyncio.to_thread(store, sub_id, stripe_client)
            # The child has no pages and no Redis here: it hands the change to us.
            assert await page.wait(TIMEOUT), "this worker's page was not woken"
            assert view_of(session, user_id).cancel_at_period_end is True

            # Ctrl-C reaches the whole process group: the processor keeps going regardless.
            os.kill(child.process.pid, signal.SIGINT)
            stripe_client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": False})
            await asyncio.to_thread(store, sub_id, stripe_client)
            assert await page.wait(TIMEOUT)
            assert view_of(session, user_id).cancel_at_period_end is False
        assert child.running()
    # Stopping closes its stream: it finishes and exits cleanly.
    assert child.process.returncode == 0
    assert processor_process._current is None


def test_a_processor_that_dies_is_started_again(worker_env, monkeypatch):
    monkeypatch.setattr(processor_process, "backend_workers", lambda: 4)
    asyncio.run(_restarted())


async def _restarted() -> None:
    async with worker_running() as first:
        # It is told how many workers share the intake (it paces itself by its share).
        assert first.process.args[-1] == "4"
        first.process.kill()
        await until(lambda: processor_process._current not in (None, first), "a second processor")
        second = processor_process._current
        assert second is not None and second.running()
    assert first.process.returncode == -signal.SIGKILL
    assert second.process.returncode == 0


class _DeadOnArrival:
    """A processor process that has already exited (it could not start)."""

    def __init__(self) -> None:
        self.process = subprocess.CompletedProcess(args=[], returncode=1)

    def running(self) -> bool:
        return False

    def retire(self) -> None:
        pass


def test_a_processor_that_keeps_dying_is_restarted_less_and_less_often(monkeypatch):
    waits: list[float] = []
    stop = asyncio.Event()

    async def pause(seconds: float, _stop) -> None:
        waits.append(seconds)
        if len(waits) == 8:
            stop.set()

    monkeypatch.setattr(processor_process.ProcessorProcess, "start", _DeadOnArrival)
    monkeypatch.setattr(processor_process, "pause", pause)
    asyncio.run(processor_process.run(stop))
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_processor_that_cannot_be_started_is_tried_again_not_given_up(monkeypatch):
    # fork or exec failing (no memory, no process slots): the task must not end, or the
    # worker would go on acknowledging events that nobody applies.
    waits: list[float] = []
    started: list[_RunsUntilStopped] = []
    stop = asyncio.Event()

    def start():
        if len(waits) < 3:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        child = _RunsUntilStopped()
        started.append(child)
        stop.set()
        return child

    async def pause(seconds: float, _stop) -> None:
        waits.append(seconds)

    monkeypatch.setattr(processor_process.ProcessorProcess, "start", start)
    monkeypatch.setattr(processor_process, "pause", pause)
    asyncio.run(processor_process.run(stop))
    assert waits == [1.0, 2.0, 4.0]  # backing off, as after quick deaths
    assert len(started) == 1  # and then started


class _RunsUntilStopped:
    """A processor process that runs until stopped, noting what its worker did and where."""

    calls: list[tuple[str, int]] = []

    def __init__(self) -> None:
        self.process = subprocess.CompletedProcess(args=[], returncode=0)
        self.alive = True

    def running(self) -> bool:
        return self.alive

    def retire(self) -> None:
        self.calls.append(("retire", threading.get_ident()))

    def stop(self, timeout: float = 0) -> int:
        self.calls.append(("stop", threading.get_ident()))
        self.alive = False
        return 0


def test_a_stopping_worker_retires_its_child_on_its_loop_before_another_thread_stops_it(
    monkeypatch,
):
    # So a wake-up waiting for the end of the loop's turn is never written to the closed
    # stream's descriptor, which another file or socket may have by then.
    monkeypatch.setattr(processor_process.ProcessorProcess, "start", _RunsUntilStopped)
    _RunsUntilStopped.calls = []

    async def worker() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(processor_process.run(stop))
        await until(lambda: processor_process._current is not None, "the child")
        stop.set()
        await asyncio.wait_for(running, TIMEOUT)

    asyncio.run(worker())
    loop_thread = threading.get_ident()
    assert [what for what, _ in _RunsUntilStopped.calls] == ["retire", "stop"]
    assert _RunsUntilStopped.calls[0][1] == loop_thread


def test_inline_applies_events_in_the_worker_itself(settings_env, monkeypatch):
    settings_env(WEBHOOK_PROCESSOR="inline")
    ran: list[asyncio.Event | None] = []

    async def in_process(stop=None) -> None:
        ran.append(stop)

    monkeypatch.setattr(processor, "run_processor", in_process)
    monkeypatch.setattr(processor_process.ProcessorProcess, "start", _no_child)
    stop = asyncio.Event()
    asyncio.run(processor_process.run(stop))
    assert ran == [stop]


def _no_child():
    raise AssertionError("a processor process was started with WEBHOOK_PROCESSOR=inline")


def test_the_child_wakes_on_each_byte_and_stops_at_the_end_of_its_stream():
    asyncio.run(_wakeups())


async def _wakeups() -> None:
    loop = asyncio.get_running_loop()
    wakeup, stop = asyncio.Event(), asyncio.Event()
    read_end, write_end = os.pipe()
    reader = threading.Thread(
        target=processor_process.read_wakeups, args=(loop, wakeup, stop, read_end)
    )
    reader.start()
    try:
        os.write(write_end, b"w")
        await asyncio.wait_for(wakeup.wait(), TIMEOUT)
        assert not stop.is_set()
        wakeup.clear()
        os.close(write_end)  # the worker is gone
        await asyncio.wait_for(stop.wait(), TIMEOUT)
        assert wakeup.is_set()  # and the idle wait ends at once
    finally:
        await asyncio.to_thread(reader.join, TIMEOUT)
        os.close(read_end)


def test_a_wake_up_reaches_the_process_and_its_lines_wake_this_workers_pages():
    asyncio.run(_round_trip())


async def _round_trip() -> None:
    # A stand-in child at the same seam: it answers the first wake-up byte with a line
    # naming user 7, as the processor does for a change it committed.
    echo = "import os, sys; os.read(0, 1); sys.stdout.write('7\\n'); sys.stdout.flush()"
    process = subprocess.Popen(
        [sys.executable, "-c", echo], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    child = processor_process.ProcessorProcess(process)
    try:
        with changes.listen(7) as page:
            child.wake()
            assert await page.wait(TIMEOUT)
    finally:
        assert child.stop(TIMEOUT) == 0


def _claimed(event_id: str) -> bool:
    with session_scope() as session:
        row = session.exec(select(StripeEvent).where(StripeEvent.event_id == event_id)).one()
        return row.locked_until is not None


@pytest.mark.backends("postgresql")
def test_on_postgresql_one_process_applies_a_batch_while_another_waits_for_its_lock(
    worker_env, session, stripe_client
):
    first = subscribe_for_real(session, stripe_client)
    second = subscribe_for_real(session, stripe_client, email="b@example.com")
    assert processor_process.appliers(1, "postgresql") > 1
    asyncio.run(_side_by_side(session, stripe_client, first, second))


async def _side_by_side(session, stripe_client, first, second) -> None:
    (first_user, first_sub), (second_user, second_sub) = first, second
    held, release = threading.Event(), threading.Event()

    def hold_first_subscription() -> None:
        with Session(db.get_engine()) as own, sync.subscription_lock(first_sub, own):
            held.set()
            release.wait(TIMEOUT)

    holder = threading.Thread(target=hold_first_subscription)
    holder.start()
    try:
        assert await asyncio.to_thread(held.wait, TIMEOUT)
        async with worker_running():
            # The first event is claimed and its batch waits for the subscription's lock...
            params = {"cancel_at_period_end": True}
            stripe_client.v1.subscriptions.update(first_sub, params=params)
            first_event = await asyncio.to_thread(store, first_sub, stripe_client)
            await until(lambda: _claimed(first_event), "the first event to be claimed")
            # ...while the same process applies the next one beside it.
            stripe_client.v1.subscriptions.update(second_sub, params=params)
            await asyncio.to_thread(store, second_sub, stripe_client)
            await until(
                lambda: view_of(session, second_user).cancel_at_period_end is True,
                "the second event to be applied",
            )
            assert view_of(session, first_user).cancel_at_period_end is False
            release.set()
            await until(
                lambda: view_of(session, first_user).cancel_at_period_end is True,
                "the first event to be applied once its lock was free",
            )
    finally:
        release.set()
        holder.join(TIMEOUT)
