"""In-process change feed: tells open dashboards of a user that their billing rows changed.

The webhook processor publishes after it commits; a dashboard's background task waits here.
Other processes (a second backend worker) are covered by the dashboard's one-second
re-check of the database, so a change is seen within a second either way.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

_waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
_wakeup: asyncio.Event | None = None


def publish(user_id: int) -> None:
    """Wake every waiter of `user_id` (call from the event loop)."""
    for event in list(_waiters.get(user_id, ())):
        event.set()


async def wait_for_change(user_id: int, timeout: float) -> bool:
    """Wait until `publish(user_id)` or the timeout; True if woken by a change."""
    event = asyncio.Event()
    _waiters[user_id].add(event)
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False
    finally:
        _waiters[user_id].discard(event)
        if not _waiters[user_id]:
            _waiters.pop(user_id, None)


def processor_wakeup() -> asyncio.Event:
    """The event the webhook route sets so the processor starts at once (same process)."""
    global _wakeup
    if _wakeup is None:
        _wakeup = asyncio.Event()
    return _wakeup
