"""The webhook processor in a process of its own, started and watched by each backend worker.

Applying an event is mostly Python work: reading it, re-reading the subscription from
Stripe, writing rows. On a thread of the backend worker it shares that worker's interpreter
lock with the web requests, so during a burst acknowledging deliveries (which Stripe times)
and applying them can only take turns. In a child process it runs beside the worker, at a
lower CPU priority (`NICE`): when the CPU is short, deliveries are acknowledged first and
applied right after. With `WEBHOOK_PROCESSOR=inline` the worker applies events on its own
threads instead (`processor.run_processor`).

The worker and its processor talk over the child's standard streams, so nothing needs a
port, a file or Redis:
- the child's stdin: one byte per wake-up (something new was stored: look now). End of file
  means the worker is gone: the processor finishes the event under way, hands the rest of
  its batch back to the inbox (due at once, for any worker) and exits.
- a copy of the child's stdout: without Redis, one line of comma-separated user ids per
  committed change, whose open pages the worker wakes. With Redis the processor publishes
  them itself, like any worker. The child's own stdout goes to its stderr, so a stray print
  cannot garble the ids.

The child ignores SIGINT (Ctrl-C reaches the whole process group): its worker decides when it
stops, by closing the stream. SIGTERM stops it the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from subscription_app import changes, db
from subscription_app.billing import processor
from subscription_app.settings import get_settings

logger = logging.getLogger(__name__)

# Added to the child's niceness: under CPU contention the web requests of its worker (nice 0)
# get about nine tenths of a core to its one tenth; on an idle machine it runs at full speed.
NICE = 10
# How often the worker checks that its processor still runs, and how soon it starts another:
# after a second the first time, then twice as long after each quick death (a processor that
# cannot start, say with the database down, is not restarted in a tight loop), up to a limit.
CHECK_SECONDS = 1.0
RESTART_SECONDS = 1.0
MAX_RESTART_SECONDS = 30.0
# A processor that ran this long before it died was healthy: the next wait starts over.
HEALTHY_SECONDS = 60.0
# How long the worker waits for its processor to finish the pass at hand when stopping.
STOP_TIMEOUT_SECONDS = 15.0
# Batches the whole app applies at once on PostgreSQL (see `appliers`).
APP_APPLIERS = 4


@functools.cache
def backend_workers() -> int:
    """How many backend workers share the webhook intake: what `reflex run --env prod` starts.

    `Settings.server_workers` (the configured count; else one per CPU with Redis, which
    rxconfig hands granian, and one without); one in development, which serves from one
    worker.
    """
    from reflex.utils import exec as reflex_exec

    if not reflex_exec.is_prod_mode():
        return 1
    return get_settings().server_workers or 1


class ProcessorProcess:
    """The parent's handle on one processor process."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None  # both are pipes
        self._wake_fd = process.stdin.fileno()
        # A wake-up must never block the event loop: when the pipe is full the processor has
        # wake-ups enough waiting.
        os.set_blocking(self._wake_fd, False)
        self._unsent = 0  # wake-ups counted this turn of the event loop, not yet written
        self._send_on: asyncio.AbstractEventLoop | None = None  # the loop their write waits on
        self._retired = False  # being stopped: its stream is closed, or about to be
        self._relay = threading.Thread(
            target=_relay_changes, args=(process.stdout,), name="processor-changes", daemon=True
        )
        self._relay.start()

    @classmethod
    def start(cls) -> ProcessorProcess:
        """Start `python -m subscription_app.billing.processor_process WORKERS`, our settings
        in its environment."""
        # Our own interpreter and module, no shell, no outside input.
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", __name__, str(backend_workers())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=os.environ.copy(),
        )
        # Set here rather than by the child itself, so it holds from the child's first step.
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        with contextlib.suppress(OSError):  # the child died at once: the watcher sees it
            os.setpriority(os.PRIO_PROCESS, process.pid, min(mine + NICE, 19))
        return cls(process)

    def wake(self) -> None:
        """Tell the processor that an event was stored: one byte, written at the end of this
        turn of the event loop.

        The requests one commit answers all resume in the same turn, so a batch of events
        costs one write, and the processor one read, instead of one per event. Measured
        during intake bursts on PostgreSQL, taking turns: the processors' CPU per event
        went from 0.09 ms to 0.05-0.07 with this and `read_wakeups`' check (beside ~0.5
        for the worker itself).

        Call it on the worker's event loop (the webhook route does); with no loop running it
        writes at once.
        """
        self._unsent += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: nothing to wait for
            self._send()
            return
        # A write already waits on this loop: it takes this byte too. (One that waited on a
        # loop that stopped before running it never will: this loop writes them all.)
        if self._send_on is not loop:
            self._send_on = loop
            loop.call_soon(self._send)

    def _send(self) -> None:
        # One byte per event (the processor counts them, `IntakeActivity`), in one write:
        # atomic up to PIPE_BUF, and more than that is a burst however many are written.
        count, self._unsent, self._send_on = self._unsent, 0, None
        if self._retired or not count:
            # Its stream is closed (or being closed on another thread): the descriptor's
            # number may already belong to another file or socket of this process.
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(self._wake_fd, b"w" * min(count, select.PIPE_BUF))

    def retire(self) -> None:
        """No more wake-ups: from now on none is written, not even one already counted.

        Called on the event loop before `stop` closes the stream on another thread, so a
        write that was waiting for the end of the loop's turn never reaches the descriptor.
        """
        self._retired = True

    def running(self) -> bool:
        """Whether the process is still alive."""
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Close its stream (it finishes its event, hands its batch back, exits); terminate it
        if it lingers."""
        assert self.process.stdin is not None
        self.retire()  # (`run` has already, on its event loop, before handing this over)
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("webhook processor did not stop in %.0f s; terminating it", timeout)
            self.process.terminate()
            try:
                return self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()


def _relay_changes(stream) -> None:
    """Wake this worker's pages of the users the processor's lines name (a thread)."""
    for line in stream:
        ids = changes.parse_ids(line)
        if ids:
            changes.wake_here(ids)


_current: ProcessorProcess | None = None


def wake() -> None:
    """Tell this worker's processor, wherever it runs, that new events were stored."""
    changes.processor_wakeup().set()  # the in-process processor (WEBHOOK_PROCESSOR=inline)
    child = _current
    if child is not None:
        child.wake()


