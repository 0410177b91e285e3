"""Work-arounds for bugs of the Reflex release we pin, each shown by a test of its own.

`install()` runs when the app module is imported, in every backend worker, before any event
is handled. Drop a fix once the Reflex we pin has its own (its test then passes without it).
"""

from __future__ import annotations

import asyncio
import logging

from reflex.istate.manager.redis import StateManagerRedis

logger = logging.getLogger(__name__)

# Deletes the lock only while it still holds our id: it may have expired and been taken by
# someone else since.
_DELETE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
# Give-backs under way (a task needs a strong reference until it is done).
_giving_back: set[asyncio.Task[None]] = set()


def install() -> None:
    """Apply every fix (once; calling it again changes nothing)."""
    _cancel_safe_redis_lock()


def _cancel_safe_redis_lock() -> None:
    """A Redis state lock taken for an event cancelled meanwhile is given back at once.

    With several workers, Reflex keeps each tab's state in Redis under a lock (`SET NX`
    with a 10 s expiry). When a tab reloads or disconnects, Reflex cancels the tab's
    unfinished page-load work (here the dashboard's watcher and invoice loader). If that
    cancellation lands while `_try_get_lock` is waiting for Redis's answer, Redis has set
    the lock but the cancelled task never learns it holds it, so nobody releases it: the
    reloaded page's first event waits for the lock to expire, and the page stays blank for
    up to 10 s. Seen in our production-stack test about once in ten reloads.

    Here the attempt runs shielded from the caller's cancellation. If the caller is
    cancelled and the attempt turns out to have taken the lock, the lock is deleted (only
    if still ours), which also tells every waiting worker it is free.
    """
    original = StateManagerRedis._try_get_lock
    if getattr(original, "cancel_safe", False):
        return

    async def try_get_lock(self: StateManagerRedis, lock_key: bytes, lock_id: bytes) -> bool | None:
        attempt = asyncio.ensure_future(original(self, lock_key, lock_id))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            giving_back = asyncio.ensure_future(_give_back(self, attempt, lock_key, lock_id))
            _giving_back.add(giving_back)
            giving_back.add_done_callback(_giving_back.discard)
            raise

    try_get_lock.cancel_safe = True  # type: ignore[attr-defined]  # marks the patch as applied
    setattr(StateManagerRedis, "_try_get_lock", try_get_lock)  # noqa: B010 - patching a method


async def _give_back(
    manager: StateManagerRedis,
    attempt: asyncio.Future[bool | None],
    lock_key: bytes,
    lock_id: bytes,
) -> None:
    try:
        taken = await attempt
    except Exception:  # Redis refused or failed: no lock was taken for us
        return
    if taken:
        # redis-py types eval for its sync and async clients at once; this one is async.
        await manager.redis.eval(_DELETE_IF_OURS, 1, lock_key, lock_id)  # type: ignore[misc]
        logger.info("gave back a state lock taken for a cancelled event (%s)", lock_key.decode())
