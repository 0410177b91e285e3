"""Storing verified webhook events by group commit.

Each backend worker has one writer. A request hands its event to the writer and waits; the
writer stores everything that is waiting in one statement (`inbox.store_many`: a single
`INSERT ... ON CONFLICT DO NOTHING`) on a worker thread, then answers each request. While one
statement runs, the next requests gather, so under load one commit (and one thread hop)
serves many events, and an event is acknowledged to Stripe only once it is durably stored.

While events keep arriving the writer keeps one connection, in autocommit mode: the single
statement is its own transaction, so a batch costs one round trip to the database, with no
pool checkout, liveness ping, `BEGIN` or `COMMIT` of its own. Measured in-process per
one-event batch on PostgreSQL: 0.34 ms of the worker's CPU and 0.8 ms wall, against 0.88 ms
and 1.6 ms through a session; on SQLite 0.2 ms against 0.4 ms. The connection goes back to
the pool as soon as nothing is waiting, and is dropped after any error, so the next batch
starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine

from subscription_app import db
from subscription_app.billing import inbox
from subscription_app.billing.webhooks import VerifiedEvent

# Bounds one statement (and its parameters: 9 per row).
MAX_BATCH = 500
# SQLite's default WAL size (pages) past which a commit checkpoints; restored on give-back.
SQLITE_CHECKPOINT = 1000


@dataclass
class _Held:
    """The writer's connection while events keep arriving (used by one thread at a time)."""

    connection: Connection | None = None
    engine: Engine | None = None

    def open(self) -> Connection:
        """The held connection, opened (or reopened on another engine) if need be."""
        engine = db.get_engine()
        if self.connection is None or self.engine is not engine:
            self.close()
            connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self.connection, self.engine = connection, engine
            if engine.dialect.name == "sqlite":
                # A commit that crosses SQLite's WAL threshold copies the log into the
                # database file and syncs it: 3/4 of a batch's time, measured. While a burst
                # lasts, the writer leaves that to the next other connection to commit (the
                # processor, applying these very events).
                connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
        return self.connection

    def close(self, *, broken: bool = False) -> None:
        """Give the connection back to the pool (or discard it, if it may be `broken`)."""
        connection, self.connection, self.engine = self.connection, None, None
        if connection is None:
            return
        with contextlib.suppress(Exception):  # a dead connection: nothing to give back
            if not broken and connection.dialect.name == "sqlite":
                try:
                    connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT}")
                except Exception:
                    broken = True  # never hand the pool a connection that skips checkpoints
            if broken:
                connection.invalidate()
            connection.close()


def _commit(held: _Held, events: list[VerifiedEvent]) -> set[str]:
    """Store `events` in one autocommitted statement on the held connection; the new ids."""
    try:
        return inbox.store_many(held.open(), events)
    except BaseException:
        held.close(broken=True)
        raise


@dataclass
class _Writer:
    """The waiting events of one event loop, and whether a transaction is under way."""

    waiting: list[tuple[VerifiedEvent, asyncio.Future[bool]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    held: _Held = field(default_factory=_Held)

    async def run(self) -> None:
        # The outer loop: events that arrive while the connection is being given back.
        while self.waiting:
            try:
                while self.waiting:
                    await self._store_next()
            finally:
                # The executor's future, shielded, not a task: a cancelled writer, even on a
                # loop that is shutting down (which cancels every task), gives it back.
                closing = asyncio.get_running_loop().run_in_executor(None, self.held.close)
                await asyncio.shield(closing)

    async def _store_next(self) -> None:
        batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
        try:
            stored = await asyncio.to_thread(_commit, self.held, [event for event, _ in batch])
        except Exception as exc:  # every request of the batch answers 503; Stripe retries
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        answered: set[str] = set()
        for event, answer in batch:
            # The same event twice in one batch: the first is new, the second a repeat.
            new = event.id in stored and event.id not in answered
            answered.add(event.id)
            if not answer.done():
                answer.set_result(new)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writer] = (
    weakref.WeakKeyDictionary()
)


async def store(event: VerifiedEvent) -> bool:
    """Store `event` durably (with whatever else is arriving); False if it was a repeat.

    Returns after the transaction holding it has committed. Raises what the database raised
    if it could not be stored.
    """
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = _Writer()
    answer: asyncio.Future[bool] = loop.create_future()
    writer.waiting.append((event, answer))
    if writer.task is None or writer.task.done():
        writer.task = loop.create_task(writer.run())
    return await answer


async def quiet(timeout: float) -> None:
    """Return once this worker's intake has nothing waiting or being stored, or after `timeout`.

    The webhook processor calls this before each event, so acknowledging deliveries (which
    Stripe times) goes ahead of applying them.
    """
    writer = _writers.get(asyncio.get_running_loop())
    if writer is None or writer.task is None or writer.task.done():
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(writer.task), timeout)
