"""The webhook processor: applies stored events in the background (a backend lifespan task).

Several processors (one per backend worker) can run at once: the inbox leases each event to
one of them. A failing handler is retried with backoff, then the event is marked failed with
its error and the processor moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field

from sqlmodel import Session

from subscription_app import changes, db
from subscription_app.billing import handlers, inbox

logger = logging.getLogger(__name__)
IDLE_POLL_SECONDS = 1.0
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


def process_batch(*, limit: int = 20) -> BatchResult:
    """Claim due events and apply each in its own transaction. Blocking; run in a thread."""
    engine = db.get_engine()
    result = BatchResult()
    with Session(engine, expire_on_commit=False) as session:
        claimed = inbox.claim(session, limit=limit)
    result.claimed = len(claimed)
    for event in claimed:
        with Session(engine, expire_on_commit=False) as session:
            try:
                outcome = handlers.dispatch(session, event)
                if not inbox.finish(session, event, outcome.status, outcome.note):
                    session.rollback()  # our lease ran out and another worker took over
                    continue
                for user_id in outcome.changed_users:
                    changes.mark(session, user_id)  # their open pages re-read after commit
                session.commit()
            except Exception as exc:
                session.rollback()
                error = scrub(f"{type(exc).__name__}: {exc}")
                logger.warning("webhook %s (%s) failed: %s", event.type, event.row_id, error)
                with Session(engine) as failure_session:
                    status = inbox.fail(failure_session, event, error)
                if status.value == "failed":
                    result.failed += 1
                else:
                    result.retried += 1
                continue
        if outcome.status.value == "skipped":
            result.skipped += 1
        else:
            result.done += 1
        result.changed_users |= outcome.changed_users
    return result


async def run_processor(stop: asyncio.Event | None = None) -> None:
    """Process events until cancelled (or `stop` is set). Registered as a lifespan task."""
    wakeup = changes.processor_wakeup()
    while stop is None or not stop.is_set():
        try:
            result = await asyncio.to_thread(process_batch)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database may be down: keep going, try again shortly
            logger.exception("webhook processor pass failed")
            result = BatchResult()
        if result.claimed:
            continue  # there may be more waiting
        wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), IDLE_POLL_SECONDS)
