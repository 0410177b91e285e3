"""Change feed: tells open pages that a user's billing rows or login changed.

Writers `mark` the user on their database session; once that transaction commits (never
before, never after a rollback) the user is published. Open dashboards listen here
(`listen`) instead of re-reading the database on a timer, so an idle page costs no query at
all.

Publishing spans processes. With REDIS_URL set (production: several backend workers share
state through Redis) a change goes out on a Redis pub/sub channel, and each worker's
`run_listener` lifespan task relays it to that worker's waiting pages. Without Redis there is
one backend worker, and the change stays in the process. Publishing to Redis happens on a
thread of its own: a commit never waits on Redis (nor on its timeout when Redis is down).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache

import redis
import redis.asyncio as aioredis
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from subscription_app.settings import get_settings

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "subscription_app:changes:"
_SESSION_KEY = "changed_users"
# After losing Redis, wait this long before subscribing again (pages are told to re-read
# once the channel is back, since changes published meanwhile were missed).
RECONNECT_SECONDS = 1.0

_waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
_loop: asyncio.AbstractEventLoop | None = None
_wakeup: asyncio.Event | None = None
# Without Redis, where a process with no pages of its own sends its changes (the webhook
# processor's process hands them to the backend worker that started it).
_relay: Callable[[list[int]], None] | None = None


def mark(session: Session, user_id: int) -> None:
    """Publish `user_id` once `session`'s transaction commits (nothing if it rolls back)."""
    session.info.setdefault(_SESSION_KEY, set()).add(user_id)


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    users = session.info.pop(_SESSION_KEY, None)
    if users:
        publish(users)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_SESSION_KEY, None)


def channel() -> str:
    """This deployment's channel: named after its database, whose users the ids are.

    Pub/sub spans a whole Redis server (database numbers do not separate it), so two apps on
    one Redis server (staging beside production, parallel test runs) must not share a name.
    """
    url = make_url(get_settings().sqlalchemy_url)  # the password is left out
    name = f"{url.drivername}|{url.username}|{url.host}|{url.port}|{url.database}".encode()
    return CHANNEL_PREFIX + hashlib.sha256(name).hexdigest()[:16]


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    # One connection pool per process; a publish is one short round trip.
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def publish(user_ids: Iterable[int]) -> None:
    """Tell every page of these users, in every worker, that something changed.

    Safe from any thread, and returns at once: with Redis the ids are handed to this
    process's publisher thread. A change that cannot be sent through Redis still reaches this
    worker's pages; the others see it at their next change or reload (it is logged).
    """
    ids = sorted(set(user_ids))
    if not ids:
        return
    url = get_settings().redis_url
    if not url:
        if _relay is not None:
            _relay(ids)
        else:
            _wake_soon(ids)
        return
    _publisher().put((url, channel(), ids))


_queue: queue.Queue[tuple[str, str, list[int]]] | None = None
_queue_pid = 0
_queue_lock = threading.Lock()


def _publisher() -> queue.Queue[tuple[str, str, list[int]]]:
    """This process's publish queue, with its thread (started again in a forked worker)."""
    global _queue, _queue_pid
    with _queue_lock:
        if _queue is None or _queue_pid != os.getpid():
            _queue, _queue_pid = queue.Queue(), os.getpid()
            threading.Thread(
                target=_send_forever, args=(_queue,), name="changes-publisher", daemon=True
            ).start()
        return _queue


def _send_forever(pending: queue.Queue[tuple[str, str, list[int]]]) -> None:
    while True:
        url, name, ids = pending.get()
        try:
            _client(url).publish(name, format_ids(ids))
        except Exception:
            logger.warning("could not publish a change through Redis", exc_info=True)
            _wake_soon(ids)
        finally:
            pending.task_done()


