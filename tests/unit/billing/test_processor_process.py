"""`billing/processor_process.IntakeActivity`: the processor steps aside during an intake burst.

A fake clock: `pause` waits with `time.sleep`, which here moves the clock on instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import types
from collections.abc import Iterator

import pytest

from subscription_app.billing import processor_process
from subscription_app.billing.processor_process import IntakeActivity

WINDOW = IntakeActivity.BUSY_WINDOW_SECONDS
BUSY = IntakeActivity.BUSY_EVENTS
MAX_PAUSE = IntakeActivity.MAX_PAUSE_SECONDS


class Clock:
    """A clock that `time.sleep` moves on; `during_sleep` runs on every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.during_sleep = lambda: None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        self.during_sleep()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(processor_process.time, "sleep", fake.sleep)
    return fake


def test_a_steady_stream_never_makes_the_processor_wait(clock):
    activity = IntakeActivity(clock)
    for _ in range(200):  # 100 events/s, all to this worker: half the busy rate
        activity.saw(1)
        assert activity.pause() == 0
        clock.now += 0.01
    assert clock.slept == []


def test_during_a_burst_the_processor_waits_until_it_has_passed(clock):
    activity = IntakeActivity(clock)
    for _ in range(BUSY * 2):  # a burst: many events within a few milliseconds
        activity.saw(1)
        clock.now += 0.001
    burst_end = clock.now

    waited = activity.pause()

    assert 0 < waited <= WINDOW
    assert activity.busy_until() is None  # the burst has aged out of the window
    assert clock.now - burst_end < WINDOW  # and no longer than that was waited


def test_an_intake_that_never_lets_up_delays_each_event_a_bounded_moment(clock):
    activity = IntakeActivity(clock)
    clock.during_sleep = lambda: activity.saw(BUSY)  # more keeps arriving while it waits
    activity.saw(BUSY)

    assert activity.pause() == pytest.approx(MAX_PAUSE)


def test_a_stopping_processor_does_not_wait_for_the_intake(clock):
    activity = IntakeActivity(clock)
    activity.saw(BUSY * 4)
    stop = threading.Event()
    stop.set()
    assert activity.pause(stop) == 0


def test_each_wake_up_byte_counts_as_one_stored_event():
    activity = IntakeActivity()
    read_end, write_end = os.pipe()
    os.write(write_end, b"w" * BUSY)
    os.close(write_end)

    async def read() -> None:
        loop = asyncio.get_running_loop()
        wakeup, stop = asyncio.Event(), asyncio.Event()
        await asyncio.to_thread(
            processor_process.read_wakeups, loop, wakeup, stop, read_end, activity
        )

    asyncio.run(read())
    os.close(read_end)
    assert activity.busy_until() is not None


class RecordingLoop:
    """What `read_wakeups` hands the event loop, run at once."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    def call_soon_threadsafe(self, callback) -> None:
        self.calls.append(callback)
        callback()


def test_a_wake_up_already_pending_does_not_wake_the_processors_loop_again():
    read_end, write_end = os.pipe()
    os.write(write_end, b"w")
    os.close(write_end)  # then the worker is gone
    loop, wakeup, stop = RecordingLoop(), asyncio.Event(), asyncio.Event()
    wakeup.set()  # an earlier wake-up, not yet taken by a pass

    processor_process.read_wakeups(loop, wakeup, stop, read_end)  # type: ignore[arg-type]
    os.close(read_end)

    # Only the end of the stream reached the loop (stop, and the idle wait ended).
    assert loop.calls == [stop.set, wakeup.set]


def test_a_wake_up_reaches_the_processors_loop_when_none_is_pending():
    read_end, write_end = os.pipe()
    os.write(write_end, b"w")
    os.close(write_end)
    loop, wakeup, stop = RecordingLoop(), asyncio.Event(), asyncio.Event()

    processor_process.read_wakeups(loop, wakeup, stop, read_end)  # type: ignore[arg-type]
    os.close(read_end)

    assert loop.calls == [wakeup.set, stop.set, wakeup.set]


@dataclasses.dataclass
class PipedChild:
    """A `ProcessorProcess` over a stand-in child: pipes, no process."""

    child: processor_process.ProcessorProcess
    wake_read: int  # what the child would read
    writes: list[bytes]  # each write made to its stream, as made

    def read_wake_ups(self) -> bytes:
        """What was written to the child's stream (nothing fails here, rather than hangs)."""
        os.set_blocking(self.wake_read, False)
        try:
            return os.read(self.wake_read, 100)
        except BlockingIOError:
            return b""


@pytest.fixture
def piped_child(monkeypatch) -> Iterator[PipedChild]:
    wake_read, wake_write = os.pipe()
    lines_read, lines_write = os.pipe()
    stand_in = types.SimpleNamespace(
        stdin=os.fdopen(wake_write, "wb"), stdout=os.fdopen(lines_read, "rb")
    )
    child = processor_process.ProcessorProcess(stand_in)  # type: ignore[arg-type]
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        if fd == wake_write:
            writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(processor_process.os, "write", recording_write)
    try:
        yield PipedChild(child, wake_read, writes)
    finally:
        stand_in.stdin.close()
        os.close(wake_read)
        os.close(lines_write)  # the relay thread's stream ends
        child._relay.join(5)
        assert not child._relay.is_alive()
        stand_in.stdout.close()