async def run(stop: asyncio.Event | None = None) -> None:
    """Apply webhook events for the life of this worker (its lifespan task).

    Starts the processor process and starts it again if it dies; with
    `WEBHOOK_PROCESSOR=inline` runs `processor.run_processor` here instead.
    """
    global _current
    if get_settings().webhook_processor == "inline":
        await processor.run_processor(stop)
        return
    quick_deaths = 0
    while stop is None or not stop.is_set():
        started = time.monotonic()
        try:
            child = await asyncio.to_thread(ProcessorProcess.start)
        except Exception:
            # Could not start one (no memory, no process slots, no descriptors): try again,
            # backing off as after a quick death, rather than let this task end and the
            # worker go on acknowledging events nobody applies.
            quick_deaths += 1
            delay = min(RESTART_SECONDS * 2 ** (quick_deaths - 1), MAX_RESTART_SECONDS)
            logger.exception("could not start the webhook processor; trying again in %.0f s", delay)
            await pause(delay, stop)
            continue
        _current = child
        try:
            while child.running() and (stop is None or not stop.is_set()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_wait(stop), CHECK_SECONDS)
        finally:
            _current = None
            child.retire()  # before its stream is closed on another thread
            if child.running():
                # Shielded: a cancelled lifespan still lets the processor finish its event.
                await asyncio.shield(asyncio.to_thread(child.stop))
        if stop is None or not stop.is_set():
            healthy = time.monotonic() - started >= HEALTHY_SECONDS
            quick_deaths = 0 if healthy else quick_deaths + 1
            delay = min(RESTART_SECONDS * 2 ** max(quick_deaths - 1, 0), MAX_RESTART_SECONDS)
            logger.warning(
                "webhook processor exited with %s; starting another in %.0f s",
                child.process.returncode,
                delay,
            )
            await pause(delay, stop)