def flush(timeout: float = 2.0) -> bool:
    """Wait until what this process published so far has gone to Redis; False on timeout.

    Run at exit, so a short-lived process (a command) does not take its changes with it.
    """
    pending = _queue
    if pending is None or _queue_pid != os.getpid():
        return True
    deadline = time.monotonic() + timeout
    with pending.all_tasks_done:
        while pending.unfinished_tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pending.all_tasks_done.wait(remaining)
    return True


atexit.register(flush)


def _wake_soon(ids: Iterable[int]) -> None:
    loop = _loop
    if loop is None or loop.is_closed():
        return  # no page has waited in this process yet
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _wake(ids)
    else:
        loop.call_soon_threadsafe(_wake, list(ids))


def _wake(ids: Iterable[int] | None) -> None:
    """Set the waiters of `ids` (of everyone when None). Runs on the event loop."""
    users = list(_waiters) if ids is None else ids
    for user_id in users:
        for waiter in list(_waiters.get(user_id, ())):
            waiter.set()


def relay_to(send: Callable[[list[int]], None] | None) -> None:
    """Without Redis, hand this process's changes to `send` instead of waking pages here.

    For a process that serves no pages (the webhook processor's): its parent worker wakes
    them. `send` is called from whichever thread committed; None restores the default.
    """
    global _relay
    _relay = send


def wake_here(user_ids: Iterable[int]) -> None:
    """Wake this process's listeners of `user_ids` now, without publishing anything.

    For a page that held back a wake-up while it acted itself (its own answer was on the
    way) and must have its listener look again afterwards.
    """
    _wake_soon(list(user_ids))


class Listener:
    """One page's subscription to a user's changes (see `listen`).

    It stays registered between waits: a change published while the page is busy reading
    the last one is kept, and the next `wait` returns at once.
    """

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self._changed = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """Wait until a change is published (or was, since the last wait); False on timeout."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        self._changed.clear()
        return True


@contextlib.contextmanager
def listen(user_id: int) -> Iterator[Listener]:
    """Listen for changes of `user_id` in this process for the duration of the block."""
    global _loop
    _loop = asyncio.get_running_loop()
    listener = Listener(user_id)
    _waiters[user_id].add(listener._changed)
    try:
        yield listener
    finally:
        _waiters[user_id].discard(listener._changed)
        if not _waiters[user_id]:
            _waiters.pop(user_id, None)


async def wait_for_change(user_id: int, timeout: float) -> bool:
    """Wait until a change of `user_id` is published, or the timeout; True if woken.

    A single wait: changes published before it starts are not seen (use `listen` to follow
    a user across several waits).
    """
    with listen(user_id) as listener:
        return await listener.wait(timeout)


def format_ids(user_ids: Iterable[int]) -> str:
    """User ids as they travel between processes (Redis, the processor's pipe): "3,17"."""
    return ",".join(map(str, user_ids))


def parse_ids(data: bytes | str) -> list[int]:
    """The user ids of `format_ids`' text; anything else in it is ignored."""
    text = data.decode() if isinstance(data, bytes) else data
    return [int(part) for part in text.split(",") if part.strip().isdigit()]


async def run_listener(stop: asyncio.Event | None = None) -> None:
    """Relay changes published by any worker to this worker's pages (a lifespan task)."""
    global _loop
    _loop = asyncio.get_running_loop()
    url = get_settings().redis_url
    if not url:
        return  # one worker: `publish` wakes pages directly
    while stop is None or not stop.is_set():
        client = aioredis.Redis.from_url(url)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(channel())
                # Anything published while we were not subscribed was missed: re-read.
                _wake(None)
                while stop is None or not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None and message.get("type") == "message":
                        _wake(parse_ids(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("change feed lost Redis; subscribing again", exc_info=True)
            await asyncio.sleep(RECONNECT_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()


def processor_wakeup() -> asyncio.Event:
    """The event the webhook route sets so the processor starts at once (same process)."""
    global _wakeup
    if _wakeup is None:
        _wakeup = asyncio.Event()
    return _wakeup
