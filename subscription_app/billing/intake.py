"""Storing verified webhook events by group commit.

Each backend worker has one writer. A request hands its event to the writer and waits; the
writer stores everything that is waiting in one transaction (`inbox.store_many`: a single
`INSERT ... ON CONFLICT DO NOTHING`) on a worker thread, then answers each request. While one
transaction commits, the next requests gather, so under load one commit (and one thread hop)
serves many events, and an event is acknowledged to Stripe only once it is durably stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass, field

from subscription_app import db
from subscription_app.billing import inbox
from subscription_app.billing.webhooks import VerifiedEvent

# Bounds one transaction (and one statement's parameters: 9 per row).
MAX_BATCH = 500


def _commit(events: list[VerifiedEvent]) -> set[str]:
    with db.session_scope() as session:
        return inbox.store_many(session, events)


@dataclass
class _Writer:
    """The waiting events of one event loop, and whether a transaction is under way."""

    waiting: list[tuple[VerifiedEvent, asyncio.Future[bool]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
            try:
                stored = await asyncio.to_thread(_commit, [event for event, _ in batch])
            except Exception as exc:  # every request of the batch answers 503; Stripe retries
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
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
