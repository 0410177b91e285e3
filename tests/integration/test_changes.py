"""The change feed: a committed change reaches waiting pages, in this worker and in others.

Writers mark users on their session; the feed publishes after commit only. With Redis, a
change published by another process (another backend worker) reaches this one's waiters
through `run_listener`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest
import redis
from sqlmodel import Session

from subscription_app import accounts, changes, notifications
from subscription_app.billing import repository
from subscription_app.billing.reader import SubscriptionSnapshot

REDIS = os.environ.get("TEST_REDIS_URL")
NOT_WOKEN_SECONDS = 0.3  # how long a waiter is given to show it was NOT woken
WOKEN_WITHIN_SECONDS = 5.0  # bound on waits that must succeed (they end as soon as woken)


@pytest.fixture
def no_redis(settings_env):
    settings_env(REDIS_URL=None)


def _user(session: Session, email: str) -> int:
    user = accounts.register_user(session=session, email=email, password="s3cret-pass")
    session.commit()
    assert user.id is not None
    return user.id


async def _waiting(user_id: int, timeout: float) -> asyncio.Task[bool]:
    task = asyncio.create_task(changes.wait_for_change(user_id, timeout))
    await asyncio.sleep(0)  # let it register before anything is published
    return task


def test_a_commit_wakes_the_users_pages_and_a_rollback_does_not(no_redis, db_engine):
    asyncio.run(_commit_and_rollback(db_engine))


async def _commit_and_rollback(db_engine) -> None:
    with Session(db_engine) as session:
        user_id = _user(session, "feed@example.com")

        waiting = await _waiting(user_id, NOT_WOKEN_SECONDS)
        notifications.tell(session, user_id=user_id, kind="info", text="never committed")
        session.rollback()
        assert await waiting is False

        waiting = await _waiting(user_id, WOKEN_WITHIN_SECONDS)
        other = await _waiting(user_id + 1, NOT_WOKEN_SECONDS)
        notifications.tell(session, user_id=user_id, kind="info", text="committed")
        assert not waiting.done()  # flushed but not committed: nobody is told yet
        session.commit()
        assert await waiting is True
        assert await other is False  # another user's page stays asleep


def test_a_commit_in_a_worker_thread_wakes_the_page(no_redis, db_engine):
    asyncio.run(_commit_in_thread(db_engine))


async def _commit_in_thread(db_engine) -> None:
    with Session(db_engine) as session:
        user_id = _user(session, "thread@example.com")

    def write() -> None:
        with Session(db_engine) as session:
            notifications.tell(session, user_id=user_id, kind="info", text="from a thread")
            session.commit()

    waiting = await _waiting(user_id, WOKEN_WITHIN_SECONDS)
    await asyncio.to_thread(write)
    assert await waiting is True


def test_a_listener_keeps_a_change_made_while_it_was_busy(no_redis, db_engine):
    asyncio.run(_busy_listener(db_engine))


async def _busy_listener(db_engine) -> None:
    with Session(db_engine) as session:
        user_id = _user(session, "busy@example.com")

        with changes.listen(user_id) as listener:
            notifications.tell(session, user_id=user_id, kind="info", text="first")
            session.commit()
            assert await listener.wait(WOKEN_WITHIN_SECONDS) is True
            # The page is reading what the first change did when a second one commits: the
            # next wait returns at once, instead of sleeping through it.
            notifications.tell(session, user_id=user_id, kind="info", text="second")
            session.commit()
            await asyncio.sleep(0)  # the wake-up runs on the loop
            assert await listener.wait(NOT_WOKEN_SECONDS) is True
            assert await listener.wait(NOT_WOKEN_SECONDS) is False  # each change once


def test_subscription_writes_and_logouts_mark_the_user(no_redis, session):
    user_id = _user(session, "marks@example.com")
    snapshot = SubscriptionSnapshot(
        id="sub_marks",
        customer_id="cus_marks",
        status="active",
        price_id="price_x",
        started_at=None,
        current_period_end=None,
        cancel_at_period_end=False,
        canceled_at=None,
        ended_at=None,
        cancel_at=None,
        latest_invoice_id=None,
        payment=None,
    )
    assert repository.apply_snapshot(session, user_id=user_id, snapshot=snapshot, our_plan=True)
    assert session.info[changes._SESSION_KEY] == {user_id}
    session.commit()
    assert changes._SESSION_KEY not in session.info  # published and forgotten

    # Nothing changed: nothing to tell.
    assert not repository.apply_snapshot(session, user_id=user_id, snapshot=snapshot, our_plan=True)
    assert changes._SESSION_KEY not in session.info

    user = session.get(accounts.User, user_id)
    assert user is not None
    issued = accounts.issue_token(session=session, user=user)
    session.commit()
    assert accounts.revoke_session(session=session, session_id=issued.session_id)
    assert session.info[changes._SESSION_KEY] == {user_id}


@pytest.mark.skipif(not REDIS, reason="needs TEST_REDIS_URL (a Redis server)")
def test_a_change_published_by_another_process_reaches_this_one(settings_env):
    settings_env(REDIS_URL=REDIS)
    asyncio.run(_across_processes())


def _publish_from_another_process(user_id: int) -> None:
    other_worker = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from subscription_app import changes; changes.publish([{user_id}])",
        ],
        env={**os.environ, "REDIS_URL": str(REDIS)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other_worker.returncode == 0, other_worker.stderr


async def _across_processes() -> None:
    user_id = 987_654_321
    # Waiting before the listener subscribes: once subscribed it tells every waiter to
    # re-read (changes published while it was not listening were missed).
    waiting = await _waiting(user_id, WOKEN_WITHIN_SECONDS)
    stop = asyncio.Event()
    listener = asyncio.create_task(changes.run_listener(stop))
    try:
        assert await waiting is True
        waiting = await _waiting(user_id, WOKEN_WITHIN_SECONDS)
        other = await _waiting(user_id + 1, NOT_WOKEN_SECONDS)
        await asyncio.to_thread(_publish_from_another_process, user_id)
        assert await waiting is True
        assert await other is False
    finally:
        stop.set()
        await asyncio.wait_for(listener, WOKEN_WITHIN_SECONDS)


def test_each_database_has_its_own_channel_whatever_its_password(settings_env):
    settings_env(DATABASE_URL="postgresql://app:one@db.example/billing")
    production = changes.channel()
    settings_env(DATABASE_URL="postgresql://app:two@db.example/billing")
    assert changes.channel() == production  # same database, same users
    settings_env(DATABASE_URL="postgresql://app:one@db.example/staging")
    assert changes.channel() != production
    assert "one" not in production and "billing" not in production


class _StuckRedis:
    """A Redis client whose publish hangs until released, then fails (Redis unreachable)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked: list[str] = []

    def publish(self, channel: str, message: str) -> int:
        self.asked.append(message)
        assert self.release.wait(WOKEN_WITHIN_SECONDS), "never released"
        raise redis.ConnectionError("Redis is unreachable")


def test_a_commit_never_waits_on_redis_and_a_lost_publish_still_wakes_this_worker(
    settings_env, db_engine, monkeypatch
):
    settings_env(REDIS_URL="redis://127.0.0.1:1/0")
    stuck = _StuckRedis()
    monkeypatch.setattr(changes, "_client", lambda url: stuck)
    asyncio.run(_stuck_redis(db_engine, stuck))


async def _stuck_redis(db_engine, stuck: _StuckRedis) -> None:
    with Session(db_engine) as session:
        user_id = _user(session, "stuck@example.com")
        waiting = await _waiting(user_id, WOKEN_WITHIN_SECONDS)
        notifications.tell(session, user_id=user_id, kind="info", text="while Redis hangs")
        # Returns while the publish is still hanging: the commit does not wait on Redis.
        await asyncio.to_thread(session.commit)
        assert not stuck.release.is_set()
        stuck.release.set()
        # Redis refused it: this worker's pages are woken all the same.
        assert await waiting is True
        assert await asyncio.to_thread(changes.flush) is True
        assert stuck.asked == [str(user_id)]
