"""The webhook processor: applies stored events in the background (a backend lifespan task).

Several processors (one per backend worker) can run at once: the inbox leases each event to
one of them. A failing handler is retried with backoff, then the event is marked failed with
its error and the processor moves on; a failure that is an outage (`is_temporary`) is retried
for days instead.

Each backend worker runs its processor in a process of its own (`processor_process`), which
works through a claimed batch on one thread. With WEBHOOK_PROCESSOR=inline it runs on the
worker's own event loop instead, and taking events in comes first: before each event the
processor lets this worker's intake finish what it is storing (for a moment at most), so a
burst of deliveries is acknowledged at full speed and applied right after. Within one claimed
batch each subscription is re-read from Stripe once (`sync.reads_shared_from_now`), and the
lease of a batch is renewed while the batch is worked through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy.exc
import stripe
from sqlmodel import Session

from subscription_app import changes, db, locks
from subscription_app.billing import handlers, inbox, intake, sync

logger = logging.getLogger(__name__)
IDLE_POLL_SECONDS = 1.0
# Large, so that a burst shares its Stripe reads: a batch re-reads each subscription once,
# however many of its events name it (`sync.reads_shared_from_now`). A batch this size can
# take longer than the lease: the lease is renewed while it is worked through.
BATCH_SIZE = 500
RENEW_WHEN_LEFT = inbox.LEASE / 2
# The longest the processor waits, per event, for this worker's intake to go quiet.
YIELD_TO_INTAKE_SECONDS = 0.05
_STRIPE_ID = re.compile(r"\b(cus|sub|pm|pi|seti|in|price|prod|evt|ch|card|src)_[A-Za-z0-9]+")


def scrub(text: str) -> str:
    """Remove Stripe identifiers from an error before it is stored or logged."""
    return _STRIPE_ID.sub(lambda m: f"{m.group(1)}_…", text)


@dataclass
class BatchResult:
    """What one pass did."""

    claimed: int = 0
    done: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0
    changed_users: set[int] = field(default_factory=set)


def claim_batch(*, limit: int = BATCH_SIZE) -> list[inbox.ClaimedEvent]:
    """Lease up to `limit` due events to this worker. Blocking; run in a thread."""
    with Session(db.get_engine(), expire_on_commit=False) as session:
        return inbox.claim(session, limit=limit)


# Failures that say nothing about the event itself: Stripe or the database unreachable or
# overloaded, a lock another worker held too long. Retried for days, not given up after a few
# tries (a Stripe incident of a minute would otherwise fail every event it touched).
TEMPORARY_ERRORS: tuple[type[BaseException], ...] = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,
    # A secret key revoked or rotated: every event fails until the operator sets the new one.
    stripe.AuthenticationError,
    locks.LockTimeout,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection free in time
)


def is_temporary(exc: BaseException) -> bool:
    """Whether `exc` is an outage worth waiting out rather than a fault of the event."""
    if isinstance(exc, TEMPORARY_ERRORS):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True  # the connection broke under the statement
    # Stripe answering 5xx through another error class (an overloaded API, say).
    status = getattr(exc, "http_status", None)
    return isinstance(exc, stripe.StripeError) and isinstance(status, int) and status >= 500


def process_one(event: inbox.ClaimedEvent, result: BatchResult) -> None:
    """Apply one claimed event in its own transaction and count it in `result`. Blocking."""
    engine = db.get_engine()
    with Session(engine, expire_on_commit=False) as session:
        try:
            # The handler's writes (the subscription's row, under its lock) and the finish
            # commit together, once.
            with sync.one_transaction(session) as transaction:
                outcome = handlers.dispatch(session, event)
                if not inbox.finish(session, event, outcome.status, outcome.note):
                    # Our lease ran out and another worker took over: it applies the event.
                    session.rollback()
                    return
                for user_id in outcome.changed_users:
                    changes.mark(session, user_id)  # their open pages re-read after commit
                transaction.commit()
        except Exception as exc:
            session.rollback()
            error = scrub(f"{type(exc).__name__}: {exc}")
            logger.warning("webhook %s (%s) failed: %s", event.type, event.row_id, error)
            with Session(engine) as failure_session:
                status = inbox.fail(failure_session, event, error, temporary=is_temporary(exc))
            if status.value == "failed":
                result.failed += 1
            else:
                result.retried += 1
            return
    if outcome.status.value == "skipped":
        result.skipped += 1
    else:
        result.done += 1
    result.changed_users |= outcome.changed_users


class _Lease:
    """The lease of one claimed batch, renewed while the batch is worked through."""

    def __init__(self, claimed: list[inbox.ClaimedEvent]) -> None:
        self.token = claimed[0].lease_token if claimed else None
        self.until = claimed[0].locked_until if claimed else None
        # Once the lease ran out before it was renewed: the row ids still ours (None: all).
        self.held: set[int] | None = None

    def due(self) -> bool:
        """Whether less than `RENEW_WHEN_LEFT` of the lease is left."""
        return self.until is not None and inbox.utcnow() >= self.until - RENEW_WHEN_LEFT

    def renew(self) -> None:
        """Extend the lease of the batch's unfinished events. Blocking.

        If it had run out already (one event took longer than the lease: lock waits, slow
        Stripe), another worker may have taken some over meanwhile: those are noted, so this
        worker does not apply them too (twice the Stripe calls, during a slowdown).
        """
        if self.token is None:
            return
        lapsed = self.until is not None and inbox.utcnow() >= self.until
        with Session(db.get_engine()) as session:
            self.until = inbox.renew(session, self.token)
            if lapsed:
                self.held = inbox.still_held(session, self.token)

    def holds(self, event: inbox.ClaimedEvent) -> bool:
        """Whether `event` is still this batch's to apply (see `renew`)."""
        return self.held is None or event.row_id in self.held

    def release(self) -> None:
        """Hand the batch's unfinished events back: due again at once, for any worker."""
        if self.token is None:
            return
        with Session(db.get_engine()) as session:
            inbox.release(session, self.token)


