"""Our fixes of the pinned Reflex, against a real Redis (see `subscription_app/reflex_fixes.py`)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis.asyncio as aioredis
from reflex.istate.manager.redis import StateManagerRedis

from subscription_app import reflex_fixes

REDIS = os.environ.get("TEST_REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS, reason="needs TEST_REDIS_URL (a Redis server)")


def test_a_state_lock_taken_for_a_cancelled_event_is_given_back():
    """The reload stall: Redis sets the lock, the asking task is cancelled before it hears so.

    Without the fix nobody owns the lock and it stays until it expires (10 s), which is how
    long the reloaded page's first event then waits.
    """
    reflex_fixes.install()
    asyncio.run(_cancel_while_redis_answers())


async def _cancel_while_redis_answers() -> None:
    client = aioredis.Redis.from_url(str(REDIS))
    manager = StateManagerRedis(redis=client)
    lock_key, lock_id = f"test-{uuid.uuid4().hex}_lock".encode(), b"event-id"
    set_in_redis, answer_arrives = asyncio.Event(), asyncio.Event()
    send_set = client.set

    async def set_then_answer_late(*args, **kwargs):
        result = await send_set(*args, **kwargs)  # Redis has set the lock...
        set_in_redis.set()
        await answer_arrives.wait()  # ...and its answer is still on the way
        return result

    client.set = set_then_answer_late  # type: ignore[method-assign]
    try:
        asking = asyncio.create_task(manager._try_get_lock(lock_key, lock_id))
        await set_in_redis.wait()
        asking.cancel()  # as Reflex cancels a reloading tab's page-load work
        with pytest.raises(asyncio.CancelledError):
            await asking
        assert await client.get(lock_key) == lock_id  # taken, for a task that is gone
        answer_arrives.set()
        await asyncio.gather(*reflex_fixes._giving_back)
        # Given back as soon as the answer arrived (without the fix: after 10 s).
        assert await client.get(lock_key) is None
    finally:
        await client.delete(lock_key)
        await client.aclose()


def test_a_lock_that_is_someone_elses_by_then_is_left_alone():
    """The lock expired and was taken by another worker before the answer arrived: keep it."""
    reflex_fixes.install()
    asyncio.run(_taken_over_before_the_answer())


async def _taken_over_before_the_answer() -> None:
    client = aioredis.Redis.from_url(str(REDIS))
    manager = StateManagerRedis(redis=client)
    lock_key = f"test-{uuid.uuid4().hex}_lock".encode()
    set_in_redis, answer_arrives = asyncio.Event(), asyncio.Event()
    send_set = client.set

    async def set_then_answer_late(*args, **kwargs):
        result = await send_set(*args, **kwargs)
        set_in_redis.set()
        await answer_arrives.wait()
        return result

    client.set = set_then_answer_late  # type: ignore[method-assign]
    try:
        asking = asyncio.create_task(manager._try_get_lock(lock_key, b"ours"))
        await set_in_redis.wait()
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        await send_set(lock_key, b"another-worker")  # ours expired; another worker took it
        answer_arrives.set()
        await asyncio.gather(*reflex_fixes._giving_back)
        assert await client.get(lock_key) == b"another-worker"
    finally:
        await client.delete(lock_key)
        await client.aclose()