async def pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Wait `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_wait(stop), seconds)


async def _wait(stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.Event().wait()
    else:
        await stop.wait()


# --------------------------------------------------------------------------
# The child
# --------------------------------------------------------------------------


class IntakeActivity:
    """How busy this worker's intake is, from its wake-ups (one byte per stored event).

    During a burst the processor steps aside between events (`pause`), so the machine's CPU
    goes to acknowledging deliveries first, which Stripe times; the events are applied right
    after. A steady stream is not a burst: below `BUSY_EVENTS` within `BUSY_WINDOW_SECONDS`
    (200/s) to the whole app the processor never waits. With several `workers` each sees
    its share of the deliveries, so each counts a burst at its share of that, but never below
    `MIN_BUSY_EVENTS` (75/s to one worker), where a steady stream's chance clusters would
    hold it back. Each wait is bounded, so a stream that never lets up still has its events
    applied, if slowly.
    """

    BUSY_EVENTS = 8
    MIN_BUSY_EVENTS = 3
    BUSY_WINDOW_SECONDS = 0.04
    MAX_PAUSE_SECONDS = 0.5

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, workers: int = 1) -> None:
        self._clock = clock
        self.busy_events = max(math.ceil(self.BUSY_EVENTS / max(workers, 1)), self.MIN_BUSY_EVENTS)
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._count = 0

    def saw(self, events: int) -> None:
        """Note `events` stored just now (the wake-up reader calls this)."""
        with self._lock:
            self._recent.append((self._clock(), events))
            self._count += events

    def busy_until(self) -> float | None:
        """When the intake stops counting as busy (if nothing more arrives), or None if not busy."""
        with self._lock:
            horizon = self._clock() - self.BUSY_WINDOW_SECONDS
            while self._recent and self._recent[0][0] <= horizon:
                self._count -= self._recent.popleft()[1]
            if self._count < self.busy_events:
                return None
            # Busy until enough of the window's wake-ups have aged out of it.
            left = self._count
            for at, events in self._recent:
                left -= events
                if left < self.busy_events:
                    return at + self.BUSY_WINDOW_SECONDS
            return None  # pragma: no cover - the loop always ends below the threshold

    def pause(self, stop: threading.Event | None = None) -> float:
        """Block while the intake is busy, at most `MAX_PAUSE_SECONDS`; the seconds waited."""
        started = self._clock()
        deadline = started + self.MAX_PAUSE_SECONDS
        while stop is None or not stop.is_set():
            until = self.busy_until()
            now = self._clock()
            if until is None or now >= deadline:
                break
            # A wait for a known moment (the burst ageing out of the window), not a poll.
            time.sleep(max(min(until, deadline) - now, 0.001))
        return self._clock() - started


def read_wakeups(
    loop: asyncio.AbstractEventLoop,
    wakeup: asyncio.Event,
    stop: asyncio.Event,
    fd: int = 0,
    activity: IntakeActivity | None = None,
) -> None:
    """Set `wakeup` for each read from `fd` (stdin) unless it is set already; at the stream's
    end set `stop`. Runs on a thread."""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.call_soon_threadsafe(stop.set)
            loop.call_soon_threadsafe(wakeup.set)  # end the idle wait at once
            return
        if activity is not None:
            activity.saw(len(data))
        # Already set: no applier has cleared it since, so the next clear, and the claim
        # that follows it, come after this read and find what was stored before this byte.
        # So the loop is not woken again for it (during a burst, nearly every read: see
        # `ProcessorProcess.wake`).
        if not wakeup.is_set():
            loop.call_soon_threadsafe(wakeup.set)


def _id_writer(fd: int):
    lock = threading.Lock()

    def send(ids: list[int]) -> None:
        line = changes.format_ids(ids).encode() + b"\n"
        with lock, contextlib.suppress(OSError):  # the worker is gone: nothing to wake
            os.write(fd, line)

    return send


def appliers(workers: int, dialect: str) -> int:
    """How many batches one processor process applies at once, each on a thread of its own.

    On PostgreSQL the app's `APP_APPLIERS`, spread over its `workers`' processes: with few
    workers each process applies more at once, so a steady stream (one Stripe re-read per
    event) keeps its latency, and a burst drains as fast, as with a process per core more.
    The inbox leases each event to one of them, as it does across processes. On any other
    database (SQLite) one: it takes one writer at a time, so a second would only wait.
    """
    if dialect != "postgresql":
        return 1
    return max(1, math.ceil(APP_APPLIERS / max(workers, 1)))


async def _serve(ids_fd: int, workers: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    wakeup = changes.processor_wakeup()
    if not get_settings().redis_url:
        changes.relay_to(_id_writer(ids_fd))
    activity = IntakeActivity(workers=workers)
    threading.Thread(
        target=read_wakeups,
        args=(loop, wakeup, stop),
        kwargs={"activity": activity},
        name="wakeups",
        daemon=True,
    ).start()
    # No intake in this process: it steps aside for its worker's instead.
    async with asyncio.TaskGroup() as group:
        for _ in range(appliers(workers, db.get_engine().dialect.name)):
            group.create_task(
                processor.run_processor(stop, yield_to_intake=False, pause=activity.pause)
            )


def main() -> None:
    """The processor process: apply webhook events until the parent closes our stdin.

    Its one argument is the number of backend workers (`backend_workers`), default 1.
    """
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker stops us, not Ctrl-C
    ids_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the ids
    logging.basicConfig(
        level=logging.INFO, format="webhook processor %(process)d: %(levelname)s %(message)s"
    )
    asyncio.run(_serve(ids_fd, workers))


if __name__ == "__main__":
    main()