def process_batch(
    *,
    limit: int = BATCH_SIZE,
    stop: threading.Event | None = None,
    pause: Callable[[threading.Event | None], object] | None = None,
) -> BatchResult:
    """Claim due events and apply each in its own transaction. Blocking; run in a thread.

    Once `stop` is set, the events not started yet are handed back (a batch can take minutes
    with real Stripe, longer than a stopping worker waits for its processor). `pause`, if
    given, is called with `stop` before each event and may block a moment (to let intake go
    first; it should return once `stop` is set).
    """
    claimed = claim_batch(limit=limit)
    result = BatchResult(claimed=len(claimed))
    lease = _Lease(claimed)
    with sync.reads_shared_from_now():
        for event in claimed:
            if pause is not None:
                pause(stop)
            if stop is not None and stop.is_set():
                lease.release()
                break
            if lease.due():
                lease.renew()
            if lease.holds(event):  # else another worker took it over: it applies it
                process_one(event, result)
    return result


async def _process_pass(
    *,
    yield_to_intake: bool = True,
    stop: threading.Event | None = None,
    pause: Callable[[threading.Event | None], object] | None = None,
) -> BatchResult:
    if not yield_to_intake:
        # Nothing else runs on this event loop (the processor's own process): the whole
        # batch on one thread, which stops early when `stop` is set. Two thread hops per
        # event cost CPU, and waiting for the interpreter lock to change hands.
        return await asyncio.to_thread(process_batch, stop=stop, pause=pause)
    claimed = await asyncio.to_thread(claim_batch)
    result = BatchResult(claimed=len(claimed))
    lease = _Lease(claimed)
    # Entered here, after the claim; each thread below runs in a copy of this context.
    with sync.reads_shared_from_now():
        for event in claimed:
            await intake.quiet(YIELD_TO_INTAKE_SECONDS)
            if lease.due():
                await asyncio.to_thread(lease.renew)
            if lease.holds(event):  # else another worker took it over: it applies it
                await asyncio.to_thread(process_one, event, result)
    return result


async def run_processor(
    stop: asyncio.Event | None = None,
    *,
    yield_to_intake: bool = True,
    pause: Callable[[threading.Event | None], object] | None = None,
) -> None:
    """Process events until cancelled (or `stop` is set).

    `yield_to_intake`: this event loop also takes webhooks in (a backend worker, with
    WEBHOOK_PROCESSOR=inline), so the processor steps aside for intake before each event.
    The processor's own process passes False, and a `pause` that steps aside for its
    worker's intake (see `process_batch`).
    """
    wakeup = changes.processor_wakeup()
    # `stop`, as the thread a batch runs on can see it.
    halt = threading.Event()
    mirror = asyncio.create_task(_set_when(stop, halt)) if stop is not None else None
    try:
        while stop is None or not stop.is_set():
            # Cleared before the pass, not after: an event stored while the pass runs (after
            # its claim looked) sets it again, and the wait below returns at once instead of
            # sleeping through it.
            wakeup.clear()
            try:
                result = await _process_pass(
                    yield_to_intake=yield_to_intake, stop=halt, pause=pause
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be down: keep going, try again shortly
                logger.exception("webhook processor pass failed")
                result = BatchResult()
            if result.claimed >= BATCH_SIZE:
                continue  # there may be more waiting
            # Otherwise the claim took everything that was due. An event stored since then
            # has set the wake-up (cleared before the pass), so the wait returns at once; what
            # falls due by time (a retry, an abandoned lease) is found by the idle poll. No
            # empty claim after every event at a steady trickle.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), IDLE_POLL_SECONDS)
    finally:
        if mirror is not None:
            mirror.cancel()


async def _set_when(stop: asyncio.Event, halt: threading.Event) -> None:
    await stop.wait()
    halt.set()