def test_the_events_one_turn_of_the_loop_answers_wake_the_processor_with_one_write(
    piped_child,
):
    child, writes = piped_child.child, piped_child.writes

    async def requests() -> None:
        for _ in range(3):  # three requests answered by one commit, in one turn
            child.wake()
        assert writes == []  # nothing written while the turn goes on
        await asyncio.sleep(0)
        child.wake()  # a later commit
        await asyncio.sleep(0)

    asyncio.run(requests())
    assert writes == [b"www", b"w"]  # still one byte per event, which the processor counts
    assert piped_child.read_wake_ups() == b"wwww"


def test_wake_ups_left_by_a_loop_that_stopped_are_written_by_the_next(piped_child):
    child = piped_child.child

    async def wake_then_stop() -> None:
        child.wake()
        asyncio.get_running_loop().stop()  # before the turn's write runs

    first = asyncio.new_event_loop()
    try:
        task = first.create_task(wake_then_stop())
        first.run_forever()
        assert task.done()
    finally:
        first.close()

    async def wake() -> None:
        child.wake()
        await asyncio.sleep(0)

    asyncio.run(wake())
    assert piped_child.read_wake_ups() == b"ww"  # the stopped loop's byte too


def test_a_wake_up_waiting_for_the_end_of_the_turn_is_dropped_once_the_child_is_retired(
    piped_child,
):
    # The worker's lifespan retires its child on the event loop before another thread
    # closes the child's stream: the descriptor's number may then be reused by any file or
    # socket, which a late write would corrupt.
    child = piped_child.child

    async def stopping() -> None:
        child.wake()  # an event stored in this turn
        child.retire()  # and the worker stopping in the same turn
        await asyncio.sleep(0)

    asyncio.run(stopping())
    assert piped_child.writes == []
    assert piped_child.read_wake_ups() == b""


def test_with_several_workers_each_counts_a_burst_at_its_share_of_the_apps(clock):
    # Five workers share the deliveries: 3 events within the window to one of them is its
    # part of a burst (8 to a single worker would be).
    activity = IntakeActivity(clock, workers=5)
    activity.saw(2)
    assert activity.busy_until() is None
    activity.saw(1)
    assert activity.busy_until() is not None

    alone = IntakeActivity(clock)
    alone.saw(BUSY - 1)
    assert alone.busy_until() is None


def test_a_steady_stream_shared_by_many_workers_never_makes_one_wait(clock):
    # 100 events/s to the app, spread over eight workers: 12.5/s to this one. However many
    # workers there are, a worker never counts fewer than MIN_BUSY_EVENTS as a burst.
    activity = IntakeActivity(clock, workers=8)
    assert activity.busy_events == IntakeActivity.MIN_BUSY_EVENTS
    for _ in range(100):
        activity.saw(1)
        assert activity.pause() == 0
        clock.now += 0.08
    assert clock.slept == []


@pytest.fixture
def workers_counted_again():
    processor_process.backend_workers.cache_clear()
    yield
    processor_process.backend_workers.cache_clear()


@pytest.mark.usefixtures("workers_counted_again")
@pytest.mark.parametrize(
    ("mode", "environment", "expected"),
    [
        ("dev", {"GRANIAN_WORKERS": "4"}, 1),
        ("prod", {"GRANIAN_WORKERS": "4"}, 4),
        ("prod", {"WEB_CONCURRENCY": "3"}, 3),
        ("prod", {"GRANIAN_WORKERS": "2", "WEB_CONCURRENCY": "6"}, 6),
        ("prod", {"REDIS_URL": None}, 1),  # what Reflex starts without Redis: one worker
        ("prod", {}, 3),  # none configured, with Redis: one per CPU (three here)
    ],
)
def test_the_worker_count_is_the_servers_in_production_and_one_in_development(
    monkeypatch, settings_env, mode, environment, expected
):
    monkeypatch.setenv("REFLEX_ENV_MODE", mode)
    monkeypatch.setattr("subscription_app.settings.available_cpus", lambda: 3)
    for name in ("GRANIAN_WORKERS", "WEB_CONCURRENCY", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    # Several workers need Redis (the settings refuse them without it).
    settings_env(**{"REDIS_URL": "redis://127.0.0.1:6379/0", **environment})
    assert processor_process.backend_workers() == expected


@pytest.mark.parametrize(
    ("workers", "dialect", "expected"),
    [
        (1, "postgresql", 4),  # the app's four in one process
        (2, "postgresql", 2),
        (3, "postgresql", 2),  # rounded up: never fewer in all than the app's four
        (5, "postgresql", 1),
        (8, "postgresql", 1),
        (1, "sqlite", 1),  # one writer at a time: a second applier would only wait
        (2, "sqlite", 1),
    ],
)
def test_each_process_applies_its_share_of_the_apps_batches_at_once(workers, dialect, expected):
    assert processor_process.appliers(workers, dialect) == expected
