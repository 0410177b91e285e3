"""Our fixes of the pinned Reflex, against a real Redis (see `subscription_app/reflex_fixes.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from reflex.istate.manager.redis import StateManagerRedis

from subscription_app import reflex_fixes

REDIS = os.environ.get("TEST_REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS, reason="needs TEST_REDIS_URL (a Redis server)")


@contextlib.asynccontextmanager
async def _redis_lock_key() -> AsyncIterator[tuple[aioredis.Redis, bytes]]:
    """A client of the test Redis and a lock key of our own, deleted afterwards."""
    client = aioredis.Redis.from_url(str(REDIS))
    lock_key = f"test-{uuid.uuid4().hex}_lock".encode()
    try:
        yield client, lock_key
    finally:
        await client.delete(lock_key)
        await client.aclose()


async def _cancelled_as_redis_answers(
    client: aioredis.Redis, lock_key: bytes, lock_id: bytes
) -> Callable[[], Awaitable[None]]:
    """Ask for the lock; cancel the asking task once Redis has set it, before the answer
    arrives (as Reflex cancels a reloading tab's page-load work). Returns what lets the
    answer arrive and waits for the fix to act on it."""
    set_in_redis, answer_arrives = asyncio.Event(), asyncio.Event()
    send_set = client.set

    async def set_then_answer_late(*args, **kwargs):
        result = await send_set(*args, **kwargs)  # Redis has set the lock...
        set_in_redis.set()
        await answer_arrives.wait()  # ...and its answer is still on the way
        return result

    client.set = set_then_answer_late  # type: ignore[method-assign]
    asking = asyncio.create_task(StateManagerRedis(redis=client)._try_get_lock(lock_key, lock_id))
    await set_in_redis.wait()
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    client.set = send_set  # type: ignore[method-assign]

    async def arrive() -> None:
        answer_arrives.set()
        await asyncio.gather(*reflex_fixes._giving_back)

    return arrive


def test_a_state_lock_taken_for_a_cancelled_event_is_given_back():
    """The reload stall. Without the fix nobody owns the lock and it stays until it expires
    (10 s), which is how long the reloaded page's first event then waits."""
    reflex_fixes.install()

    async def scenario() -> None:
        async with _redis_lock_key() as (client, lock_key):
            arrive = await _cancelled_as_redis_answers(client, lock_key, b"event-id")
            assert await client.get(lock_key) == b"event-id"  # taken, for a task that is gone
            await arrive()
            assert await client.get(lock_key) is None  # given back as the answer arrived

    asyncio.run(scenario())


def test_a_lock_that_is_someone_elses_by_then_is_left_alone():
    """Ours expired and another worker took the lock before the answer arrived: keep theirs."""
    reflex_fixes.install()

    async def scenario() -> None:
        async with _redis_lock_key() as (client, lock_key):
            arrive = await _cancelled_as_redis_answers(client, lock_key, b"ours")
            await client.set(lock_key, b"another-worker")
            await arrive()
            assert await client.get(lock_key) == b"another-worker"

    asyncio.run(scenario())
